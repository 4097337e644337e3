"""Settings, one class per component, read from ``LOOKALIKE_*`` environment variables.

Marathon passes configuration as environment variables, so that is the only source.
Every class forbids unknown fields, and :func:`check_environment` rejects a
``LOOKALIKE_*`` variable that no class knows, so a typo fails loudly instead of
silently falling back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        conf: KafkaConfig = {"bootstrap.servers": self.bootstrap}
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


class ApiSettings(BaseSettings):
    """The HTTP service."""

    model_config = _config("API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=20_000_000, ge=1024)
    default_k: int = Field(default=10, ge=1, le=1000)


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    CassandraSettings,
    CoreSettings,
    KafkaSettings,
    ModelSettings,
    SparkSettings,
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
