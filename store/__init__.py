"""Storage adapters, chosen by URL: ``sqlite:///path`` or ``cassandra://h1,h2/keyspace?dc=dc1``."""

from __future__ import annotations

from config.cassandra import CassandraSettings
from store.base import ResultRow, Store, StoreError, StoreUnavailable

__all__ = ["ResultRow", "Store", "StoreError", "StoreUnavailable", "open_store"]


def open_store(url: str, cassandra: CassandraSettings | None = None) -> Store:
    """Open the backend a URL names. Clients are built here, never at import."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        from store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme == "cassandra":
        from store.cassandra import CassandraStore

        return CassandraStore(url, cassandra)
    raise StoreError(
        f"store URL must start with sqlite:/// or cassandra://, got {url!r} (set LOOKALIKE_STORE)"
    )
