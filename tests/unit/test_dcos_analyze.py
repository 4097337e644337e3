"""The nightly analytics job (Metronome): a real subcommand with options that exist, settings that
exist, a schedule Metronome accepts, and never two runs at once."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.main import get_command

from config.settings import check_environment
from lookalike.cli import app

JOB = Path(__file__).resolve().parents[2] / "dcos" / "analyze-nightly.json"
CRON = re.compile(r"^(\S+\s+){4}\S+$")


def test_the_job_runs_lookalike_analyze_on_spark() -> None:
    doc = json.loads(JOB.read_text())
    run = doc["run"]
    check_environment(run["env"])  # raises on unknown LOOKALIKE_* keys
    args = shlex.split(run["cmd"])
    assert args[:2] == ["lookalike", "analyze"]
    group = get_command(app)
    ctx = group.make_context("lookalike", args[1:], resilient_parsing=True)
    sub = group.get_command(ctx, "analyze")  # type: ignore[attr-defined]
    assert sub is not None, "no `lookalike analyze` subcommand"
    parsed = sub.make_context("analyze", args[2:])  # unknown options raise here
    assert parsed.params["engine"] == "spark"
    assert run["env"]["LOOKALIKE_PRODUCTION"] == "true" and run["env"]["LOOKALIKE_STORE"].startswith(
        "cassandra://"
    )
    assert run["restart"]["policy"] in ("NEVER", "ON_FAILURE")
    assert run["cpus"] > 0 and run["mem"] >= 1024 and run["docker"]["image"]


def test_the_schedule_is_nightly_and_never_overlaps() -> None:
    doc = json.loads(JOB.read_text())
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", doc["id"])  # Metronome job ids
    (schedule,) = doc["schedules"]
    assert CRON.match(schedule["cron"]) and schedule["enabled"] is True
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")  # once a day
    assert schedule["concurrencyPolicy"] == "FORBID"  # a slow run is not joined by the next
    assert schedule["timezone"]
