"""How the Cassandra store talks to the cluster, from ``LOOKALIKE_CASSANDRA_*`` variables.

Where the cluster is (hosts, port, keyspace, local data centre) comes from the store URL
instead (``store/cassandra_url.py``). The password is a ``SecretStr``: it never shows up in a
repr, a log line or an error message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Consistency = Literal[
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
]
SerialConsistency = Literal["SERIAL", "LOCAL_SERIAL"]
STRATEGIES = ("SimpleStrategy", "NetworkTopologyStrategy")
_FACTOR = re.compile(r"^[1-9][0-9]{0,2}(/[0-9]{1,3})?$")  # "3", or "3/1" (transient replicas)


class CassandraSettings(BaseSettings):
    """How the Cassandra store talks to the cluster (not where: that is the URL)."""

    # use_attribute_docstrings: each field's docstring is its description (the settings
    # reference of the documentation site prints it)
    model_config = SettingsConfigDict(
        env_prefix="LOOKALIKE_CASSANDRA_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    replication: dict[str, str] = Field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": "1"}
    )
    """Keyspace replication, as JSON: `{"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 3}`."""
    read_consistency: Consistency = "LOCAL_ONE"
    """Consistency level of reads."""
    write_consistency: Consistency = "LOCAL_QUORUM"
    """Consistency level of writes."""
    serial_consistency: SerialConsistency = "LOCAL_SERIAL"
    """Serial consistency of the schema lock (a lightweight transaction)."""
    concurrency: int = Field(default=64, ge=1, le=4096)
    """Requests in flight per batch write or multi-key read: raise it with more nodes, lower it
    if the cluster reports timeouts."""
    fetch_size: int = Field(default=2000, ge=1)
    """Rows per page."""
    request_timeout_s: float = Field(default=10.0, gt=0)
    """Per request."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Connecting to a node."""
    ddl_timeout_s: float = Field(default=60.0, gt=0)
    """One schema statement."""
    schema_lock_timeout_s: float = Field(default=300.0, gt=0)
    """How long `schema apply` waits for another migrator."""
    username: str = ""
    """PasswordAuthenticator user (credentials never go in the store URL)."""
    password: SecretStr = SecretStr("")
    """PasswordAuthenticator password; never logged."""
    tls: bool = False
    """Connect with TLS."""
    tls_ca_file: Path | None = None
    """CA bundle for TLS; unset: the system's trust store."""
    tls_check_hostname: bool = True
    """Check the node's certificate against its host name."""
    scan_splits: int = Field(default=0, ge=0)
    """Token sub-ranges of a whole-ring scan (a shard gets its share, at least one); 0: 4 per host
    the driver knows, at least 8."""
    scan_parallelism: int = Field(default=8, ge=1, le=256)
    """Sub-ranges read at once; a scan holds about parallelism x 2 pages x fetch size rows."""
    retry_attempts: int = Field(default=5, ge=1, le=100)
    """Idempotent requests, per request, first try included (timeouts, unavailable)."""
    retry_backoff_s: float = Field(default=0.2, ge=0)
    """First wait between retries; doubles each retry."""
    retry_backoff_max_s: float = Field(default=5.0, ge=0)
    """Longest wait between retries."""
    speculative_delay_ms: int = Field(default=0, ge=0)
    """Reads: a speculative request to another replica after this; 0: no speculative execution."""
    speculative_attempts: int = Field(default=2, ge=1, le=10)
    """Speculative requests per read at most."""

    @field_validator("read_consistency", "write_consistency", "serial_consistency", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("replication", mode="before")
    @classmethod
    def _replication(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out = {str(k): str(v) for k, v in value.items()}
        strategy = out.get("class", "").rsplit(".", 1)[-1]
        if strategy not in STRATEGIES:
            raise ValueError(f"replication class must be one of {STRATEGIES}, got {out.get('class')!r}")
        factors = {k: v for k, v in out.items() if k != "class"}
        if strategy == "SimpleStrategy" and set(factors) != {"replication_factor"}:
            raise ValueError(
                f'SimpleStrategy takes exactly {{"replication_factor": N}}, got {sorted(factors)}'
            )
        if not factors:
            raise ValueError('NetworkTopologyStrategy needs a factor per data centre, e.g. {"dc1": 3}')
        for key, factor in factors.items():
            if not _FACTOR.match(factor):
                raise ValueError(f"replication factor of {key!r} must be N or N/T, got {factor!r}")
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
                raise ValueError(f"data centre name {key!r} has characters CQL cannot quote safely")
        return {"class": strategy, **factors}

    @model_validator(mode="after")
    def _tls(self) -> CassandraSettings:
        if self.tls_ca_file is not None and not self.tls:
            raise ValueError("LOOKALIKE_CASSANDRA_TLS_CA_FILE is set but LOOKALIKE_CASSANDRA_TLS is not")
        if self.password.get_secret_value() and not self.username:
            raise ValueError("LOOKALIKE_CASSANDRA_PASSWORD is set but LOOKALIKE_CASSANDRA_USERNAME is not")
        return self

    def replication_cql(self) -> str:
        """The replication map as CQL: {'class': 'SimpleStrategy', 'replication_factor': '1'}."""
        pairs = ", ".join(f"'{k}': '{v}'" for k, v in self.replication.items())
        return "{" + pairs + "}"
