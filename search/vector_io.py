"""Vectors from elsewhere: ``lookalike features import`` and ``lookalike search --vector``.

An import is a ``.npy`` array (rows, dim) and a CSV with columns ``listing_id,image_id``:
row i of the array belongs to row i of the CSV. Vectors are L2-normalised and stored in the
model's dtype; images and listings the store already knows keep their location and name.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from schemas.codec import l2_normalise
from schemas.ids import parse_uuid
from schemas.records import Extracted, ImageRecord, ModelInfo
from store import Store

CHUNK = 1024  # rows written to the store at a time
CHECK_BYTES = 16 << 20  # read at a time while checking every row first
ID_COLUMNS = ("listing_id", "image_id")


@dataclass(frozen=True)
class ImportResult:
    model: ModelInfo
    rows: int
    listings: int


def read_vectors(path: Path, dim: int | None = None, one_row: bool = False) -> npt.NDArray[np.floating]:
    """A (rows, dim) array from a .npy file (memory-mapped), checked; with ``one_row`` a 1-D
    array is one row."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        array: npt.NDArray[np.floating] = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .npy array: {exc}") from None
    if one_row and array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.dtype.kind != "f":
        raise ValueError(f"{path} must hold a 2-D float array (rows, dim), got {array.dtype} {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"vectors in {path} must have {dim} columns (the model's), got {array.shape[1]}")
    return array


def read_ids(path: Path) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(listing_id, image_id) per CSV row; the header must name both columns."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ID_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} needs a header with columns {', '.join(ID_COLUMNS)}; missing {missing}")
        return [
            (
                parse_uuid(row["listing_id"], f"{path} line {n} listing_id"),
                parse_uuid(row["image_id"], f"{path} line {n} image_id"),
            )
            for n, row in enumerate(reader, start=2)
        ]


def import_model(store: Store, name: str, dim: int, dtype: str, source: Path) -> ModelInfo:
    """The model the vectors belong to: the store's, if it has one of this name (dim must
    match), else a new entry recording where the vectors came from."""
    known = store.get_model(name)
    if known is not None:
        if known.dim != dim:
            raise ValueError(f"model {name} in the store has {known.dim} dimensions, the vectors have {dim}")
        return known
    info = ModelInfo(name, "imported", dim, dtype, f"external:{source.name}")
    store.put_model(info)
    return info


def import_features(
    store: Store, vectors_path: Path, ids_path: Path, model_name: str, dtype: str
) -> ImportResult:
    vectors = read_vectors(vectors_path)
    ids = read_ids(ids_path)
    if len(ids) != len(vectors):
        raise ValueError(
            f"{ids_path} has {len(ids)} rows, {vectors_path} has {len(vectors)}: they must match"
        )
    seen = {image for _, image in ids}
    if len(seen) != len(ids):
        raise ValueError(f"{ids_path} repeats image ids: each row must be a different image")
    _check_rows(vectors, vectors_path)
    model = import_model(store, model_name, vectors.shape[1], dtype, vectors_path)
    blocks = _blocks(vectors, vectors_path, CHUNK)
    for (_, chunk), (_, block) in zip(_chunks(ids), blocks, strict=True):
        store.write_extracted(_extracted(store, model, vectors_path, chunk, block), model.dtype)
    return ImportResult(model, len(ids), len({listing for listing, _ in ids}))


def _blocks(
    vectors: npt.NDArray[np.floating], path: Path, rows: int
) -> Iterator[tuple[int, npt.NDArray[np.floating]]]:
    """(first row, block of ``rows`` rows) read from the file with plain reads: pages touched
    through the memory map would stay resident (and count) until it is closed, so an import
    would hold the whole file. A map that is not a plain C-order array is sliced instead."""
    offset = getattr(vectors, "offset", None)
    if not isinstance(vectors, np.memmap) or offset is None or not vectors.flags.c_contiguous:
        for start in range(0, len(vectors), rows):
            yield start, np.asarray(vectors[start : start + rows])
        return
    dim = vectors.shape[1]
    with path.open("rb") as f:
        f.seek(offset)
        for start in range(0, len(vectors), rows):
            n = min(rows, len(vectors) - start)
            block = np.fromfile(f, dtype=vectors.dtype, count=n * dim)
            if block.size != n * dim:
                raise ValueError(f"{path} ended early: row {start + block.size // dim} of {len(vectors)}")
            yield start, block.reshape(n, dim)


def _check_rows(vectors: npt.NDArray[np.floating], path: Path) -> None:
    """Before anything is written: every row finite and not all zero (it could not be normalised)."""
    step = max(1, CHECK_BYTES // max(1, vectors[:1].nbytes))
    for start, raw in _blocks(vectors, path, step):
        block = np.asarray(raw, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1) | ~block.any(axis=1))
        if len(bad):
            raise ValueError(f"row {start + int(bad[0])} of {path} is all zero or not finite")


def _chunks(
    ids: list[tuple[uuid.UUID, uuid.UUID]],
) -> Iterator[tuple[int, list[tuple[uuid.UUID, uuid.UUID]]]]:
    for start in range(0, len(ids), CHUNK):
        yield start, ids[start : start + CHUNK]


def _extracted(
    store: Store,
    model: ModelInfo,
    source: Path,
    ids: list[tuple[uuid.UUID, uuid.UUID]],
    vectors: npt.NDArray[np.floating],
) -> list[Extracted]:
    names = store.listing_names(list({listing for listing, _ in ids}))
    raw = np.asarray(vectors, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(raw).all(axis=1) | ~raw.any(axis=1))
    if len(bad):
        raise ValueError(
            f"{source} has {len(bad)} rows that are all zero or not finite, the first is row {bad[0]}"
        )
    normalised = l2_normalise(raw)
    out = []
    for (listing, image), vector in zip(ids, normalised, strict=True):
        record = store.image_record(image) or ImageRecord(
            listing, image, f"vector-import:{source.name}", "application/octet-stream", 0, 0, 0
        )
        if record.listing_id != listing:
            raise ValueError(
                f"image {image} belongs to listing {record.listing_id} in the store, not {listing}"
            )
        out.append(Extracted(record, names.get(listing, str(listing)), model.name, vector))
    return out


def read_queries(path: Path, dim: int) -> npt.NDArray[np.float32]:
    """Query vectors, one per row, L2-normalised."""
    return l2_normalise(np.asarray(read_vectors(path, dim, one_row=True), dtype=np.float32))
