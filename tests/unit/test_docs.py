"""The documentation site: it builds in strict mode (a broken link, anchor or quoted figure
fails), its references hold what the code says, and a quoted figure is the one measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import api_page  # noqa: E402  (docs/gen is not a package: mkdocs loads its hooks by path)
import figures  # noqa: E402

from config.settings import known_variables  # noqa: E402
from lookalike.cli import app  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**env, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page(site: Path, uri: str) -> str:
    return (site / uri / "index.html").read_text()


def command_names() -> list[str]:
    def walk(command: object, prefix: str) -> list[str]:
        subs = getattr(command, "commands", {})
        return [prefix] + [n for name, sub in subs.items() for n in walk(sub, f"{prefix} {name}")]

    return walk(typer.main.get_command(app), "lookalike")


def test_cli_reference_has_every_command(site: Path) -> None:
    html = page(site, "reference/cli")
    missing = [name for name in command_names() if f"<code>{name}</code>" not in html]
    assert not missing, f"commands missing from the CLI reference: {missing}"


def test_settings_reference_has_every_variable(site: Path) -> None:
    html = page(site, "reference/settings")
    missing = sorted(v for v in known_variables() if f"<code>{v}</code>" not in html)
    assert not missing, f"variables missing from the settings reference: {missing}"


def test_api_reference_is_the_apps_openapi(site: Path) -> None:
    served = json.loads((site / "reference" / "openapi.json").read_text())
    assert served == json.loads(json.dumps(api_page.openapi()))
    assert served["paths"], "the app's OpenAPI document has no paths"
    html = page(site, "reference/api")
    missing = [path for path in served["paths"] if path not in html]
    assert not missing, f"paths missing from the HTTP API reference: {missing}"


def test_benchmark_figures_are_the_measured_ones(site: Path) -> None:
    measured = json.loads((ROOT / "bench/results/search-cpu-intel-xeon-2-cores-100k.json").read_text())
    html = page(site, "benchmarks")
    assert f"{measured['exact']['read_bound']['threads_1']['engine_ratio_to_read_bound']} / " in html
    assert "{{" not in html, "a quoted figure was left unexpanded"
    published = site / "bench/results/search-cpu-intel-xeon-2-cores-100k.json"
    assert json.loads(published.read_text()) == measured


def test_quoted_figures_expand_and_format() -> None:
    aliases = {"s": "search-cpu-intel-xeon-2-cores-100k", "q": "quality-cpu"}
    text = (
        "{{ s.rows }} rows, {{ s.load.store_load.peak_rss_bytes | /1e9 .2f }} GB, "
        "{{ q.runs[model=efficientnet_lite0].dim }}-d, {{ s.exact.read_bound.threads_1[max] | .1f }}, "
        "{{ q.runs.0.model }}, {{ s }}"
    )
    measured = figures.result("search-cpu-intel-xeon-2-cores-100k")
    assert figures.expand(text, aliases, "sub/page.md") == (
        f"{measured['rows']:,}".replace(",", " ")
        + " rows, "
        + f"{measured['load']['store_load']['peak_rss_bytes'] / 1e9:.2f} GB, 1280-d, "
        + f"{max(measured['exact']['read_bound']['threads_1'].values()):.1f}, vgg16_fc7:random, "
        + "[`search-cpu-intel-xeon-2-cores-100k.json`]"
        + "(../bench/results/search-cpu-intel-xeon-2-cores-100k.json)"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{{ s.no_such_key }}", "no key 'no_such_key'"),
        ("{{ x.rows }}", "alias 'x'"),
        ("{{ gone.rows }}", "no result file"),
        ("{{ s.exact }}", "whole dict"),
        ("{{ s.runs[model=nothing] }}", "no key 'runs'"),
        ("{{ s.rows | .2q }}", "format"),
    ],
)
def test_a_figure_that_is_not_measured_fails(text: str, says: str) -> None:
    aliases = {"s": "search-cpu-intel-xeon-2-cores-100k", "gone": "no-such-result"}
    with pytest.raises(figures.FigureError, match=says):
        figures.expand(text, aliases, "page.md")
