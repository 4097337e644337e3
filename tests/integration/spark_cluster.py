"""The one-machine Spark cluster for the tests (a master and two workers, each executor in its own
JVM), shared by the session: ``from tests.integration.spark_cluster import spark_cluster``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.spark_cluster import Cluster, start_cluster

WORKERS = 2


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs: Path = tmp_path_factory.mktemp("spark-cluster")
    cluster = start_cluster(workers=WORKERS, cores=1, memory="1g", log_dir=logs)
    yield cluster
    cluster.stop()


@pytest.fixture
def full_cluster(spark_cluster: Cluster) -> Cluster:
    """The session's cluster with every worker up (a test before may have killed one)."""
    spark_cluster.restart_dead_workers()
    spark_cluster.wait_for_workers(WORKERS)
    return spark_cluster
