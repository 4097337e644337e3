"""Schema migrations on Cassandra: the keyspace, then the numbered ``schemas/cql`` files.

Applied versions are recorded in ``schema_versions``. Several machines may migrate at once:
the files are applied under a lock row taken with a lightweight transaction
(``INSERT ... IF NOT EXISTS``), with a TTL so that a dead migrator's lock expires, and every
schema statement waits for schema agreement before the next one runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from schemas.records import utcnow
from store.base import StoreError, StoreUnavailable
from store.cassandra_session import CqlSession
from store.migrations import Migration, load_migrations

log = logging.getLogger(__name__)

CREATE_KEYSPACE = "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
CREATE_SCHEMA_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS schema_versions "
    "(version text PRIMARY KEY, applied_at timestamp, checksum text)"
)
CREATE_SCHEMA_LOCK = (
    "CREATE TABLE IF NOT EXISTS schema_lock (name text PRIMARY KEY, owner uuid, acquired_at timestamp)"
)
LOCK_SCHEMA = (
    "INSERT INTO schema_lock (name, owner, acquired_at) VALUES ('schema', ?, ?) IF NOT EXISTS USING TTL ?"
)
UNLOCK_SCHEMA = "DELETE FROM schema_lock WHERE name = 'schema' IF owner = ?"
SELECT_VERSIONS = "SELECT version, applied_at, checksum FROM schema_versions"
INSERT_VERSION = "INSERT INTO schema_versions (version, applied_at, checksum) VALUES (?, ?, ?)"


def apply_schema(cql: CqlSession, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Create the keyspace if absent, then apply the CQL files not applied yet, in order.
    Returns the versions applied by this call; idempotent."""
    keyspace = cql.target.keyspace
    if not cql.use_keyspace():
        replication = cql.settings.replication_cql()
        cql.execute_ddl(CREATE_KEYSPACE.format(keyspace=keyspace, replication=replication))
        if not cql.use_keyspace():
            raise StoreError(f"keyspace {keyspace!r} was created but the driver does not see it")
    for table, ddl in (
        ("schema_versions", CREATE_SCHEMA_VERSIONS),
        ("schema_lock", CREATE_SCHEMA_LOCK),
    ):
        if not cql.has_table(table):  # so a run with nothing to do issues no DDL at all
            cql.execute_ddl(ddl)
    applied: list[str] = []
    with _schema_lock(cql):
        done = {row[0]: row[2] for row in cql.rows(SELECT_VERSIONS, write=True)}
        for migration in load_migrations() if migrations is None else migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "%s changed after it was applied (checksum %s, now %s); an applied "
                        "file is never re-applied: put changes in a new numbered file",
                        migration.name,
                        done[migration.version],
                        migration.checksum,
                    )
                continue
            for statement in migration.statements:
                cql.execute_ddl(statement)
            params = (migration.version, utcnow(), migration.checksum)
            cql.execute(INSERT_VERSION, params, write=True)
            log.info("applied %s to keyspace %s", migration.name, keyspace)
            applied.append(migration.version)
    return applied


def applied_versions(cql: CqlSession) -> list[tuple[str, str]]:
    """(version, applied_at as ISO 8601 UTC) of every applied file, in version order."""
    if not cql.has_table("schema_versions"):
        return []
    rows = cql.rows(SELECT_VERSIONS, write=True)
    return sorted(((str(r[0]), utc(r[1]).isoformat()) for r in rows), key=lambda v: int(v[0]))


def utc(value: datetime) -> datetime:
    """The driver returns timestamps as naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@contextmanager
def _schema_lock(cql: CqlSession) -> Iterator[None]:
    owner = uuid.uuid4()
    ttl = int(cql.settings.schema_lock_timeout_s)
    deadline = time.monotonic() + cql.settings.schema_lock_timeout_s
    while True:
        # Retrying an LWT is ambiguous; the owner check makes it safe: when an earlier try
        # did apply, this one comes back "not applied" with our own id as the owner.
        result = cql.execute(LOCK_SCHEMA, (owner, utcnow(), ttl), write=True, idempotent=False)
        row = dict(zip(result.column_names, result.one(), strict=True))
        if row["[applied]"] or row.get("owner") == owner:
            break
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"the schema lock of keyspace {cql.target.keyspace!r} is still held by "
                f"{row.get('owner')} (since {row.get('acquired_at')}); the lock of a migrator "
                f"that died expires by itself after {ttl}s"
            )
        log.info("waiting for the schema lock held by %s", row.get("owner"))
        time.sleep(1.0)
    try:
        yield
    finally:
        try:
            cql.execute(UNLOCK_SCHEMA, (owner,), write=True, idempotent=False)
        except StoreError as error:  # it expires by itself
            log.warning("could not release the schema lock (it expires in %ss): %s", ttl, error)
