"""The DC/OS definitions run commands that exist, with settings that exist."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

from config.settings import check_environment
from lookalike.cli import app
from tests.deployment.pending import ISSUE_15_COMMANDS, ISSUE_15_VARIABLES

DCOS = Path(__file__).resolve().parents[2] / "dcos"


def _runs() -> list[tuple[str, str, dict[str, object]]]:
    out = []
    for path in sorted(DCOS.glob("*.json")):
        doc = json.loads(path.read_text())
        for app_def in doc.get("apps", []):
            out.append((app_def["id"], app_def["cmd"], app_def.get("env", {})))
        if "run" in doc:
            out.append((doc["id"], doc["run"]["cmd"], doc["run"].get("env", {})))
    return out


def test_there_are_definitions() -> None:
    assert {cmd.split()[1] for _, cmd, _ in _runs()} >= {
        "extract", "sync-stock", "serve", "schema", "spark-serve", "analyze",
    }  # fmt: skip


@pytest.mark.parametrize(("name", "cmd", "env"), _runs())
def test_commands_and_settings_exist(name: str, cmd: str, env: dict[str, object]) -> None:
    check_environment(
        {k: str(v) for k, v in env.items() if k not in ISSUE_15_VARIABLES}
    )  # raises on unknown keys
    args = shlex.split(cmd)
    assert args[0] == "lookalike"
    if args[1] in ISSUE_15_COMMANDS:
        return
    group = get_command(app)
    ctx = group.make_context("lookalike", args[1:], resilient_parsing=True)
    sub = group.get_command(ctx, args[1])  # type: ignore[attr-defined]
    assert sub is not None, f"{name}: no subcommand {args[1]!r}"
