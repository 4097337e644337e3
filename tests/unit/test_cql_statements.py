"""The Cassandra statements (the store's and the analytics') name only tables and columns of
schemas/cql/*.cql (the Cassandra contract tests run only with LOOKALIKE_TEST_CASSANDRA; this guard
runs everywhere)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from store import analytics_cassandra, cassandra

CQL = Path(__file__).resolve().parents[2] / "schemas" / "cql"
WORDS = {"select", "from", "where", "and", "insert", "into", "values", "update", "set", "if", "limit",
         "running", "complete", "failed", "delete", "token", "allow", "filtering", "using", "ttl",
         "count"}  # fmt: skip


def _tables() -> dict[str, set[str]]:
    text = re.sub(r"--[^\n]*", "", "\n".join(f.read_text() for f in sorted(CQL.glob("*.cql"))))
    out = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", text, flags=re.S):
        out[name] = {
            line.split()[0]
            for line in body.splitlines()
            if line.strip() and not line.strip().startswith("PRIMARY")
        }
    return out


@pytest.mark.parametrize(("module", "least"), [(analytics_cassandra, 15), (cassandra, 25)])
def test_every_statement_names_known_columns(module: object, least: int) -> None:
    tables = _tables()
    statements = {
        k: v
        for k, v in vars(module).items()
        if k[0].isupper() and isinstance(v, str) and " " in v and "?" in v
    }
    assert len(statements) >= least
    for name, cql in statements.items():
        table = re.search(r"(?:FROM|INTO|UPDATE) (\w+)", cql)
        assert table and table.group(1) in tables, name
        words = set(re.findall(r"[a-z_]+", re.sub(r"'[^']*'", "", cql))) - WORDS
        unknown = words - tables[table.group(1)] - {table.group(1)}
        assert not unknown, f"{name}: {unknown}"
