"""The server side of the API benchmark: ``lookalike serve`` in its own process (so the clients
never share its interpreter), and what it spent on each level, read from outside it: CPU per
thread from ``/proc`` (the event loop is the main thread; the search runs on worker threads)
and the histograms of its ``/metrics`` (in-app request time, and the search batch size when the
service reports one)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from messaging.broker import free_port

READY_TIMEOUT_S = 1800.0  # a 1 M-row approximate or compact index trains while it loads
BATCH_METRIC = re.compile(r"^(lookalike_search\w*batch\w*size)_(sum|count)(?:\{[^}]*\})? (\S+)$", re.M)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    ready_s: float

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=30).text

    def snapshot(self) -> Snapshot:
        pid = self.process.pid
        return Snapshot(time.perf_counter(), thread_cpu(pid), process_cpu(pid), self.metrics())


SERVE = ("lookalike.cli", "serve")


@contextmanager
def serving(
    env: dict[str, str], log: Path, command: tuple[str, ...] = SERVE, pythonpath: Path | None = None
) -> Iterator[Server]:
    """``lookalike serve`` (or another module's ``command``) with ``env`` over the inherited
    environment, ready; stopped after. ``pythonpath``: the code it runs is that tree's."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **env, "LOOKALIKE_API_PORT": str(port), "LOOKALIKE_API_HOST": "127.0.0.1"}
    if pythonpath is not None:
        full["PYTHONPATH"] = str(pythonpath.resolve())
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=pythonpath,  # `python -m` puts the working directory first on the path
        )
    try:
        _wait_ready(process, port, log)
        yield Server(process, port, time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"`lookalike serve` exited with {process.returncode}; its log ends:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"`lookalike serve` was not ready in {READY_TIMEOUT_S:.0f} s (log: {log})")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # ticks a second, the unit of /proc's CPU times


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of ``pid``, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = _stat_cpu(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds of the whole process, threads that have ended included (the scan kernel
    starts and joins its threads in every call, so summing the live threads misses them)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def _stat_cpu(stat_file: Path) -> float:
    stat = stat_file.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpu: dict[int, float]  # by live thread
    total_cpu: float  # the process's, ended threads included
    metrics: str


def batch_size(metrics: str) -> tuple[float, float] | None:
    """(sum, count) of the service's search batch-size histogram, None when it has none."""
    found = BATCH_METRIC.findall(metrics)
    if not found:
        return None
    total = {"sum": 0.0, "count": 0.0}
    for _, part, value in found:
        total[part] += float(value)
    return total["sum"], total["count"]


def handler_seconds(metrics: str, handler: str) -> tuple[float, float]:
    """(sum, count) of the in-app request time of one endpoint (the API's middleware)."""
    total = {"sum": 0.0, "count": 0.0}
    pattern = rf'^lookalike_http_request_seconds_(sum|count)\{{[^}}]*handler="{handler}"[^}}]*\}} (\S+)$'
    for part, value in re.findall(pattern, metrics, re.M):
        total[part] += float(value)
    return total["sum"], total["count"]


def server_figures(
    pid: int, before: Snapshot, after: Snapshot, handler: str, requests: int
) -> dict[str, Any]:
    """What the server spent on one level: event-loop CPU (its main thread) and the other
    threads' CPU, per request and as a share of the wall time; the in-app time per request
    (routing, validation, search, the query_results write, serialisation: the middleware's
    clock); and the mean search batch size (None without the service's histogram)."""
    wall = after.at - before.at
    loop = after.cpu.get(pid, 0.0) - before.cpu.get(pid, 0.0)
    others = max(0.0, after.total_cpu - before.total_cpu - loop)
    s1, c1 = handler_seconds(after.metrics, handler)
    s0, c0 = handler_seconds(before.metrics, handler)
    batches = batch_size(after.metrics), batch_size(before.metrics)
    mean_batch = None
    if batches[0] is not None:
        old = batches[1] or (0.0, 0.0)
        count = batches[0][1] - old[1]
        mean_batch = round((batches[0][0] - old[0]) / count, 2) if count else None
    n = max(1, requests)
    return {
        "mean_batch_size": mean_batch,
        "in_app_ms_per_request": round((s1 - s0) / (c1 - c0) * 1000, 2) if c1 > c0 else None,
        "event_loop_cpu_ms_per_request": round(loop / n * 1000, 3),
        "event_loop_busy": round(loop / wall, 3) if wall else None,
        "other_threads_cpu_ms_per_request": round(others / n * 1000, 3),
        "server_cpu_cores": round((loop + others) / wall, 2) if wall else None,
    }
