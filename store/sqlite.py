"""SQLite backend (embedded default): one WAL-mode file, the same keys as the CQL schema.

UUIDs are 16-byte blobs, so a shard of the features scan is a primary-key range of
listing ids, like a Cassandra token range.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas import codec
from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel
from store.analytics_sqlite import SQLiteAnalytics
from store.base import (
    QUERY_TTL_SECONDS,
    ResultRow,
    StoreError,
    StoreUnavailable,
    check_table,
    f32,
    matches_json,
    parse_matches,
)
from store.migrations import Migration, load_migrations
from store.sqlite_schema import translate

VERSIONS_DDL = "CREATE TABLE IF NOT EXISTS schema_versions (version TEXT PRIMARY KEY, applied_at TEXT)"
UNAVAILABLE = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
_KEY_SPACE = 1 << 32
_IMAGE_COLUMNS = "i.listing_id, i.image_id, uri, content_type, width, height, size_bytes, ingested_at"


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """SQLite's errors as the store's: busy, locked, I/O and cannot-open are StoreUnavailable
    (retry later; the API answers 503), everything else StoreError."""
    try:
        yield
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in UNAVAILABLE:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        raise StoreError(f"SQLite: {exc}") from exc


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _shard_bounds(shard: int, shards: int) -> tuple[bytes, bytes | None]:
    """Listing-id range [lo, hi) of one shard, split on the first four bytes."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    lo = (shard * _KEY_SPACE // shards).to_bytes(4, "big") + bytes(12)
    if shard == shards - 1:
        return lo, None
    return lo, ((shard + 1) * _KEY_SPACE // shards).to_bytes(4, "big") + bytes(12)


class SQLiteStore(SQLiteAnalytics):
    """The embedded store. Thread-safe: one connection guarded by a lock."""

    def __init__(self, url: str) -> None:
        """``sqlite:///path/lookalike.db[?timeout=SECONDS]``: how long a write waits for a lock
        held elsewhere before it fails (and the caller retries); 60 s by default."""
        parts = urllib.parse.urlsplit(url)
        path = url.split("?", 1)[0].removeprefix("sqlite:///")
        if parts.scheme != "sqlite" or not path or not url.startswith("sqlite:///"):
            raise StoreError(f"a SQLite store URL looks like sqlite:///path/lookalike.db, got {url!r}")
        query = urllib.parse.parse_qs(parts.query)
        unknown = set(query) - {"timeout"}
        if unknown:
            raise StoreError(f"unknown SQLite URL option(s) {sorted(unknown)}: only timeout is known")
        try:
            self.timeout_s = float(query.get("timeout", ["60"])[0])
        except ValueError:
            raise StoreError(f"timeout must be a number of seconds, got {query['timeout'][0]!r}") from None
        self.url = url
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with _mapped():
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=self.timeout_s)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The shared connection in one transaction (committed on exit), errors mapped."""
        with _mapped(), self._lock, self._db:
            yield self._db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with _mapped(), self._lock:
            yield self._db

    # -- schema ---------------------------------------------------------------------------
    def apply_schema(self, migrations: Sequence[Migration] | None = None) -> list[str]:
        """Apply the numbered CQL files not applied yet (``schemas/cql`` unless given), each
        translated for SQLite and applied in one transaction with its version row: a failed
        migration leaves nothing half-applied. Processes that open one file at once (``extract
        --workers 2``) take turns: each migration starts with the write lock (``BEGIN
        IMMEDIATE``) and is skipped if another process recorded it meanwhile; what is already
        applied is skipped without taking the lock."""
        applied = []
        with self._write() as db:
            db.execute(VERSIONS_DDL)
            done = {row[0] for row in db.execute("SELECT version FROM schema_versions")}
        for migration in load_migrations() if migrations is None else migrations:
            if migration.version in done:  # the usual case: no write lock taken
                continue
            statements = [sql for cql in migration.statements for sql in translate(cql)]
            with self._write() as db:
                db.execute("BEGIN IMMEDIATE")
                if db.execute(
                    "SELECT 1 FROM schema_versions WHERE version = ?", (migration.version,)
                ).fetchone():
                    continue
                for sql in statements:
                    db.execute(sql)
                db.execute("INSERT INTO schema_versions VALUES (?, ?)", (migration.version, _now()))
            applied.append(migration.version)
        return applied

    def applied_versions(self) -> list[tuple[str, str]]:
        with self._read() as db:
            return list(db.execute("SELECT version, applied_at FROM schema_versions ORDER BY 1"))

    # -- models ---------------------------------------------------------------------------
    def put_model(self, info: ModelInfo) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                (info.name, info.version, info.dim, info.dtype, info.weights, _now()),
            )

    def get_model(self, name: str) -> ModelInfo | None:
        with self._read() as db:
            row = db.execute(
                "SELECT name, version, dim, dtype, weights FROM models WHERE name = ?", (name,)
            ).fetchone()
        return ModelInfo(*row) if row else None

    # -- writes from the extract worker ---------------------------------------------------
    def models(self) -> list[ModelInfo]:
        with self._read() as db:
            sql = "SELECT name, version, dim, dtype, weights FROM models ORDER BY name"
            rows = db.execute(sql).fetchall()
        return [ModelInfo(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]

    def write_extracted(self, batch: Sequence[Extracted], dtype: str) -> None:
        now = _now()
        features = [
            (
                e.image.listing_id.bytes,
                e.model,
                e.image.image_id.bytes,
                codec.encode(e.vector, dtype),
                now,
            )
            for e in batch
        ]
        images = [
            (
                i.listing_id.bytes,
                i.image_id.bytes,
                i.uri,
                i.content_type,
                i.width,
                i.height,
                i.size_bytes,
                i.ingested_at.isoformat(),
            )
            for i in (e.image for e in batch)
        ]
        by_id = [(e.image.image_id.bytes, e.image.listing_id.bytes) for e in batch]
        listings = {e.image.listing_id.bytes: (e.listing_name, now) for e in batch}
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", features)
            db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", images)
            db.executemany("INSERT OR REPLACE INTO images_by_id VALUES (?, ?)", by_id)
            db.executemany(
                "INSERT OR REPLACE INTO listings VALUES (?, ?, ?)",
                [(k, name, t) for k, (name, t) in listings.items()],
            )

    def delete_images(self, listing_id: uuid.UUID, image_ids: Sequence[uuid.UUID]) -> None:
        keys = [(listing_id.bytes, i.bytes) for i in image_ids]
        with self._write() as db:
            db.executemany("DELETE FROM features WHERE listing_id = ? AND image_id = ?", keys)
            db.executemany("DELETE FROM images WHERE listing_id = ? AND image_id = ?", keys)
            by_id = [(i, lid) for lid, i in keys]
            db.executemany("DELETE FROM images_by_id WHERE image_id = ? AND listing_id = ?", by_id)

    def delete_listing(self, listing_id: uuid.UUID) -> None:
        key = (listing_id.bytes,)
        with self._write() as db:
            db.execute("DELETE FROM features WHERE listing_id = ?", key)
            db.execute(  # images_by_id is keyed by image: find them through images
                "DELETE FROM images_by_id WHERE image_id IN"
                " (SELECT image_id FROM images WHERE listing_id = ?)",
                key,
            )
            for table in ("images", "listings", "stock_level"):
                db.execute(f"DELETE FROM {table} WHERE listing_id = ?", key)

    def existing_images(self, image_ids: Sequence[uuid.UUID], model: str) -> set[uuid.UUID]:
        found: set[uuid.UUID] = set()
        with self._read() as db:
            for chunk in _chunks([i.bytes for i in image_ids], 500):
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT f.image_id FROM images_by_id b JOIN features f"
                    " ON f.listing_id = b.listing_id AND f.image_id = b.image_id"
                    f" WHERE f.model = ? AND b.image_id IN ({marks})",
                    (model, *chunk),
                )
                found.update(uuid.UUID(bytes=r[0]) for r in rows)
        return found

    # -- reads for search -----------------------------------------------------------------
    def scan_features(
        self, model: ModelInfo, shard: int = 0, shards: int = 1, batch_size: int = 4096
    ) -> Iterator[FeatureBatch]:
        lo, hi = _shard_bounds(shard, shards)
        sql = "SELECT listing_id, image_id, feature_vector FROM features WHERE model = ? AND listing_id >= ?"
        args: tuple[object, ...] = (model.name, lo)
        if hi is not None:
            sql, args = sql + " AND listing_id < ?", (*args, hi)
        # A private connection: a long scan must not hold the shared lock between pages.
        with _mapped(), contextlib.closing(sqlite3.connect(self.path, timeout=self.timeout_s)) as db:
            cursor = db.execute(sql + " ORDER BY listing_id, image_id", args)
            while rows := cursor.fetchmany(batch_size):
                yield _feature_batch(rows, model)

    def count_features(self, model: ModelInfo) -> int:
        with self._read() as db:
            row = db.execute("SELECT count(*) FROM features WHERE model = ?", (model.name,)).fetchone()
        return int(row[0])

    def listing_features(self, listing_id: uuid.UUID, model: ModelInfo) -> FeatureBatch:
        with self._read() as db:
            rows = db.execute(
                "SELECT listing_id, image_id, feature_vector FROM features"
                " WHERE listing_id = ? AND model = ? ORDER BY image_id",
                (listing_id.bytes, model.name),
            ).fetchall()
        return _feature_batch(rows, model)

    def listings_features(self, listing_ids: Sequence[uuid.UUID], model: ModelInfo) -> FeatureBatch:
        """One query: a primary-key seek per listing (``listing_id`` leads the key). Only past
        SQLite's limit on bound values is it split, into as few queries as that allows."""
        keys = sorted({i.bytes for i in listing_ids})
        rows: list[tuple[bytes, bytes, bytes]] = []
        with self._read() as db:
            size = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1  # one is the model
            for chunk in _chunks(keys, size):
                marks = ",".join("?" * len(chunk))
                rows.extend(
                    db.execute(
                        "SELECT listing_id, image_id, feature_vector FROM features"
                        f" WHERE listing_id IN ({marks}) AND model = ? ORDER BY listing_id, image_id",
                        (*chunk, model.name),
                    )
                )
        return _feature_batch(rows, model)

    def image_listing(self, image_id: uuid.UUID) -> uuid.UUID | None:
        with self._read() as db:
            row = db.execute(
                "SELECT listing_id FROM images_by_id WHERE image_id = ?", (image_id.bytes,)
            ).fetchone()
        return uuid.UUID(bytes=row[0]) if row else None

    def image_record(self, image_id: uuid.UUID) -> ImageRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images_by_id b JOIN images i"
                " ON i.listing_id = b.listing_id AND i.image_id = b.image_id WHERE b.image_id = ?",
                (image_id.bytes,),
            ).fetchone()
        return _image(row) if row else None

    def listing_images(self, listing_id: uuid.UUID) -> list[ImageRecord]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE listing_id = ? ORDER BY image_id",
                (listing_id.bytes,),
            ).fetchall()
        return [_image(r) for r in rows]

    def scan_images(self, batch_size: int = 1000) -> Iterator[list[ImageRecord]]:
        """Keyset pages over (listing_id, image_id): the shared lock is held one page at a time."""
        after = (b"", b"")
        while True:
            with self._read() as db:
                rows = db.execute(
                    f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE (listing_id, image_id) > (?, ?)"
                    " ORDER BY listing_id, image_id LIMIT ?",
                    (*after, batch_size),
                ).fetchall()
            if not rows:
                return
            after = (rows[-1][0], rows[-1][1])
            yield [_image(r) for r in rows]

    def listing_names(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, str]:
        return {
            uuid.UUID(bytes=k): v
            for k, v in self._select_in("SELECT listing_id, name FROM listings", listing_ids)
        }

    def listings_page(self, limit: int, after: uuid.UUID | None = None) -> list[tuple[uuid.UUID, str]]:
        """One primary-key range of ``listings``: keyset paging by id bytes."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._read() as db:
            rows = db.execute(
                "SELECT listing_id, name FROM listings WHERE listing_id > ? ORDER BY listing_id LIMIT ?",
                (b"" if after is None else after.bytes, limit),
            ).fetchall()
        return [(uuid.UUID(bytes=lid), name or "") for lid, name in rows]

    def listings_images(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, list[ImageRecord]]:
        found: dict[uuid.UUID, list[ImageRecord]] = {}
        select = f"SELECT {_IMAGE_COLUMNS} FROM images i"
        for row in sorted(
            self._select_in(select, list(dict.fromkeys(listing_ids))), key=lambda r: (r[0], r[1])
        ):
            image = _image(row)
            found.setdefault(image.listing_id, []).append(image)
        return found

    # -- stock ----------------------------------------------------------------------------
    def put_stock(self, levels: Sequence[StockLevel]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO stock_level VALUES (?, ?, ?)",
                [(s.listing_id.bytes, s.inventory, s.etag.bytes) for s in levels],
            )

    def get_stock(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, StockLevel]:
        rows = self._select_in("SELECT listing_id, inventory, etag FROM stock_level", listing_ids)
        return {uuid.UUID(bytes=r[0]): _stock(r) for r in rows}

    def all_stock(self) -> list[StockLevel]:
        with self._read() as db:
            rows = db.execute("SELECT listing_id, inventory, etag FROM stock_level").fetchall()
        return [_stock(r) for r in rows]

    # -- query results --------------------------------------------------------------------
    def write_query_results(
        self, query_id: uuid.UUID, rows: Sequence[ResultRow], ttl: int = QUERY_TTL_SECONDS
    ) -> None:
        self.write_many_query_results([(query_id, rows)], ttl)

    def write_many_query_results(
        self, answers: Sequence[tuple[uuid.UUID, Sequence[ResultRow]]], ttl: int = QUERY_TTL_SECONDS
    ) -> None:
        now, expires = _now(), time.time() + ttl
        values = [
            (
                query_id.bytes,
                f32(r.score),
                r.listing_id.bytes,
                r.listing_name,
                r.inventory,
                matches_json(r.matches),
                now,
                expires,
            )
            for query_id, rows in answers
            for r in rows
        ]
        with self._write() as db:
            db.execute("DELETE FROM query_results WHERE expires_at < ?", (time.time(),))
            db.executemany("INSERT OR REPLACE INTO query_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)

    def read_query_results(self, query_id: uuid.UUID, k: int | None = None) -> list[ResultRow]:
        sql = (
            "SELECT score, listing_id, listing_name, inventory, matches FROM query_results"
            " WHERE query_id = ? AND expires_at >= ? ORDER BY score DESC, listing_id"
        )
        args: tuple[object, ...] = (query_id.bytes, time.time())
        if k is not None:
            sql, args = sql + " LIMIT ?", (*args, k)
        with self._read() as db:
            rows = db.execute(sql, args).fetchall()
        return [
            ResultRow(
                score,
                uuid.UUID(bytes=lid),
                name,
                inventory,
                parse_matches(matches),
            )
            for score, lid, name, inventory, matches in rows
        ]

    # -- misc -----------------------------------------------------------------------------
    def count(self, table: str) -> int:
        check_table(table)
        with self._read() as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select_in(self, select: str, ids: Sequence[uuid.UUID]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        with self._read() as db:
            for chunk in _chunks([i.bytes for i in ids], 500):
                marks = ",".join("?" * len(chunk))
                out.extend(db.execute(f"{select} WHERE listing_id IN ({marks})", chunk))
        return out


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _feature_batch(rows: Sequence[tuple[bytes, bytes, bytes]], model: ModelInfo) -> FeatureBatch:
    if not rows:
        return FeatureBatch.empty(model.dim)
    return FeatureBatch(
        np.array([r[0] for r in rows], dtype="S16"),
        np.array([r[1] for r in rows], dtype="S16"),
        codec.decode_many([r[2] for r in rows], model.dtype, model.dim),
    )


def _stock(row: tuple[Any, ...]) -> StockLevel:
    lid, inventory, etag = row
    return StockLevel(uuid.UUID(bytes=lid), int(inventory), uuid.UUID(bytes=etag))


def _image(row: tuple[Any, ...]) -> ImageRecord:
    lid, iid, uri, content_type, width, height, size, at = row
    return ImageRecord(
        uuid.UUID(bytes=lid),
        uuid.UUID(bytes=iid),
        uri,
        content_type,
        width,
        height,
        size,
        datetime.fromisoformat(at),
    )
