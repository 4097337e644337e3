"""A new numbered CQL file reaches every backend through the one migration mechanism."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from store import Store
from store.cassandra import CassandraStore
from store.migrations import cql_directory, load_migrations
from store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

PROBE = """
-- a table and a column that exist in no shipped file
CREATE TABLE IF NOT EXISTS migration_probe (
    run_id uuid, score float, image_id uuid,
    PRIMARY KEY ((run_id), score, image_id)
) WITH CLUSTERING ORDER BY (score DESC, image_id ASC);
ALTER TABLE listings ADD probe_note text;
"""


def _has(store: Store, table: str, column: str) -> bool:
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            return column in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    assert isinstance(store, CassandraStore)
    rows = store._cql.rows(  # the driver's own view of the schema
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
        (store._cql.target.keyspace, table),
    )
    return column in {r[0] for r in rows}


def test_a_new_numbered_file_reaches_the_backend(any_store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "cql"
    shutil.copytree(cql_directory(), folder)
    last = int(load_migrations(folder)[-1].version)
    (folder / f"{last + 1:03d}_probe.cql").write_text(PROBE)

    applied = any_store.apply_schema(load_migrations(folder))

    assert applied == [f"{last + 1:03d}"]
    assert _has(any_store, "migration_probe", "score")
    assert _has(any_store, "listings", "probe_note")
    assert any_store.apply_schema(load_migrations(folder)) == []  # applied once
    assert [v for v, _ in any_store.applied_versions()][-1] == f"{last + 1:03d}"


def test_processes_opening_one_new_file_at_once_each_migrate_it_once(tmp_path: Path) -> None:
    """``extract --workers 2`` opens one fresh SQLite file from two processes: each migration
    must be applied by exactly one of them, and neither may fail on the other's version row."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    stores = [SQLiteStore(url) for _ in range(4)]  # a connection each: SQLite's own locking
    start = threading.Barrier(len(stores))
    applied: list[list[str]] = [[] for _ in stores]
    errors: list[BaseException] = []

    def migrate(i: int) -> None:
        start.wait()
        try:
            applied[i] = stores[i].apply_schema()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    versions = [m.version for m in load_migrations()]
    assert sorted(v for done in applied for v in done) == versions  # each one, once
    assert [v for v, _ in stores[0].applied_versions()] == versions
