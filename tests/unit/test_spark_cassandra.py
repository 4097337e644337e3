"""spark-cassandra-connector settings (the connector itself needs a cluster and Maven)."""

from __future__ import annotations

from pydantic import SecretStr

from config.cassandra import CassandraSettings
from config.settings import SparkSettings
from search.spark.cassandra import connector_conf, uses_connector

URL = "cassandra://c1,c2:9043/shop?dc=eu1"
CONNECTOR = "com.datastax.spark:spark-cassandra-connector_2.13:3.5.1"


def test_connector_only_for_a_cassandra_store_when_configured() -> None:
    assert not uses_connector(SparkSettings(), URL)
    assert uses_connector(SparkSettings(cassandra_connector=CONNECTOR), URL)
    assert not uses_connector(SparkSettings(cassandra_connector=CONNECTOR), "sqlite:///x.db")


def test_connector_conf_points_at_the_stores_cluster() -> None:
    spark = SparkSettings(cassandra_connector=CONNECTOR, conf={"spark.cassandra.input.split.sizeInMB": "128"})
    cassandra = CassandraSettings(username="u", password=SecretStr("p"), read_consistency="LOCAL_QUORUM")
    conf = connector_conf(spark, URL, cassandra)
    assert conf["spark.jars.packages"] == CONNECTOR
    assert conf["spark.cassandra.connection.host"] == "c1,c2"
    assert conf["spark.cassandra.connection.port"] == "9043"
    assert conf["spark.cassandra.connection.localDC"] == "eu1"
    assert conf["spark.cassandra.input.consistency.level"] == "LOCAL_QUORUM"
    assert conf["spark.cassandra.auth.password"] == "p"
    assert conf["spark.cassandra.input.split.sizeInMB"] == "128"  # LOOKALIKE_SPARK_CONF wins
