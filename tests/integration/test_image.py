"""The image without a Docker engine: the wheel built from exactly the files the Dockerfile's build
stage copies (``.dockerignore`` applied) is the wheel of the whole tree, and installed into a clean
virtual environment it runs every entry point the deployments start.

Everything comes from uv's cache (``--offline``): ``make`` filled it with these exact pins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deployment.dockerfile import ROOT, Stage, copy_context, stages

pytestmark = pytest.mark.integration
UV = Path(sys.executable).with_name("uv")
ENTRYPOINT = "deploy/image/entrypoint.sh"


def _wheel_stage() -> Stage:
    """The stage that builds the project: the first that copies pyproject.toml."""
    for s in stages():
        if any("pyproject.toml" in sources for sources, _ in s.copies()):
            return s
    raise AssertionError("no stage of the Dockerfile copies pyproject.toml")


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def _build_wheel(source: Path, out: Path) -> Path:
    _run([UV, "build", "--offline", "--wheel", "--out-dir", out, source], cwd=source)
    (wheel,) = out.glob("lookalike-*.whl")
    return wheel


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


@pytest.fixture(scope="module")
def copied_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    sources = [src for sources, _ in _wheel_stage().copies() for src in sources]
    copy_context(sources, context)
    return _build_wheel(context, tmp_path_factory.mktemp("wheel"))


def test_the_copied_files_make_the_whole_wheel(
    copied_wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tree = tmp_path_factory.mktemp("tree")  # the work tree as git sees it (tracked or not ignored)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tree / rel)
    whole = _names(_build_wheel(tree, tmp_path_factory.mktemp("whole")))
    got = _names(copied_wheel)
    assert not whole - got, f"the image's wheel lacks {sorted(whole - got)[:20]}"
    assert any(n.startswith("search/_scan") and n.endswith(".so") for n in got), "no compiled scan kernel"


def test_the_wheel_runs_every_entry_point_in_a_clean_environment(copied_wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([UV, "venv", "--offline", "--python", sys.executable, venv], cwd=tmp_path)
    _run([UV, "pip", "install", "--offline", "--python", venv / "bin" / "python", copied_wheel], cwd=tmp_path)
    away = tmp_path / "elsewhere"  # not the checkout: nothing importable by accident
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    assert "find listings" in _run([venv / "bin" / "lookalike", "--help"], away, env).lower()
    assert "--vectors" in _run([venv / "bin" / "python", "-m", "lookalike.spark_search", "--help"], away, env)
    probe = (
        "import api.app, search.kernel, lookalike;"
        "assert callable(api.app.create_app);"
        "search.kernel.best_isa();"  # the compiled kernel loads
        "print(lookalike.__file__)"
    )
    where = _run([venv / "bin" / "python", "-c", probe], away, env)
    assert str(venv) in where, f"imported from {where!r}, not the clean environment"
    entry = ROOT / ENTRYPOINT
    assert entry.is_file(), f"{ENTRYPOINT} (the image's entry point) is missing"
    assert "find listings" in _run(["bash", entry, "lookalike", "--help"], away, env).lower()


def test_the_entry_point_starts_a_spark_executor_for_the_kubernetes_scheduler(tmp_path: Path) -> None:
    """Spark's Kubernetes scheduler starts executor pods from this image with the argument
    ``executor``: the entry point must start Spark's executor backend (here it finds no driver)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "SPARK_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env |= {
        "SPARK_EXECUTOR_MEMORY": "256m",
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@127.0.0.1:9",  # discard: nothing answers
        "SPARK_EXECUTOR_ID": "1",
        "SPARK_EXECUTOR_CORES": "1",
        "SPARK_APPLICATION_ID": "spark-test",
        "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
        "SPARK_EXECUTOR_POD_NAME": "lookalike-exec-1",
        "SPARK_JAVA_OPT_0": "-Dspark.rpc.numRetries=1",
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / ENTRYPOINT), "executor"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert "KubernetesExecutorBackend: Started daemon" in log, log[-3000:]
    assert done.returncode != 0  # no driver at that address
