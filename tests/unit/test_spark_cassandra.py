"""spark-cassandra-connector settings (the connector itself needs a cluster and Maven)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from config.cassandra import CassandraSettings
from config.settings import SparkSettings
from search.spark.cassandra import DEFAULT_CONNECTOR, connector_conf, connector_jars, uses_connector

URL = "cassandra://c1,c2:9043/shop?dc=eu1"
CONNECTOR = "com.datastax.spark:spark-cassandra-connector_2.13:4.1.0"


def test_connector_only_for_a_cassandra_store_when_configured() -> None:
    assert not uses_connector(SparkSettings(), URL)
    assert uses_connector(SparkSettings(cassandra_connector=CONNECTOR), URL)
    assert not uses_connector(SparkSettings(cassandra_connector=CONNECTOR), "sqlite:///x.db")


def test_connector_conf_points_at_the_stores_cluster() -> None:
    spark = SparkSettings(cassandra_connector=CONNECTOR, conf={"spark.cassandra.input.split.sizeInMB": "128"})
    cassandra = CassandraSettings(username="u", password=SecretStr("p"), read_consistency="LOCAL_QUORUM")
    conf = connector_conf(spark, URL, cassandra)
    assert conf["spark.jars.packages"] == CONNECTOR and "spark.jars" not in conf
    assert conf["spark.cassandra.connection.host"] == "c1,c2"
    assert conf["spark.cassandra.connection.port"] == "9043"
    assert conf["spark.cassandra.connection.localDC"] == "eu1"
    assert conf["spark.cassandra.input.consistency.level"] == "LOCAL_QUORUM"
    assert conf["spark.cassandra.auth.password"] == "p"
    assert conf["spark.cassandra.input.split.sizeInMB"] == "128"  # LOOKALIKE_SPARK_CONF wins


def test_the_connector_matches_the_pinned_spark() -> None:
    """pyspark 4.1 is Spark 4.1 on Scala 2.13: the connector's 4.1 line (3.5 is for Spark 3.5)."""
    import pyspark

    spark_line = ".".join(pyspark.__version__.split(".")[:2])
    group, artifact, version = DEFAULT_CONNECTOR.split(":")
    assert (group, artifact) == ("com.datastax.spark", "spark-cassandra-connector_2.13")
    assert version.startswith(spark_line + "."), (DEFAULT_CONNECTOR, pyspark.__version__)


def test_a_jar_path_goes_to_spark_jars(tmp_path: Path) -> None:
    jar = tmp_path / "scc-assembly.jar"
    assert connector_jars(str(jar)) == {"spark.jars": str(jar)}  # named .jar: a jar, even if absent
    existing = tmp_path / "connector"
    existing.write_bytes(b"")
    assert connector_jars(str(existing)) == {"spark.jars": str(existing)}
    both = connector_jars(f"{jar}, {CONNECTOR}")
    assert both == {"spark.jars": str(jar), "spark.jars.packages": CONNECTOR}
    conf = connector_conf(SparkSettings(cassandra_connector=str(jar)), URL, CassandraSettings())
    assert conf["spark.jars"] == str(jar) and "spark.jars.packages" not in conf


def test_every_deployment_names_the_same_connector() -> None:
    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("dcos/*.json"), *root.glob("deploy/kubernetes/**/*.yaml"), root / "docs/clusters.md"]
    named = [f for f in files if "spark-cassandra-connector_" in f.read_text()]
    assert len(named) >= 4
    for f in named:
        for line in f.read_text().splitlines():
            if "spark-cassandra-connector_" in line:
                assert DEFAULT_CONNECTOR in line, f"{f}: {line.strip()}"
