"""A synthetic catalogue written straight into a SQLite store, for the compact-tier benchmark.

The same model as :mod:`bench.search_data` (listings of ``per_listing`` images, each listing's
images near one of ``listings // 25`` random centres, L2-normalised float16), generated in
chunks that can be regenerated alone, so millions of rows never sit in memory at once. Rows
go into ``features`` in primary-key order with one ``executemany`` per chunk (append-only
B-tree inserts, no per-row Python objects). While writing, every chunk is scored against the
benchmark's queries, so the exact top listings (``max``) come out of the same pass.

The database and its queries and exact answers are kept under ``data/`` and reused when a
later run asks for the same catalogue.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from schemas.codec import l2_normalise
from schemas.records import ModelInfo
from search import kernel
from store import open_store

log = logging.getLogger("bench.compact_data")
CHUNK = 4096  # rows generated at a time (a multiple of per_listing)
TOP_IMAGES = 64  # best images kept per query while writing: enough to find the top listings
F32 = npt.NDArray[np.float32]
Ids = npt.NDArray[np.bytes_]


@dataclass(frozen=True)
class Catalogue:
    rows: int
    dim: int
    per_listing: int = 4
    seed: int = 0

    @property
    def listings(self) -> int:
        return -(-self.rows // self.per_listing)

    def centres(self) -> F32:
        rng = np.random.default_rng([self.seed, 1])
        clusters = max(1, self.listings // 25)
        return l2_normalise(rng.standard_normal((clusters, self.dim), dtype=np.float32))

    def listing_clusters(self, clusters: int) -> npt.NDArray[np.int64]:
        return np.random.default_rng([self.seed, 2]).integers(0, clusters, size=self.listings)

    def listing_ids(self, first: int, stop: int) -> Ids:
        """Ids of listings [first, stop): spread over the key space in listing order (so rows
        written in listing order are primary-key order), never ending in a NUL byte."""
        n = np.arange(first, stop, dtype=np.uint64)
        key = np.empty((len(n), 2), dtype=">u8")
        key[:, 0] = n * np.uint64((1 << 64) // max(1, self.listings))
        key[:, 1] = (n << np.uint64(8)) | np.uint64(0x5A)
        return key.view("S16").reshape(-1)

    def chunk(self, c: int, centres: F32, clusters: npt.NDArray[np.int64]) -> tuple[Ids, Ids, F32]:
        """Rows [c * CHUNK, ...): listing ids, image ids (sorted within each listing) and
        float16 vectors widened to float32."""
        start, stop = c * CHUNK, min(self.rows, (c + 1) * CHUNK)
        rng = np.random.default_rng([self.seed, 3, c])
        row_listing = np.arange(start, stop) // self.per_listing
        first = int(row_listing[0])
        listing_ids = self.listing_ids(first, int(row_listing[-1]) + 1)[row_listing - first]
        raw = np.frombuffer(rng.bytes(16 * (stop - start)), dtype=np.uint8).reshape(-1, 16).copy()
        raw[:, 15] |= 1
        image_ids = raw.view("S16").reshape(-1)
        image_ids = image_ids[np.lexsort((image_ids, listing_ids))]
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        noise = torch.randn((stop - start, self.dim), generator=gen) / float(np.sqrt(self.dim))
        vectors = torch.from_numpy(centres[clusters[row_listing]]) + noise
        vectors /= torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
        return listing_ids, image_ids, vectors.half().float().numpy()

    def queries(self, n: int, centres: F32, clusters: npt.NDArray[np.int64]) -> F32:
        """Photos like catalogue ones: a stored vector plus as much noise again."""
        rng = np.random.default_rng([self.seed, 4])
        rows = np.sort(rng.choice(self.rows, size=n, replace=False))
        picked = np.stack([self.chunk(int(r) // CHUNK, centres, clusters)[2][int(r) % CHUNK] for r in rows])
        noise = rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(self.dim)
        return l2_normalise(picked + noise)[rng.permutation(n)]


@dataclass(frozen=True)
class Prepared:
    url: str
    model: ModelInfo
    queries: F32
    truth: list[list[bytes]]  # exact top listings (max), best first, per query
    write_s: float  # 0 when reused
    db_bytes: int


def prepare(cat: Catalogue, directory: Path, n_queries: int, k: int = 10) -> Prepared:
    """The catalogue in a SQLite store under ``directory`` (made once), with queries and answers."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"compact-{cat.rows}x{cat.dim}-s{cat.seed}"
    db, meta_path, npz = directory / f"{name}.db", directory / f"{name}.json", directory / f"{name}.npz"
    model = ModelInfo("bench-compact", "1", cat.dim, "float16", "random:bench")
    url = f"sqlite:///{db.resolve()}"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("queries") == n_queries:
        saved = np.load(npz)
        truth = [[bytes(x) for x in row] for row in saved["truth"]]
        meta = json.loads(meta_path.read_text())
        return Prepared(url, model, saved["queries"], truth, 0.0, int(meta["db_bytes"]))
    for stale in (db, meta_path, npz, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    store = open_store(url)
    store.apply_schema()
    store.put_model(model)
    store.close()
    started = time.perf_counter()
    centres = cat.centres()
    clusters = cat.listing_clusters(len(centres))
    queries = cat.queries(n_queries, centres, clusters)
    best_scores = np.full((n_queries, 0), -np.inf, dtype=np.float32)
    best_listings = np.zeros((n_queries, 0), dtype="S16")
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=OFF")
    now = datetime.now(UTC).isoformat()
    chunks = -(-cat.rows // CHUNK)
    for c in range(chunks):
        listing_ids, image_ids, vectors = cat.chunk(c, centres, clusters)
        blobs = kernel.narrow(vectors, np.dtype("<f2"))
        with con:
            con.executemany(
                "INSERT INTO features (listing_id, model, image_id, feature_vector, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    (lid.ljust(16, b"\0"), model.name, iid.ljust(16, b"\0"), blobs[i].tobytes(), now)
                    for i, (lid, iid) in enumerate(zip(listing_ids.tolist(), image_ids.tolist(), strict=True))
                ),
            )
        scores = kernel.score(vectors, queries).T  # (queries, rows)
        both = np.concatenate([best_scores, scores], axis=1)
        keep = np.argsort(-both, axis=1, kind="stable")[:, :TOP_IMAGES]
        best_scores = np.take_along_axis(both, keep, axis=1)
        ids = np.concatenate([best_listings, np.broadcast_to(listing_ids, scores.shape)], axis=1)
        best_listings = np.take_along_axis(ids, keep, axis=1)
        if c % 200 == 0:
            log.info("catalogue: %d of %d rows written", (c + 1) * CHUNK, cat.rows)
    con.close()
    truth = [list(dict.fromkeys(bytes(x).ljust(16, b"\0") for x in row))[:k] for row in best_listings]
    write_s = time.perf_counter() - started
    db_bytes = db.stat().st_size
    np.savez(npz, queries=queries, truth=np.array(truth, dtype="S16"))
    meta_path.write_text(json.dumps({"rows": cat.rows, "queries": n_queries, "db_bytes": db_bytes}))
    return Prepared(url, model, queries, truth, write_s, db_bytes)
