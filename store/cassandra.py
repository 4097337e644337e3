"""Cassandra backend (production): ``cassandra://h1,h2[:port]/keyspace?dc=dc1``.

The tables are ``schemas/cql/*.cql``. CQL lives in the named constants below; each is
prepared once per session (see :mod:`store.cassandra_session`). Writes and multi-key reads
go out concurrently with a bounded number in flight; full scans read token ranges in parallel
(see :mod:`store.cassandra_scan`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from config.cassandra import CassandraSettings
from schemas import codec
from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel, utcnow
from store import cassandra_schema
from store.analytics_cassandra import CassandraAnalytics
from store.base import QUERY_TTL_SECONDS, ResultRow, StoreError, check_table, f32, matches_json, parse_matches
from store.cassandra_scan import TokenRange, ordered_parallel, ring_page, shard_ranges, token_of
from store.cassandra_schema import utc
from store.cassandra_session import CqlSession, Row
from store.cassandra_url import parse_url
from store.migrations import Migration

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 630_720_000  # Cassandra's limit: 20 years

# -- data ---------------------------------------------------------------------------------
INSERT_MODEL = "INSERT INTO models (name, version, dim, dtype, weights, created_at) VALUES (?, ?, ?, ?, ?, ?)"
SELECT_MODEL = "SELECT name, version, dim, dtype, weights FROM models WHERE name = ?"
SELECT_MODELS = "SELECT name, version, dim, dtype, weights FROM models"
SCAN_IMAGES = (
    "SELECT listing_id, image_id, uri, content_type, width, height, size_bytes, ingested_at FROM images"
)
INSERT_FEATURE = (
    "INSERT INTO features (listing_id, model, image_id, feature_vector, created_at) VALUES (?, ?, ?, ?, ?)"
)
INSERT_IMAGE = (
    "INSERT INTO images (listing_id, image_id, uri, content_type, width, height, size_bytes, "
    "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_IMAGE_BY_ID = "INSERT INTO images_by_id (image_id, listing_id) VALUES (?, ?)"
INSERT_LISTING = "INSERT INTO listings (listing_id, name, updated_at) VALUES (?, ?, ?)"
SELECT_FEATURE_KEYS = "SELECT model, image_id FROM features WHERE listing_id = ?"
SELECT_LISTING_IMAGE_IDS = "SELECT image_id FROM images WHERE listing_id = ?"
DELETE_FEATURE = "DELETE FROM features WHERE listing_id = ? AND model = ? AND image_id = ?"
DELETE_IMAGE = "DELETE FROM images WHERE listing_id = ? AND image_id = ?"
DELETE_IMAGE_BY_ID = "DELETE FROM images_by_id WHERE image_id = ?"
DELETE_LISTING_PARTITIONS = tuple(
    f"DELETE FROM {table} WHERE listing_id = ?" for table in ("features", "images", "listings", "stock_level")
)
SELECT_IMAGE_LISTING = "SELECT listing_id FROM images_by_id WHERE image_id = ?"
SELECT_IMAGE = (
    "SELECT listing_id, image_id, uri, content_type, width, height, size_bytes, ingested_at "
    "FROM images WHERE listing_id = ? AND image_id = ?"
)
SELECT_LISTING_IMAGES = (
    "SELECT listing_id, image_id, uri, content_type, width, height, size_bytes, ingested_at "
    "FROM images WHERE listing_id = ?"
)
SELECT_FEATURE_KEY = "SELECT image_id FROM features WHERE listing_id = ? AND model = ? AND image_id = ?"
SELECT_LISTING_FEATURES = (
    "SELECT listing_id, image_id, feature_vector FROM features WHERE listing_id = ? AND model = ?"
)
SCAN_FEATURES = (
    "SELECT listing_id, image_id, feature_vector FROM features "
    "WHERE token(listing_id) > ? AND token(listing_id) <= ? AND model = ? ALLOW FILTERING"
)
SELECT_LISTING_NAME = "SELECT listing_id, name FROM listings WHERE listing_id = ?"
# the catalogue in ring order, from a token on (keyset paging: see cassandra_scan.ring_page)
SELECT_LISTINGS_FROM = (
    "SELECT token(listing_id), listing_id, name FROM listings WHERE token(listing_id) >= ? LIMIT ?"
)
INSERT_STOCK = "INSERT INTO stock_level (listing_id, inventory, etag) VALUES (?, ?, ?)"
SELECT_STOCK = "SELECT listing_id, inventory, etag FROM stock_level WHERE listing_id = ?"
SELECT_ALL_STOCK = "SELECT listing_id, inventory, etag FROM stock_level"
INSERT_RESULT = (
    "INSERT INTO query_results (query_id, score, listing_id, listing_name, inventory, matches, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
)
SELECT_RESULTS = (
    "SELECT score, listing_id, listing_name, inventory, matches FROM query_results WHERE query_id = ?"
)
SELECT_RESULTS_TOP = SELECT_RESULTS + " LIMIT ?"
COUNT_ROWS = "SELECT count(*) FROM {table}"
COUNT_FEATURES = (
    "SELECT count(*) FROM features "
    "WHERE token(listing_id) > ? AND token(listing_id) <= ? AND model = ? ALLOW FILTERING"
)


class CassandraStore(CassandraAnalytics):
    """The production store. Thread-safe; connects in the constructor."""

    def __init__(self, url: str, settings: CassandraSettings | None = None) -> None:
        self.url = url
        self.target = parse_url(url)
        self.settings = settings if settings is not None else CassandraSettings()
        self._cql = CqlSession(self.target, self.settings)

    def __repr__(self) -> str:
        user = self.settings.username or None
        return f"CassandraStore(url={self.url!r}, user={user!r}, tls={self.settings.tls})"

    # -- schema ---------------------------------------------------------------------------
    def apply_schema(self, migrations: Sequence[Migration] | None = None) -> list[str]:
        """Create the keyspace, then apply the CQL files not applied yet (``schemas/cql`` unless
        given), in order, under a cluster-wide lock, so several machines may run it at once.
        Returns the versions applied now."""
        return cassandra_schema.apply_schema(self._cql, migrations)

    def applied_versions(self) -> list[tuple[str, str]]:
        """(version, applied_at ISO 8601) of every applied CQL file, in order."""
        return cassandra_schema.applied_versions(self._cql)

    # -- models ---------------------------------------------------------------------------
    def put_model(self, info: ModelInfo) -> None:
        params = (info.name, info.version, info.dim, info.dtype, info.weights, utcnow())
        self._cql.execute(INSERT_MODEL, params, write=True)

    def get_model(self, name: str) -> ModelInfo | None:
        row = self._cql.execute(SELECT_MODEL, (name,)).one()
        return ModelInfo(row[0], row[1], int(row[2]), row[3], row[4]) if row else None

    def models(self) -> list[ModelInfo]:
        rows = self._cql.rows(SELECT_MODELS)
        return sorted((ModelInfo(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows), key=lambda m: m.name)

    # -- writes from the extract worker ---------------------------------------------------
    def write_extracted(self, batch: Sequence[Extracted], dtype: str) -> None:
        """Images, their id index and listings first, vectors last: a vector that is
        there (what existing_images looks at) means the rest of its image is there too."""
        now = utcnow()
        features = [
            (
                INSERT_FEATURE,
                (e.image.listing_id, e.model, e.image.image_id, codec.encode(e.vector, dtype), now),
            )
            for e in batch
        ]
        rest: list[tuple[str, Sequence[object]]] = []
        for i in (e.image for e in batch):
            rest.append(
                (
                    INSERT_IMAGE,
                    (
                        i.listing_id,
                        i.image_id,
                        i.uri,
                        i.content_type,
                        i.width,
                        i.height,
                        i.size_bytes,
                        i.ingested_at,
                    ),
                )
            )
            rest.append((INSERT_IMAGE_BY_ID, (i.image_id, i.listing_id)))
        names = {e.image.listing_id: e.listing_name for e in batch}
        rest.extend((INSERT_LISTING, (lid, name, now)) for lid, name in names.items())
        self._cql.execute_many(rest, write=True)
        self._cql.execute_many(features, write=True)

    def delete_images(self, listing_id: uuid.UUID, image_ids: Sequence[uuid.UUID]) -> None:
        """Vectors first, the reverse of ``write_extracted``: an image whose vector is still
        there still has its record. The listing's feature keys are read (no vectors) to find
        every model's row, since ``model`` precedes ``image_id`` in the clustering key."""
        gone = set(image_ids)
        keys = [(m, i) for m, i in self._cql.rows(SELECT_FEATURE_KEYS, (listing_id,)) if i in gone]
        self._cql.execute_many([(DELETE_FEATURE, (listing_id, m, i)) for m, i in keys], write=True)
        self._cql.execute_many(
            [
                *((DELETE_IMAGE, (listing_id, i)) for i in gone),
                *((DELETE_IMAGE_BY_ID, (i,)) for i in gone),
            ],
            write=True,
        )

    def delete_listing(self, listing_id: uuid.UUID) -> None:
        """Partition deletes (one tombstone each), after the listing's ``images_by_id`` rows,
        which are found through its images partition."""
        images = [row[0] for row in self._cql.rows(SELECT_LISTING_IMAGE_IDS, (listing_id,))]
        self._cql.execute_many([(DELETE_IMAGE_BY_ID, (i,)) for i in images], write=True)
        self._cql.execute_many([(cql, (listing_id,)) for cql in DELETE_LISTING_PARTITIONS], write=True)

    def existing_images(self, image_ids: Sequence[uuid.UUID], model: str) -> set[uuid.UUID]:
        ids = list(dict.fromkeys(image_ids))
        found = self._cql.execute_many([(SELECT_IMAGE_LISTING, (i,)) for i in ids], write=False)
        keys = [(image, row[0]) for image, rs in zip(ids, found, strict=True) if (row := rs.one())]
        checks = self._cql.execute_many(
            [(SELECT_FEATURE_KEY, (listing, model, image)) for image, listing in keys], write=False
        )
        return {image for (image, _), rs in zip(keys, checks, strict=True) if rs.one() is not None}

    # -- reads for search -----------------------------------------------------------------
    def scan_features(
        self, model: ModelInfo, shard: int = 0, shards: int = 1, batch_size: int = 4096
    ) -> Iterator[FeatureBatch]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        splits = self.settings.scan_splits or max(8, 4 * self._cql.host_count())
        ranges = shard_ranges(shard, shards, max(1, -(-splits // shards)))
        self._cql.prepare(SCAN_FEATURES)  # fail here, not in a reader thread
        self._require_murmur3("scans split")

        def read(token_range: TokenRange) -> Iterator[list[Row]]:
            return self._cql.pages(SCAN_FEATURES, (*token_range, model.name))

        pending: list[Row] = []
        pages = ordered_parallel(ranges, read, self.settings.scan_parallelism)
        try:
            for page in pages:
                pending.extend(page)
                while len(pending) >= batch_size:
                    yield _feature_batch(pending[:batch_size], model)
                    del pending[:batch_size]
        finally:
            pages.close()  # stops the readers when the consumer stops early
        if pending:
            yield _feature_batch(pending, model)

    def count_features(self, model: ModelInfo) -> int:
        """Counted server-side per token range (as the scan splits the ring): no vector moves."""
        splits = self.settings.scan_splits or max(8, 4 * self._cql.host_count())
        timeout = self.settings.ddl_timeout_s
        return sum(
            int(self._cql.execute(COUNT_FEATURES, (*r, model.name), timeout=timeout).one()[0])
            for r in shard_ranges(0, 1, splits)
        )

    def listing_features(self, listing_id: uuid.UUID, model: ModelInfo) -> FeatureBatch:
        rows = self._cql.rows(SELECT_LISTING_FEATURES, (listing_id, model.name))
        return _feature_batch(sorted(rows, key=lambda r: r[1].bytes), model)  # as SQLite

    def listings_features(self, listing_ids: Sequence[uuid.UUID], model: ModelInfo) -> FeatureBatch:
        """One partition slice per listing, read concurrently (at most ``concurrency`` in flight)."""
        ids = sorted(set(listing_ids), key=lambda i: i.bytes)
        reads = [(SELECT_LISTING_FEATURES, (i, model.name)) for i in ids]
        results = self._cql.execute_many(reads, write=False)
        rows = [row for rs in results for row in rs]
        return _feature_batch(sorted(rows, key=lambda r: (r[0].bytes, r[1].bytes)), model)  # as SQLite

    def image_listing(self, image_id: uuid.UUID) -> uuid.UUID | None:
        row = self._cql.execute(SELECT_IMAGE_LISTING, (image_id,)).one()
        return row[0] if row else None

    def image_record(self, image_id: uuid.UUID) -> ImageRecord | None:
        listing_id = self.image_listing(image_id)
        if listing_id is None:
            return None
        row = self._cql.execute(SELECT_IMAGE, (listing_id, image_id)).one()
        if row is None:
            return None
        return _image(row)

    def listing_images(self, listing_id: uuid.UUID) -> list[ImageRecord]:
        return [_image(row) for row in self._cql.execute(SELECT_LISTING_IMAGES, (listing_id,))]

    def scan_images(self, batch_size: int = 1000) -> Iterator[list[ImageRecord]]:
        """A paged full scan of `images` (driver pages, each retried)."""
        pending: list[ImageRecord] = []
        for page in self._cql.pages(SCAN_IMAGES):
            pending.extend(_image(row) for row in page)
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                del pending[:batch_size]
        if pending:
            yield pending

    def listing_names(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, str]:
        ids = list(dict.fromkeys(listing_ids))
        results = self._cql.execute_many([(SELECT_LISTING_NAME, (i,)) for i in ids], write=False)
        return {row[0]: row[1] for rs in results if (row := rs.one())}

    def listings_page(self, limit: int, after: uuid.UUID | None = None) -> list[tuple[uuid.UUID, str]]:
        """Keyset paging on the token ring: one token-range read of ``listings`` (``limit`` + 1
        rows, the cursor's own included), the order Cassandra keeps partitions in."""
        self._require_murmur3("catalogue pages follow")

        def read(token: int, n: int) -> list[Row]:
            return self._cql.rows(SELECT_LISTINGS_FROM, (token, n))

        cursor = None if after is None else (token_of(after.bytes), after.bytes)
        rows = ring_page(read, limit, cursor)
        return [(row[1], row[2] or "") for row in rows]

    def listings_images(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, list[ImageRecord]]:
        """One partition read per listing, concurrently (at most ``concurrency`` in flight)."""
        ids = list(dict.fromkeys(listing_ids))
        results = self._cql.execute_many([(SELECT_LISTING_IMAGES, (i,)) for i in ids], write=False)
        found = {
            lid: sorted((_image(r) for r in rs), key=lambda i: i.image_id.bytes)
            for lid, rs in zip(ids, results, strict=True)
        }
        return {lid: images for lid, images in found.items() if images}

    def _require_murmur3(self, what: str) -> None:
        if not self._cql.partitioner().endswith("Murmur3Partitioner"):
            raise StoreError(f"{what} the Murmur3 token ring; this cluster uses {self._cql.partitioner()!r}")

    # -- stock ----------------------------------------------------------------------------
    def put_stock(self, levels: Sequence[StockLevel]) -> None:
        self._cql.execute_many(
            [(INSERT_STOCK, (s.listing_id, s.inventory, s.etag)) for s in levels], write=True
        )

    def get_stock(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, StockLevel]:
        ids = list(dict.fromkeys(listing_ids))
        results = self._cql.execute_many([(SELECT_STOCK, (i,)) for i in ids], write=False)
        return {row[0]: _stock(row) for rs in results if (row := rs.one())}

    def all_stock(self) -> list[StockLevel]:
        return [_stock(row) for row in self._cql.rows(SELECT_ALL_STOCK)]

    # -- query results --------------------------------------------------------------------
    def write_query_results(
        self, query_id: uuid.UUID, rows: Sequence[ResultRow], ttl: int = QUERY_TTL_SECONDS
    ) -> None:
        self.write_many_query_results([(query_id, rows)], ttl)

    def write_many_query_results(
        self, answers: Sequence[tuple[uuid.UUID, Sequence[ResultRow]]], ttl: int = QUERY_TTL_SECONDS
    ) -> None:
        """Each answer's rows as one single-partition batch (an answer appears whole, in one
        round trip), the answers through the driver's concurrent execution (bounded)."""
        if not 1 <= ttl <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl must be in [1, {MAX_TTL_SECONDS}] seconds, got {ttl}")
        now = utcnow()
        self._cql.write_batches(
            [
                [
                    (
                        INSERT_RESULT,
                        (
                            query_id,
                            f32(r.score),
                            r.listing_id,
                            r.listing_name,
                            r.inventory,
                            matches_json(r.matches),
                            now,
                            ttl,
                        ),
                    )
                    for r in rows
                ]
                for query_id, rows in answers
            ]
        )

    def read_query_results(self, query_id: uuid.UUID, k: int | None = None) -> list[ResultRow]:
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0 or None, got {k}")
        if k == 0:
            return []
        rows = (
            self._cql.rows(SELECT_RESULTS, (query_id,))
            if k is None
            else self._cql.rows(SELECT_RESULTS_TOP, (query_id, k))
        )
        return [
            ResultRow(
                float(score),
                lid,
                name,
                inventory,
                parse_matches(matches),
            )
            for score, lid, name, inventory, matches in rows
        ]

    # -- misc -----------------------------------------------------------------------------
    def count(self, table: str) -> int:
        check_table(table)
        row = self._cql.execute(COUNT_ROWS.format(table=table), timeout=self.settings.ddl_timeout_s).one()
        return int(row[0])

    def close(self) -> None:
        self._cql.shutdown()


def _feature_batch(rows: Sequence[Row], model: ModelInfo) -> FeatureBatch:
    if not rows:
        return FeatureBatch.empty(model.dim)
    return FeatureBatch(
        np.array([r[0].bytes for r in rows], dtype="S16"),
        np.array([r[1].bytes for r in rows], dtype="S16"),
        codec.decode_many([r[2] for r in rows], model.dtype, model.dim),
    )


def _stock(row: Row) -> StockLevel:
    return StockLevel(row[0], int(row[1]), row[2])


def _image(row: Row) -> ImageRecord:
    lid, iid, uri, content_type, width, height, size, at = row
    return ImageRecord(lid, iid, uri, content_type, width, height, size, utc(at))
