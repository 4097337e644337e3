"""spark-cassandra-connector configured but not loadable stops the session at start-up with a
message naming the jar (or coordinate) and the class; a jar that holds the class is accepted.
Each case is its own driver process: a session's jars are fixed when its JVM starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from search.spark.cassandra import CONNECTOR_CLASS

pytestmark = pytest.mark.integration

DRIVER = """
import sys
from config.settings import SparkSettings
from search.spark.cassandra import ConnectorMissing
from search.spark.session import spark_session

settings = SparkSettings(master="local[1]", driver_memory="512m", cassandra_connector=sys.argv[1])
try:
    spark = spark_session(settings, "connector-check", "cassandra://127.0.0.1:9042/shop")
except ConnectorMissing as exc:
    print(exc)
    raise SystemExit(3)
print("loaded", spark.sparkContext.getConf().get("spark.jars"))
spark.stop()
"""


def _start(connector: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, connector], capture_output=True, text=True, timeout=300, check=False
    )


def _empty_jar(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    return path


@pytest.mark.parametrize("kind", ["absent", "empty"])
def test_a_connector_jar_without_the_connector_stops_the_start(tmp_path: Path, kind: str) -> None:
    jar = tmp_path / "spark-cassandra-connector-assembly.jar"
    if kind == "empty":
        _empty_jar(jar)
    done = _start(str(jar))
    assert done.returncode == 3, done.stderr[-3000:]
    message = done.stdout
    assert str(jar) in message and CONNECTOR_CLASS in message and "from that jar" in message
    assert "spark-cassandra-connector_2.13:4.1.0" in message  # what to give instead


@pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("jar") is None, reason="needs a JDK (javac)"
)
def test_a_jar_holding_the_connector_class_is_accepted(tmp_path: Path) -> None:
    package, name = CONNECTOR_CLASS.rsplit(".", 1)
    source = tmp_path / "src" / Path(*package.split(".")) / f"{name}.java"
    source.parent.mkdir(parents=True)
    source.write_text(f"package {package};\npublic class {name} {{}}\n")
    classes = tmp_path / "classes"
    subprocess.run(["javac", "-d", str(classes), str(source)], check=True, timeout=120)
    jar = tmp_path / "connector.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True, timeout=120)
    done = _start(str(jar))
    assert done.returncode == 0, textwrap.shorten(done.stdout + done.stderr[-3000:], 3000)
    assert "loaded" in done.stdout and str(jar) in done.stdout
