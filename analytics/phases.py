"""Phases of a run: wall time and peak resident memory of each, and an optional progress bar."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import Progress, TaskID

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


class Phases:
    """``with phases.run("knn"):`` records ``knn_s`` and ``knn_peak_mb`` (RSS sampled every 20 ms)."""

    def __init__(self, progress: bool = False) -> None:
        self.timings: dict[str, float] = {}
        self.bar = Progress(disable=not progress, transient=True)

    def __enter__(self) -> Phases:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    @contextmanager
    def run(self, name: str, total: int | None = None) -> Iterator[PhaseTask]:
        peak = [rss_mb()]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, name=f"rss-{name}", daemon=True)
        sampler.start()
        task = PhaseTask(self.bar, self.bar.add_task(name, total=total))
        start = time.perf_counter()
        try:
            yield task
        finally:
            stop.set()
            sampler.join()
            self.timings[f"{name}_s"] = time.perf_counter() - start
            self.timings[f"{name}_peak_mb"] = max(peak[0], rss_mb())
            self.bar.remove_task(task.task_id)


class PhaseTask:
    def __init__(self, bar: Progress, task_id: TaskID) -> None:
        self.bar = bar
        self.task_id = task_id

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task_id, n)
