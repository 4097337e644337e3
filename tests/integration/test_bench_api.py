"""The API benchmark's own code path at a tiny scale: a synthetic catalogue written into a
SQLite store, `lookalike serve` in its own process over it, the raw HTTP clients, and the JSON
it reports (no timing is asserted: only the shape, and that its ratios come from its values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import api, api_data, api_server
from bench.api_targets import TARGETS, Target, check_targets

LEVELS = ("clients_1", "clients_2")
FIGURES = {
    "clients",
    "requests",
    "errors",
    "seconds",
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "client_cpu_ms_per_request",
    "reconnects",
    "machine_load_1m",
    "server",
    "mean_batch_size",
    "ratio_vs_1_client",
}


def test_the_benchmark_reports_every_kind_and_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--rows", "2000", "--clients", "1,2", "--requests", "6", "--upload-requests", "2"]
    argv += ["--data-dir", str(tmp_path / "bench"), "--no-ceiling", "--save", str(tmp_path / "out.json")]
    report = api.main(argv)

    assert json.loads(capsys.readouterr().out) == report
    assert json.loads((tmp_path / "out.json").read_text()) == report
    [run] = report["runs"]
    assert (run["name"], run["rows"], run["dim"], run["mode"]) == ("2000x1280-exact", 2000, 1280, "exact")
    assert run["model"] == "efficientnet_lite0"  # a real 1280-d model, so uploads are answered
    assert set(run["kinds"]) == {"image_id", "vector", "upload"}
    for kind, levels in run["kinds"].items():
        assert set(levels) == set(LEVELS), kind
        for name, level in levels.items():
            assert set(level) == FIGURES, (kind, name)
            assert level["errors"] == 0, (kind, name)
            assert level["requests"] >= 2 * level["clients"]
            assert level["p50_ms"] <= level["p99_ms"]
            assert level["server"]["in_app_ms_per_request"] > 0
        one, two = levels["clients_1"]["requests_per_s"], levels["clients_2"]["requests_per_s"]
        assert levels["clients_1"]["ratio_vs_1_client"] == 1.0
        assert levels["clients_2"]["ratio_vs_1_client"] == round(two / one, 2)
    assert [t["target"] for t in report["targets"]] == [t.describe() for t in TARGETS]
    assert all(t["value"] is None and t["met"] is None for t in report["targets"])  # not this catalogue


def test_a_second_run_reuses_the_catalogue(tmp_path: Path) -> None:
    first = api_data.synthetic(300, 1280, tmp_path)
    db = Path(first.url.removeprefix("sqlite:///"))
    written = db.stat().st_mtime_ns
    again = api_data.synthetic(300, 1280, tmp_path)
    assert (first.write_s > 0, again.write_s) == (True, 0.0)
    assert db.stat().st_mtime_ns == written


def test_targets_are_met_or_not_from_the_measured_figure() -> None:
    runs = [{"catalogue": "c", "mode": "exact", "kinds": {"image_id": {"clients_8": {"p99_ms": 50.0}}}}]
    targets = (
        Target("c", "exact", "image_id", 8, "p99_ms", 40.0, False),
        Target("c", "exact", "image_id", 8, "p99_ms", 40.0, True),
        Target("c", "exact", "image_id", 32, "p99_ms", 40.0, False),
    )
    assert [(t["value"], t["met"]) for t in check_targets(runs, targets)] == [
        (50.0, False),
        (50.0, True),
        (None, None),
    ]


def test_the_batch_size_and_request_time_are_read_from_the_metrics() -> None:
    text = (
        'lookalike_http_request_seconds_sum{handler="search",method="POST"} 2.5\n'
        'lookalike_http_request_seconds_count{handler="search",method="POST"} 10.0\n'
        'lookalike_http_request_seconds_count{handler="readyz",method="GET"} 99.0\n'
        "lookalike_search_batch_size_sum 30.0\n"
        "lookalike_search_batch_size_count 10.0\n"
    )
    assert api_server.handler_seconds(text, "search") == (2.5, 10.0)
    assert api_server.batch_size(text) == (30.0, 10.0)
    assert api_server.batch_size("lookalike_http_requests_total 3.0\n") is None
