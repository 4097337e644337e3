"""A background thread that samples what is not counted inline (images/s, GPU memory and
utilisation) and shows a status line: live on a terminal, a log line every interval otherwise."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading

import torch
from rich.console import Console
from rich.live import Live
from rich.text import Text

from extract.metrics import STAGES, ExtractMetrics

log = logging.getLogger(__name__)


def gpu_utilization(device: torch.device) -> float | None:
    """Percent busy: through NVML (``pip install nvidia-ml-py``), else ``nvidia-smi``, else None."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return float(torch.cuda.utilization(index))
    except (ModuleNotFoundError, RuntimeError):
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={index}"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def sample_gpu(metrics: ExtractMetrics, device: torch.device) -> None:
    if device.type != "cuda":
        return
    metrics.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated(device))
    metrics.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved(device))
    busy = gpu_utilization(device)
    if busy is not None:
        metrics.gpu_utilization.set(busy)


def status_text(metrics: ExtractMetrics, rate: float) -> str:
    t = metrics.totals
    per_image = " ".join(f"{s} {1000 * t.seconds[s] / max(t.images, 1):.1f}" for s in STAGES)
    lag = "?" if t.lag is None else str(t.lag)
    broker = "" if t.broker == "ok" else f" | waiting for the broker: {t.broker}"
    return (
        f"extract[{os.getpid()}]: {t.images} stored, {rate:.1f} images/s, lag {lag}, "
        f"{t.dead_letters} dead letters | ms per image: {per_image}{broker}"
    )


class Monitor:
    """``with Monitor(...)``: samples and reports until the block ends."""

    def __init__(
        self,
        metrics: ExtractMetrics,
        device: torch.device,
        console: Console | None,
        interval_s: float,
    ) -> None:
        self.metrics, self.device, self.interval_s = metrics, device, interval_s
        self._live = Live(Text(""), console=console, transient=False) if console else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _run(self) -> None:
        every = 1.0 if self._live else self.interval_s
        while not self._stop.wait(every):
            self.tick()

    def tick(self) -> str:
        sample_gpu(self.metrics, self.device)
        line = status_text(self.metrics, self.metrics.rate())
        if self._live:
            self._live.update(Text(line))
        else:
            log.info("%s", line)
        return line

    def __enter__(self) -> Monitor:
        if self._live:
            self._live.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._live:
            self._live.stop()
