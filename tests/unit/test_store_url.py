"""Store URLs: the backend, and clear errors for what is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import StoreError, open_store
from store.sqlite import SQLiteStore


def test_sqlite_url_with_lock_timeout(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}?timeout=0.5")
    assert isinstance(store, SQLiteStore) and store.timeout_s == 0.5 and store.path == tmp_path / "a.db"
    store.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///x.db?colour=red", "only timeout is known"),
        ("sqlite:///x.db?timeout=soon", "timeout must be a number"),
        ("sqlite://x.db", "looks like sqlite:///path"),
        ("postgres://db/lookalike", "must start with sqlite:/// or cassandra://"),
        ("lookalike.db", "must start with sqlite:/// or cassandra://"),
    ],
)
def test_bad_urls_say_what_was_expected(url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says):
        open_store(url)
