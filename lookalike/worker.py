"""``lookalike extract``: one worker process (signals, metrics port, status line), or a
supervisor of N worker processes on this machine, all in one consumer group."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from rich.console import Console

from config.settings import Settings
from extract.metrics import ExtractMetrics, Totals
from extract.model import FeatureModel
from extract.monitor import Monitor
from lookalike import stack

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    *,
    drain: bool,
    metrics_port: int,
    console: Console | None,
    model: FeatureModel | None = None,
) -> Totals:
    """One worker until SIGTERM / Ctrl-C (or drained). ``console``: a live status line there;
    None: a log line every LOOKALIKE_EXTRACT_STATUS_INTERVAL_S. ``model``: the one from
    settings unless given (tests run a small one)."""
    ex = settings.extract
    settings.kafka.client_config()  # no broker configured: fail before loading the model
    store = stack.configured_store(settings)
    model = model or stack.configured_model(settings)
    metrics = ExtractMetrics()
    if metrics_port:
        metrics.serve(metrics_port, ex.metrics_host)
        log.info("metrics on http://%s:%d/metrics", ex.metrics_host, metrics_port)
    stop = threading.Event()
    with stop_on_signals(stop), Monitor(metrics, model.device, console, ex.status_interval_s):
        stack.run_extract(store, model, settings, drain=drain, stop=stop, metrics=metrics)
    return metrics.totals


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM or a first Ctrl-C: finish the batches in flight, commit, exit. A second Ctrl-C
    interrupts at once (nothing uncommitted is lost: it is redelivered)."""

    def graceful(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        log.info("stopping: finishing the batches in flight (Ctrl-C again to abort)")
        stop.set()

    previous = {s: signal.signal(s, graceful) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def worker_command(index: int, *, drain: bool, metrics_port: int) -> list[str]:
    port = metrics_port + index if metrics_port else 0
    cmd = [sys.executable, "-m", "lookalike.cli", "extract", "--metrics-port", str(port), "--no-live"]
    return [*cmd, "--drain"] if drain else cmd


def device_env(index: int, device: str) -> dict[str, str]:
    """With device ``auto`` and several GPUs, worker i gets GPU i mod count."""
    import torch

    if device != "auto" or torch.cuda.device_count() < 2:
        return {}
    return {"LOOKALIKE_MODEL_DEVICE": f"cuda:{index % torch.cuda.device_count()}"}


def supervise(workers: int, device: str, *, drain: bool, metrics_port: int) -> int:
    """Start ``workers`` worker processes; SIGTERM / Ctrl-C is passed on to them. Returns the
    first non-zero exit status, or 0."""
    procs = [
        subprocess.Popen(
            worker_command(i, drain=drain, metrics_port=metrics_port),
            env={**os.environ, **device_env(i, device)},
        )
        for i in range(workers)
    ]
    log.info("started %d extract workers: pids %s", workers, [p.pid for p in procs])

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for p, code in zip(procs, codes, strict=True):
        if code:
            log.error("extract worker %d exited with status %d", p.pid, code)
    return next((c for c in codes if c), 0)
