"""The worker's metrics on a Prometheus port, its status line, and the command's helpers."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
import torch

from config.settings import ExtractSettings, ModelSettings, check_environment
from extract.metrics import ExtractMetrics
from extract.monitor import Monitor, status_text
from lookalike.worker import worker_command
from messaging.broker import free_port


def test_metrics_are_served_in_prometheus_format() -> None:
    m = ExtractMetrics()
    m.stage("infer", 0.2)
    m.stage("decode", 0.01)
    m.stored(16)
    m.dead_lettered("decode")
    m.consumer_lag(42)
    port = free_port()
    m.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in (
        "lookalike_extract_images_total 16.0",
        'lookalike_extract_dead_letters_total{stage="decode"} 1.0',
        "lookalike_extract_consumer_lag 42.0",
        'lookalike_extract_stage_seconds_count{stage="infer"} 1.0',
        "lookalike_extract_batches_total 1.0",
    ):
        assert line in body, line
    assert "lookalike_extract_images_per_second" in body
    assert "lookalike_extract_gpu_memory_bytes" in body  # declared; set only on a GPU


def test_a_taken_metrics_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuntimeError, match="LOOKALIKE_EXTRACT_METRICS_PORT"):
            ExtractMetrics().serve(s.getsockname()[1])


def test_status_line_reports_rate_lag_and_stage_times(caplog: pytest.LogCaptureFixture) -> None:
    m = ExtractMetrics()
    m.stored(10)
    m.stage("infer", 1.0)
    m.consumer_lag(5)
    line = status_text(m, 12.5)
    assert "10 stored" in line and "12.5 images/s" in line and "lag 5" in line and "infer 100.0" in line
    with caplog.at_level(logging.INFO, logger="extract.monitor"):
        Monitor(m, torch.device("cpu"), console=None, interval_s=60).tick()
    assert "10 stored" in caplog.text


def test_standalone_workers_use_random_weights_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_MODEL_ALLOW_RANDOM", raising=False)
    # never by default (the embedded model has real weights), nor in a standalone worker
    assert not ModelSettings().allow_random
    monkeypatch.setenv("LOOKALIKE_MODEL_ALLOW_RANDOM", "1")
    assert ModelSettings().allow_random


def test_worker_processes_get_consecutive_metrics_ports() -> None:
    cmd = worker_command(2, drain=True, metrics_port=9400)
    assert cmd[1:4] == ["-m", "lookalike.cli", "extract"]
    assert cmd[cmd.index("--metrics-port") + 1] == "9402" and "--drain" in cmd and "--no-live" in cmd
    off = worker_command(2, drain=False, metrics_port=0)
    assert off[off.index("--metrics-port") + 1] == "0" and "--drain" not in off


def test_extract_settings_are_known_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_EXTRACT_DECODE_WORKERS", "3")
    monkeypatch.setenv("LOOKALIKE_EXTRACT_PREFETCH_BATCHES", "4")
    check_environment()
    s = ExtractSettings()
    assert (s.decode_workers, s.prefetch_batches, s.gpu_decode, s.amp) == (3, 4, True, True)
