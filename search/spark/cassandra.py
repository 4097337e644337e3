"""Reading ``features`` through spark-cassandra-connector, when it is configured.

The connector splits the token ring into Spark partitions, so every listing (a Cassandra
partition) lands whole in one Spark partition and per-listing aggregation needs no shuffle.
Without the connector, ``search.spark.job.load_features`` reads the same token ranges through
the Python driver inside Spark tasks.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from config.cassandra import CassandraSettings
from config.settings import SparkSettings
from schemas.records import ModelInfo
from store.cassandra_url import parse_url

CONNECTOR_FORMAT = "org.apache.spark.sql.cassandra"


def uses_connector(settings: SparkSettings, store_url: str) -> bool:
    return bool(settings.cassandra_connector) and store_url.startswith("cassandra://")


def connector_conf(
    settings: SparkSettings, store_url: str, cassandra: CassandraSettings | None = None
) -> dict[str, str]:
    """The ``spark.*`` options that load the connector and point it at the store's cluster.
    Anything in ``LOOKALIKE_SPARK_CONF`` (e.g. ``spark.cassandra.input.split.sizeInMB``) wins."""
    target, c = parse_url(store_url), cassandra or CassandraSettings()
    conf = {
        "spark.jars.packages": settings.cassandra_connector,
        "spark.sql.extensions": "com.datastax.spark.connector.CassandraSparkExtensions",
        "spark.cassandra.connection.host": ",".join(h for h, _ in target.hosts),
        "spark.cassandra.connection.port": str(target.hosts[0][1]),
        "spark.cassandra.input.consistency.level": c.read_consistency,
        "spark.cassandra.output.consistency.level": c.write_consistency,
        "spark.cassandra.input.fetch.sizeInRows": str(c.fetch_size),
        "spark.cassandra.connection.ssl.enabled": str(c.tls).lower(),
    }
    if target.dc:
        conf["spark.cassandra.connection.localDC"] = target.dc
    if c.username:
        conf["spark.cassandra.auth.username"] = c.username
        conf["spark.cassandra.auth.password"] = c.password.get_secret_value()
    if c.tls_ca_file:
        conf["spark.cassandra.connection.ssl.trustStore.path"] = str(c.tls_ca_file)
    return {**conf, **settings.conf}


def _uuid_bytes(column: str) -> Column:
    """The connector reads uuid columns as strings; the job wants the 16 raw bytes."""
    return F.unhex(F.regexp_replace(F.col(column).cast("string"), "-", ""))


def read_features(spark: SparkSession, store_url: str, model: ModelInfo) -> DataFrame:
    """``features`` of one model, in the job's columns: listing_id, image_id, vector (binary)."""
    return (
        spark.read.format(CONNECTOR_FORMAT)
        .options(keyspace=parse_url(store_url).keyspace, table="features")
        .load()
        .where(F.col("model") == model.name)
        .select(
            _uuid_bytes("listing_id").alias("listing_id"),
            _uuid_bytes("image_id").alias("image_id"),
            F.col("feature_vector").alias("vector"),
        )
    )
