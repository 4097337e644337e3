"""The API benchmark's CPU accounting (bench/api_server.py): a thread that has ended still
counts in the process's CPU, as the scan kernel's threads (started and joined in every call) do."""

from __future__ import annotations

import os
import threading
import time

from bench.api_server import process_cpu, thread_cpu

BURN_S = 0.2


def _burn() -> None:
    started = time.thread_time()
    while time.thread_time() - started < BURN_S:
        pass


def test_an_ended_threads_cpu_counts_in_the_process_not_in_the_live_threads() -> None:
    pid = os.getpid()
    live_before, total_before = thread_cpu(pid), process_cpu(pid)
    worker = threading.Thread(target=_burn)
    worker.start()
    worker.join()
    live_after, total_after = thread_cpu(pid), process_cpu(pid)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert total_after - total_before >= BURN_S - 2 * tick
    # the ended thread is gone from the live threads: what they gained is the main thread's share
    live_gain = sum(cpu - live_before.get(tid, 0.0) for tid, cpu in live_after.items())
    assert live_gain < total_after - total_before - BURN_S / 2
