"""Reading ``features`` through spark-cassandra-connector, when it is configured.

The connector splits the token ring into Spark partitions, so every listing (a Cassandra
partition) lands whole in one Spark partition and per-listing aggregation needs no shuffle.
Without the connector, ``search.spark.job.load_features`` reads the same token ranges through
the Python driver inside Spark tasks.

``LOOKALIKE_SPARK_CASSANDRA_CONNECTOR`` is a Maven coordinate (``spark.jars.packages``, resolved
by Spark at start-up) or a local jar (``spark.jars``): pyspark 4.1 is Spark 4.1 on Scala 2.13, so
the connector's 4.1 line, ``com.datastax.spark:spark-cassandra-connector_2.13:4.1.0`` (its 3.5
line is built for Spark 3.5). When it is configured but its classes do not load, the session
stops at start-up with a message naming what is missing (:func:`check_connector`).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from config.cassandra import CassandraSettings
from config.settings import SparkSettings
from schemas.records import ModelInfo
from store.cassandra_url import parse_url

CONNECTOR_FORMAT = "org.apache.spark.sql.cassandra"
CONNECTOR_CLASS = "com.datastax.spark.connector.cql.CassandraConnector"
DEFAULT_CONNECTOR = "com.datastax.spark:spark-cassandra-connector_2.13:4.1.0"


class ConnectorMissing(RuntimeError):
    """The connector is configured but its classes are not on the driver's classpath."""


def is_jar(value: str) -> bool:
    """A local jar (a path ending in .jar, or an existing file), not a Maven coordinate."""
    return value.endswith(".jar") or Path(value).expanduser().is_file()


def connector_jars(value: str) -> dict[str, str]:
    """``spark.jars`` for local jars, ``spark.jars.packages`` for Maven coordinates (either may
    be a comma-separated list: the connector and, for a thin jar, its dependencies)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    jars = [str(Path(v).expanduser().resolve()) for v in items if is_jar(v)]
    packages = [v for v in items if not is_jar(v)]
    conf = {}
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if packages:
        conf["spark.jars.packages"] = ",".join(packages)
    return conf


def uses_connector(settings: SparkSettings, store_url: str) -> bool:
    return bool(settings.cassandra_connector) and store_url.startswith("cassandra://")


def connector_conf(
    settings: SparkSettings, store_url: str, cassandra: CassandraSettings | None = None
) -> dict[str, str]:
    """The ``spark.*`` options that load the connector and point it at the store's cluster.
    Anything in ``LOOKALIKE_SPARK_CONF`` (e.g. ``spark.cassandra.input.split.sizeInMB``) wins."""
    target, c = parse_url(store_url), cassandra or CassandraSettings()
    conf = {
        **connector_jars(settings.cassandra_connector),
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


def check_connector(spark: SparkSession, settings: SparkSettings) -> None:
    """Raise :class:`ConnectorMissing` unless the connector's classes load in the driver."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    try:
        jvm.java.lang.Class.forName(CONNECTOR_CLASS, False, loader)
    except Exception as exc:  # py4j's error carries the JVM's ClassNotFoundException
        what = "jar" if any(is_jar(v.strip()) for v in settings.cassandra_connector.split(",")) else "package"
        raise ConnectorMissing(
            f"LOOKALIKE_SPARK_CASSANDRA_CONNECTOR={settings.cassandra_connector} is set, but class "
            f"{CONNECTOR_CLASS} does not load from that {what}: give the connector built for Spark "
            f"{spark.version} and Scala 2.13 (e.g. {DEFAULT_CONNECTOR}, or the path of its assembly "
            f"jar), or unset it to read through the Python driver ({type(exc).__name__})"
        ) from None


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
