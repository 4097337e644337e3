"""Index snapshots: the main segment written once to files that several serving processes map.

With ``LOOKALIKE_API_PROCESSES`` > 1 the loader scans the store once, straight into a snapshot
(:func:`write_snapshot`): the vectors in (listing, image) order as a ``.npy`` file, filled
through a writable memory map (no second copy in memory), beside the ids and sort keys. Each
serving process then maps it read-only (:func:`open_snapshot`), so the page cache holds one
copy of the vectors whatever the number of processes. Rows stored while the scan ran are kept
beside it (``late_*``) for each process's fresh tier.

A snapshot is a folder ``<data_dir>/<store>/snapshots/<model>-<generation>/`` (``<store>``:
the store URL's last part and a hash of it; ``<generation>``: when its scan began, in ms since
the epoch, which each process's follower reads changes from). It is written under a temporary
name and renamed when complete; older generations of the model are deleted then (a process
still mapping one keeps its pages until it exits)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch, ModelInfo
from search.segment import Segment
from store import Store

log = logging.getLogger(__name__)
SCAN_BATCH = 1024
META = "meta.json"


@dataclass(frozen=True)
class Snapshot:
    """A snapshot opened read-only: the main segment over its maps, and the late rows."""

    path: Path
    generation: int  # when the scan began, ms since the epoch
    main: Segment
    late: FeatureBatch


def snapshots_folder(data_dir: Path, store_url: str) -> Path:
    """Where one store's snapshots live: ``<data_dir>/<store>/snapshots``."""
    parts = urllib.parse.urlsplit(store_url)
    name = PurePosixPath(parts.path).name or parts.hostname or parts.scheme or "store"
    digest = hashlib.sha256(store_url.encode()).hexdigest()[:8]  # the URL may hold a password
    return data_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}" / "snapshots"


def write_snapshot(store: Store, model: ModelInfo, dtype: str, folder: Path) -> Path:
    """Every stored vector of ``model`` as a new snapshot generation in ``folder``; returns
    its path. Older generations of the model are deleted once it is complete."""
    generation = int(time.time() * 1000)
    final = folder / f"{model.name}-{generation}"
    work = folder / f".{model.name}-{generation}.tmp"
    work.mkdir(parents=True)
    try:
        rows = store.count_features(model)
        vectors = _writable_map(work / "vectors.npy", numpy_dtype(dtype), rows, model.dim)
        batches = store.scan_features(model, batch_size=SCAN_BATCH)
        main, late = Segment.stream(batches, rows, vectors.dtype, model.dim, out=vectors)
        if isinstance(vectors, np.memmap):
            vectors.flush()
        del vectors
        late_rows = FeatureBatch.concat(late, model.dim)
        for name, array in _arrays(main, late_rows).items():
            np.save(work / f"{name}.npy", array)
        meta = {
            "model": model.name,
            "dim": model.dim,
            "dtype": dtype,
            "rows": len(main),
            "generation": generation,
        }
        (work / META).write_text(json.dumps(meta))
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _drop_older(folder, model.name, generation)
    log.info("snapshot: %d vectors of %s (+%d late) in %s", len(main), model.name, len(late_rows), final)
    return final


def _writable_map(path: Path, dtype: np.dtype[Any], rows: int, dim: int) -> Any:
    if rows == 0:  # nothing to map: an empty file cannot be
        np.save(path, np.empty((0, dim), dtype))
        return np.empty((0, dim), dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))


def _arrays(main: Segment, late: FeatureBatch) -> dict[str, np.ndarray[Any, Any]]:
    return {
        "listing_ids": main.listing_ids,
        "image_ids": main.image_ids,
        "keys": main.keys,
        "late_listing_ids": late.listing_ids,
        "late_image_ids": late.image_ids,
        "late_vectors": late.vectors,
    }


def _drop_older(folder: Path, model: str, generation: int) -> None:
    for path in folder.glob(f"{model}-*"):
        stamp = path.name.removeprefix(f"{model}-")
        if stamp.isdigit() and int(stamp) < generation:
            shutil.rmtree(path, ignore_errors=True)


def open_snapshot(path: Path, model: ModelInfo, dtype: str) -> Snapshot:
    """A snapshot mapped read-only; ValueError when it is not ``model``'s in ``dtype``."""
    meta = json.loads((path / META).read_text())
    if (meta["model"], meta["dim"], meta["dtype"]) != (model.name, model.dim, dtype):
        raise ValueError(
            f"snapshot {path} holds {meta['model']} ({meta['dim']}-d {meta['dtype']}), "
            f"not {model.name} ({model.dim}-d {dtype})"
        )
    rows = int(meta["rows"])

    def mapped(name: str) -> np.ndarray[Any, Any]:
        if rows == 0:  # an empty file cannot be mapped
            loaded: np.ndarray[Any, Any] = np.load(path / f"{name}.npy")
            return loaded
        return np.asarray(np.load(path / f"{name}.npy", mmap_mode="r"))  # a view of the map, no copy

    main = Segment(mapped("listing_ids"), mapped("image_ids"), mapped("vectors")[:rows], mapped("keys"))
    late = FeatureBatch(
        np.load(path / "late_listing_ids.npy"),
        np.load(path / "late_image_ids.npy"),
        np.load(path / "late_vectors.npy"),
    )
    return Snapshot(path, int(meta["generation"]), main, late)
