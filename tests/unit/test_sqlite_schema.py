"""The SQLite mirror of the CQL files: translation of each statement kind, refusal of the rest."""

from __future__ import annotations

import sqlite3

import pytest

from store.migrations import load_migrations
from store.sqlite_schema import UntranslatableCql, translate


def test_a_partitioned_table_keeps_its_key_order_and_clustering_direction() -> None:
    sql = translate(
        "CREATE TABLE IF NOT EXISTS scores (run uuid, kind text, score float, image uuid,"
        " tags map<text, int>, PRIMARY KEY ((run, kind), score, image))"
        " WITH CLUSTERING ORDER BY (score DESC, image ASC) AND default_time_to_live = 60"
    )
    assert sql[0] == (
        "CREATE TABLE IF NOT EXISTS scores (run BLOB, kind TEXT, score REAL, image BLOB, tags TEXT,"
        " expires_at REAL, PRIMARY KEY (run, kind, score DESC, image)) WITHOUT ROWID"
    )
    assert sql[1] == "CREATE INDEX IF NOT EXISTS scores_expiry ON scores (expires_at)"


def test_inline_keys_indexes_and_added_columns() -> None:
    assert translate("CREATE TABLE t (id uuid PRIMARY KEY, n bigint)") == [
        "CREATE TABLE IF NOT EXISTS t (id BLOB, n INTEGER, PRIMARY KEY (id)) WITHOUT ROWID"
    ]
    assert translate("CREATE INDEX IF NOT EXISTS t_n ON t (n)") == ["CREATE INDEX IF NOT EXISTS t_n ON t (n)"]
    assert translate("ALTER TABLE t ADD seen boolean") == ["ALTER TABLE t ADD COLUMN seen INTEGER"]


@pytest.mark.parametrize(
    "cql",
    [
        "CREATE TYPE address (street text)",
        "CREATE MATERIALIZED VIEW v AS SELECT * FROM t WHERE id IS NOT NULL PRIMARY KEY (id)",
        "CREATE TABLE t (id duration PRIMARY KEY)",
        "CREATE TABLE t (id uuid)",
    ],
)
def test_what_sqlite_cannot_mirror_is_refused_with_the_statement(cql: str) -> None:
    with pytest.raises(UntranslatableCql, match=r"SQLite"):
        translate(cql)


def test_every_shipped_migration_translates_into_valid_sqlite() -> None:
    db = sqlite3.connect(":memory:")
    for migration in load_migrations():
        for statement in migration.statements:
            for sql in translate(statement):
                db.execute(sql)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"features", "images", "listings", "stock_level", "query_results", "models"} <= tables
