"""The catalogues the API benchmark serves: a synthetic one written once into a SQLite store
under ``data/bench/`` (reused while its rows, dimension and model are the same), and the
queries a run sends, sampled from whatever store it serves (synthetic or the demo's).

The synthetic vectors are :class:`bench.compact_data.Catalogue`'s (listings of 4 images around
random centres, L2-normalised float16), written straight into ``features`` in primary-key
order. The store's model row names a real model of that dimension (1280: EfficientNet-Lite0
with its packaged ImageNet weights; 4096: VGG16 fc7, random weights unless they are in the
torch cache), so ``lookalike serve`` loads it and searches by upload run against it too: the
uploaded photo's vector is real, the catalogue's are not.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.compact_data import CHUNK, Catalogue
from extract.model import RANDOM_SEED, SPECS, find_weights, sha256_of
from schemas.codec import l2_normalise
from schemas.records import ModelInfo
from search import kernel
from store import Store, open_store

log = logging.getLogger("bench.api_data")


@dataclass(frozen=True)
class Served:
    """A store to serve, the model whose vectors it holds, and the environment that serves it."""

    url: str
    model: ModelInfo
    env: dict[str, str]
    rows: int
    write_s: float = 0.0  # 0 when the store was reused


def model_for(dim: int) -> tuple[ModelInfo, dict[str, str]]:
    """The model of ``dim`` dimensions that ``lookalike serve`` can load (so uploads work), as the
    store records it, and the settings that make the server load that one."""
    spec = next((s for s in SPECS.values() if s.dim == dim), None)
    if spec is None:
        raise SystemExit(f"no model makes {dim}-d vectors (one of {sorted({s.dim for s in SPECS.values()})})")
    found = find_weights(spec, None)
    env = {"LOOKALIKE_MODEL_NAME": spec.name, "LOOKALIKE_MODEL_DEVICE": "cpu"}
    if found is not None and found.path is not None:
        info = ModelInfo(spec.name, found.path.name, dim, "float16", f"sha256:{sha256_of(found.path)}")
        return info, env
    seed = f"random-seed-{RANDOM_SEED}"
    info = ModelInfo(spec.name, seed, dim, "float16", f"random:seed={RANDOM_SEED}")
    return info, env | {"LOOKALIKE_MODEL_ALLOW_RANDOM": "true"}


def synthetic(rows: int, dim: int, directory: Path) -> Served:
    """The synthetic catalogue's store under ``directory``, written unless already there."""
    model, env = model_for(dim)
    directory.mkdir(parents=True, exist_ok=True)
    db, meta = directory / f"api-{rows}x{dim}.db", directory / f"api-{rows}x{dim}.json"
    url = f"sqlite:///{db.resolve()}"
    wanted = {"rows": rows, "dim": dim, "model": model.name, "weights": model.weights}
    if meta.is_file() and db.is_file() and json.loads(meta.read_text()) == wanted:
        return Served(url, model, env, rows)
    for stale in (db, meta, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    started = datetime.now(UTC)
    store = open_store(url)
    store.apply_schema()
    store.put_model(model)
    store.close()
    _write_rows(Catalogue(rows, dim), db, model.name)
    meta.write_text(json.dumps(wanted))
    return Served(url, model, env, rows, (datetime.now(UTC) - started).total_seconds())


def _write_rows(cat: Catalogue, db: Path, model: str) -> None:
    centres = cat.centres()
    clusters = cat.listing_clusters(len(centres))
    now = datetime.now(UTC).isoformat()
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=OFF")
    chunks = -(-cat.rows // CHUNK)
    for c in range(chunks):
        listing_ids, image_ids, vectors = cat.chunk(c, centres, clusters)
        blobs = kernel.narrow(vectors, np.dtype("<f2"))
        with con:
            con.executemany(
                "INSERT INTO features (listing_id, model, image_id, feature_vector, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    (lid.ljust(16, b"\0"), model, iid.ljust(16, b"\0"), blobs[i].tobytes(), now)
                    for i, (lid, iid) in enumerate(zip(listing_ids.tolist(), image_ids.tolist(), strict=True))
                ),
            )
        if c % 50 == 0:
            log.info("catalogue: %d of %d rows written", min(cat.rows, (c + 1) * CHUNK), cat.rows)
    con.close()


@dataclass(frozen=True)
class Queries:
    """What the clients send: stored image ids, and photo-like vectors (a stored vector plus as
    much noise again), each used in turn."""

    image_ids: list[str]
    vectors: npt.NDArray[np.float32]


def sample_queries(store: Store, model: ModelInfo, n: int, seed: int = 0) -> Queries:
    """``n`` image ids and ``n`` query vectors from the first rows the store scans."""
    batch = next(iter(store.scan_features(model, batch_size=max(n, 4096))), None)
    if batch is None or not len(batch):
        raise SystemExit(f"the store holds no {model.name} vectors")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(batch), size=n, replace=len(batch) < n)
    ids = [str(uuid.UUID(bytes=bytes(batch.image_ids[r]).ljust(16, b"\0"))) for r in rows]
    picked = batch.vectors[rows].astype(np.float32)
    noise = rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(model.dim)
    return Queries(ids, l2_normalise(picked + noise))
