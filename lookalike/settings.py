"""Settings, one class per component, read from ``LOOKALIKE_*`` environment variables.

Marathon passes configuration as environment variables, so that is the only source.
Every class forbids unknown fields, and :func:`check_environment` rejects a
``LOOKALIKE_*`` variable that no class knows, so a typo fails loudly instead of
silently falling back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from store.cassandra_settings import CassandraSettings

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
    partitions: int = Field(default=4, ge=1)  # for topics Lookalike creates
    replication: int = Field(default=1, ge=1)
    group: str = "lookalike-extract"
    stock_group: str = "lookalike-stock"
    security_protocol: str = ""  # e.g. SASL_SSL
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    max_message_bytes: int = Field(default=1_000_000, ge=1024)

    def client_config(self) -> KafkaConfig:
        """librdkafka options shared by producers, consumers and the admin client."""
        if not self.bootstrap:
            raise ValueError(
                "LOOKALIKE_KAFKA_BOOTSTRAP is not set: give host:port of a Kafka broker "
                "(`lookalike demo` starts an embedded one by itself)"
            )
        # Brokers close idle connections routinely: not worth a log line.
        conf: KafkaConfig = {"bootstrap.servers": self.bootstrap, "log.connection.close": False}
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

    name: Literal["vgg16_fc7", "resnet50_pool"] = "vgg16_fc7"
    weights: Path | None = None  # explicit .pth; else the torch cache; else random if allowed
    allow_random: bool = True  # embedded default only; refused when LOOKALIKE_PRODUCTION=1
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
    # answer is kept when provably exact (else a full scan); off: always the full scan
    exact_first_pass: bool = True
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

    @field_validator("keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    CassandraSettings,
    CoreSettings,
    KafkaSettings,
    ModelSettings,
    ExtractSettings,
    SparkSettings,
    SearchSettings,
    ApiSettings,
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
