"""The API benchmark's CPU accounting (bench/api_server.py): a thread that has ended still
counts in the process's CPU, as the scan kernel's threads (started and joined in every call) do,
though it is gone from the live threads that the event loop's share is read from."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.api_server import process_cpu, thread_cpu

BURN_S = 0.2


def _burn(release: threading.Event) -> None:
    started = time.thread_time()
    while time.thread_time() - started < BURN_S:
        pass
    release.wait()


def _wait_until_gone(pid: int, tid: int, timeout_s: float = 30.0) -> None:
    """The OS thread can outlive ``join`` by a moment: wait until /proc no longer lists it."""
    deadline = time.monotonic() + timeout_s
    while (Path(f"/proc/{pid}/task") / str(tid)).exists():
        assert time.monotonic() < deadline, f"thread {tid} still listed after {timeout_s:.0f} s"
        time.sleep(0.01)


def test_an_ended_threads_cpu_counts_in_the_process_not_in_the_live_threads() -> None:
    pid = os.getpid()
    total_before = process_cpu(pid)
    release = threading.Event()
    worker = threading.Thread(target=_burn, args=(release,))
    worker.start()
    tid = worker.native_id
    assert tid is not None and tid in thread_cpu(pid)  # listed while it runs (it waits for us)
    release.set()
    worker.join()
    _wait_until_gone(pid, tid)
    assert tid not in thread_cpu(pid)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert process_cpu(pid) - total_before >= BURN_S - 2 * tick  # its CPU stays in the process's
