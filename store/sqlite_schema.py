"""The numbered CQL files, translated for SQLite: one schema, written once, in CQL.

``schemas/cql/NNN_*.cql`` are the source of truth; the SQLite backend applies them through
:func:`store.migrations.load_migrations` like Cassandra does, each statement translated here:

- ``CREATE TABLE`` keeps the columns and keys: ``PRIMARY KEY ((pk), ck, ...)`` becomes one
  ``WITHOUT ROWID`` primary key in the same order, with ``CLUSTERING ORDER BY`` directions kept
  (``score DESC`` is what makes a top-k read one index range, as in Cassandra);
  ``default_time_to_live`` adds an ``expires_at`` column and an index on it (SQLite has no TTL:
  the backend filters and purges on it);
- ``CREATE INDEX`` and ``ALTER TABLE ... ADD`` carry over;
- CQL types map to SQLite's affinities (uuid and blob to BLOB, text and timestamp to TEXT,
  collections to TEXT holding JSON).

Anything else (``CREATE TYPE``, materialized views, keyspace statements) is refused with the
statement in the message, so a new migration cannot silently skip SQLite.
"""

from __future__ import annotations

import re

TYPES = {
    "uuid": "BLOB",
    "timeuuid": "BLOB",
    "blob": "BLOB",
    "text": "TEXT",
    "varchar": "TEXT",
    "ascii": "TEXT",
    "timestamp": "TEXT",
    "date": "TEXT",
    "int": "INTEGER",
    "bigint": "INTEGER",
    "smallint": "INTEGER",
    "tinyint": "INTEGER",
    "counter": "INTEGER",
    "boolean": "INTEGER",
    "float": "REAL",
    "double": "REAL",
}
_COLLECTION = re.compile(r"^(frozen<)?(map|list|set|tuple)<", re.IGNORECASE)
_CREATE_TABLE = re.compile(
    r"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(?P<name>\w+)\s*\((?P<body>.*?)\)\s*(WITH\s+(?P<with>.*))?$",
    re.IGNORECASE | re.DOTALL,
)
_CREATE_INDEX = re.compile(
    r"^CREATE\s+INDEX\s+(IF\s+NOT\s+EXISTS\s+)?(?P<name>\w+)\s+ON\s+(?P<table>\w+)\s*\((?P<col>\w+)\)$",
    re.IGNORECASE,
)
_ALTER_ADD = re.compile(
    r"^ALTER\s+TABLE\s+(?P<table>\w+)\s+ADD\s+(?P<col>\w+)\s+(?P<type>.+)$", re.IGNORECASE
)
_ORDER = re.compile(r"CLUSTERING\s+ORDER\s+BY\s*\((?P<order>[^)]*)\)", re.IGNORECASE)
_TTL = re.compile(r"default_time_to_live\s*=\s*(?P<ttl>\d+)", re.IGNORECASE)


class UntranslatableCql(ValueError):
    """A CQL statement the SQLite mirror cannot express."""


def sqlite_type(cql_type: str) -> str:
    t = cql_type.strip().lower()
    if _COLLECTION.match(t):
        return "TEXT"  # JSON
    if t not in TYPES:
        raise UntranslatableCql(f"no SQLite type for CQL type {cql_type!r}")
    return TYPES[t]


def translate(statement: str) -> list[str]:
    """The SQLite statements for one CQL statement."""
    text = " ".join(statement.split())
    if m := _CREATE_TABLE.match(text):
        return _table(m["name"], m["body"], m["with"] or "")
    if m := _CREATE_INDEX.match(text):
        return [f"CREATE INDEX IF NOT EXISTS {m['name']} ON {m['table']} ({m['col']})"]
    if m := _ALTER_ADD.match(text):
        return [f"ALTER TABLE {m['table']} ADD COLUMN {m['col']} {sqlite_type(m['type'])}"]
    raise UntranslatableCql(f"the SQLite mirror cannot apply this CQL statement: {text[:200]}")


def _split_top_level(body: str) -> list[str]:
    """Split a column list on commas outside parentheses and angle brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in body:
        depth += ch in "(<"
        depth -= ch in ")>"
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _table(name: str, body: str, with_clause: str) -> list[str]:
    columns: list[str] = []
    key: list[str] = []
    for item in _split_top_level(body):
        if item.upper().startswith("PRIMARY KEY"):
            key = [k.strip() for k in item[len("PRIMARY KEY") :].strip()[1:-1].replace("(", "").split(",")]
            key = [k.replace(")", "").strip() for k in key if k.strip(" )")]
            continue
        col, cql_type = item.split(None, 1)
        inline_key = cql_type.upper().endswith("PRIMARY KEY")
        if inline_key:
            cql_type = cql_type[: -len("PRIMARY KEY")]
            key = [col]
        columns.append(f"{col} {sqlite_type(cql_type)}")
    if not key:
        raise UntranslatableCql(f"table {name} has no PRIMARY KEY: the SQLite mirror needs one")
    order = {}
    if m := _ORDER.search(with_clause):
        for part in m["order"].split(","):
            col, _, direction = part.strip().partition(" ")
            order[col] = direction.strip().upper()
    keyed = ", ".join(f"{k} DESC" if order.get(k) == "DESC" else k for k in key)
    out_columns = list(columns)
    statements = []
    ttl = _TTL.search(with_clause)
    if ttl:
        out_columns.append("expires_at REAL")
    statements.append(
        f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(out_columns)}, PRIMARY KEY ({keyed})) WITHOUT ROWID"
    )
    if ttl:
        statements.append(f"CREATE INDEX IF NOT EXISTS {name}_expiry ON {name} (expires_at)")
    return statements
