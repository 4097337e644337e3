"""Where the Cassandra cluster is: hosts, port, keyspace and local data centre, parsed from the
store URL (``cassandra://h1,h2:9042/lookalike?dc=dc1``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from store.base import StoreError

DEFAULT_PORT = 9042
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


@dataclass(frozen=True)
class CassandraTarget:
    """Where the cluster is: from ``cassandra://h1,h2[:port]/keyspace?dc=DC``."""

    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    dc: str | None

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.hosts)


def parse_url(url: str) -> CassandraTarget:
    """Parse a store URL; a port after any host applies to the hosts without one."""
    expected = "a Cassandra store URL looks like cassandra://h1,h2[:9042]/keyspace?dc=dc1"
    if not url.startswith("cassandra://"):
        raise StoreError(f"{expected}, got {url!r}")
    rest, _, query = url.removeprefix("cassandra://").partition("?")
    netloc, _, keyspace = rest.partition("/")
    if "@" in netloc:
        raise StoreError(
            "credentials do not belong in the store URL (it is logged): set "
            "LOOKALIKE_CASSANDRA_USERNAME and LOOKALIKE_CASSANDRA_PASSWORD"
        )
    parsed = [_host_port(item, url) for item in netloc.split(",")]
    ports = {p for _, p in parsed if p is not None}
    default_port = ports.pop() if len(ports) == 1 else DEFAULT_PORT
    hosts = tuple((h, default_port if p is None else p) for h, p in parsed)
    keyspace = keyspace.strip("/")
    if not _KEYSPACE.match(keyspace) or keyspace.lower().startswith("system"):
        raise StoreError(
            f"{expected}; the keyspace must be letters, digits and _ (at most 48, not system*), "
            f"got {keyspace!r}"
        )
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key != "dc" or not value:
            raise StoreError(f"{expected}; the only URL option is dc=<local data centre>, got {pair!r}")
        options[key] = value
    return CassandraTarget(hosts, keyspace.lower(), options.get("dc"))


def _host_port(item: str, url: str) -> tuple[str, int | None]:
    host, port = item, ""
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port = tail.removeprefix(":")
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise StoreError(f"bad host[:port] {item!r} in store URL {url!r}")
    return host, int(port) if port else None
