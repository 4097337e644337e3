"""Loading straight into the final buffer (``Segment.stream``): the same segment as building it
from the whole scan, whatever the scan's order, with rows stored after the count handed back
and rows fewer than counted leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.records import FeatureBatch
from search import kernel, vector_io
from search.segment import Segment

DIM = 24


def batches(rng: np.random.Generator, rows: int, size: int, shuffle: bool) -> list[FeatureBatch]:
    listings = np.frombuffer(rng.bytes(16 * max(1, rows // 3)), dtype="S16")
    listing_rows = np.sort(listings[rng.integers(0, len(listings), size=rows)])
    image_ids = np.frombuffer(rng.bytes(16 * rows), dtype="S16").copy()
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    order = rng.permutation(rows) if shuffle else np.arange(rows)
    return [
        FeatureBatch(
            listing_rows[order[s : s + size]], image_ids[order[s : s + size]], vectors[order[s : s + size]]
        )
        for s in range(0, rows, size)
    ]


def same(a: Segment, b: Segment) -> None:
    assert np.array_equal(a.listing_ids, b.listing_ids)
    assert np.array_equal(a.image_ids, b.image_ids)
    assert np.array_equal(a.keys, b.keys)
    assert a.vectors.dtype == b.vectors.dtype and np.array_equal(a.vectors, b.vectors)
    assert a.flat is not None and a.flat.index.ntotal == len(a)
    assert a.flat.max_norm == pytest.approx(float(np.linalg.norm(b.vectors.astype(np.float64), axis=1).max()))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_equals_build(dtype: type, shuffle: bool) -> None:
    parts = batches(np.random.default_rng(1), 1001, 97, shuffle)
    seen: list[int] = []
    got, late = Segment.stream(iter(parts), 1001, np.dtype(dtype), DIM, seen.append)
    want = Segment.build(list(parts), np.dtype(dtype), DIM, with_flat=True)
    same(got, want)
    assert late == [] and sum(seen) == 1001
    # the FAISS index reads the very memory the engine scans
    q = np.random.default_rng(2).standard_normal((1, DIM)).astype(np.float32)
    scores, rows = got.flat.index.search(q, 5)  # type: ignore[union-attr]
    np.testing.assert_allclose(scores[0], kernel.score(got.vectors, q)[rows[0], 0], rtol=1e-5, atol=1e-6)


def test_rows_past_the_count_come_back_and_fewer_rows_leave_no_gap() -> None:
    parts = batches(np.random.default_rng(3), 300, 64, shuffle=True)
    got, late = Segment.stream(iter(parts), 250, np.dtype(np.float16), DIM)
    assert len(got) == 250 and sum(len(b) for b in late) == 50
    want = Segment.build(list(parts), np.dtype(np.float16), DIM, with_flat=True)
    late_ids = np.concatenate([b.image_ids for b in late])
    same(got, want.take(~np.isin(want.image_ids, late_ids)))
    fewer, none = Segment.stream(iter(parts), 400, np.dtype(np.float16), DIM)
    assert none == []
    same(fewer, want)
    assert fewer.flat is not None and fewer.flat.index.codes.size() == fewer.vectors.nbytes


def test_repeated_image_ids_keep_the_last_row() -> None:
    parts = batches(np.random.default_rng(4), 200, 50, shuffle=True)
    again = FeatureBatch(parts[0].listing_ids[:10], parts[0].image_ids[:10], parts[0].vectors[:10] * 2)
    got, _ = Segment.stream(iter([*parts, again]), 210, np.dtype(np.float32), DIM)
    same(got, Segment.build([*parts, again], np.dtype(np.float32), DIM, with_flat=True))
    assert len(got) == 200


def test_empty_scan_and_wrong_dimension() -> None:
    got, late = Segment.stream(iter([]), 0, np.dtype(np.float16), DIM)
    assert len(got) == 0 and got.flat is None and late == []
    bad = FeatureBatch(np.zeros(1, "S16"), np.ones(1, "S16"), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match=f"must be \\(n, {DIM}\\)"):
        Segment.stream(iter([bad]), 1, np.dtype(np.float16), DIM)


@pytest.mark.parametrize("fortran", [False, True])
def test_import_reads_the_file_in_blocks_as_the_array(tmp_path: Path, fortran: bool) -> None:
    """``features import`` reads its .npy with plain reads, a block at a time (a Fortran-order
    file through the map): the blocks are the array's rows, and a short file is an error."""
    a = np.random.default_rng(6).standard_normal((103, 7)).astype(np.float32)
    np.save(tmp_path / "v.npy", np.asfortranarray(a) if fortran else a)
    mapped = vector_io.read_vectors(tmp_path / "v.npy")
    got = list(vector_io._blocks(mapped, tmp_path / "v.npy", 10))
    assert [s for s, _ in got] == list(range(0, 103, 10))
    assert np.array_equal(np.concatenate([b for _, b in got]), a)
    if not fortran:
        data = (tmp_path / "v.npy").read_bytes()
        (tmp_path / "v.npy").write_bytes(data[:-4])  # one value short
        with pytest.raises(ValueError, match="ended early"):
            list(vector_io._blocks(mapped, tmp_path / "v.npy", 10))
