"""The numbered CQL files of ``schemas/cql`` as migrations: version, checksum, statements.

Backend-independent and pure, so it is testable without a cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"^(?P<version>[0-9]{3,})_[A-Za-z0-9_]+\.cql$")


@dataclass(frozen=True)
class Migration:
    version: str  # "001": the file's number
    name: str  # "001_tables.cql"
    checksum: str  # sha256 of the file's bytes
    statements: tuple[str, ...]


def split_statements(text: str) -> list[str]:
    """Split CQL on ``;``, dropping ``--``, ``//`` and ``/* */`` comments and blank statements.

    Quoted strings ('...', "...", $$...$$) are kept whole, so a ``;`` or ``--`` inside one
    does not split or truncate a statement.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        two = text[i : i + 2]
        if two in ("--", "//"):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif two == "/*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment in CQL")
            current.append(" ")
            i = end + 2
        elif text[i] in "'\"" or two == "$$":
            quote = "$$" if two == "$$" else text[i]
            end = text.find(quote, i + len(quote))
            while quote != "$$" and end >= 0 and text[end + 1 : end + 2] == quote:
                end = text.find(quote, end + 2)  # a doubled quote is an escaped quote
            if end < 0:
                raise ValueError(f"unterminated {quote} string in CQL")
            current.append(text[i : end + len(quote)])
            i = end + len(quote)
        elif text[i] == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(text[i])
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def cql_directory() -> Path:
    """``schemas/cql`` of the installed package."""
    return Path(str(resources.files("schemas") / "cql"))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All ``NNN_name.cql`` files of a directory, in version order."""
    folder = directory or cql_directory()
    found: dict[str, Migration] = {}
    for path in sorted(folder.glob("*.cql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"CQL file names look like 001_tables.cql, got {path.name!r} in {folder}")
        version = match["version"]
        if version in found:
            raise ValueError(f"two CQL files have version {version}: {found[version].name}, {path.name}")
        data = path.read_bytes()
        found[version] = Migration(
            version,
            path.name,
            hashlib.sha256(data).hexdigest(),
            tuple(split_statements(data.decode("utf-8"))),
        )
    if not found:
        raise ValueError(f"no NNN_name.cql files in {folder}")
    return [found[v] for v in sorted(found, key=int)]
