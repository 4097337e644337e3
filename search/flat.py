"""FAISS's flat index as the first pass of exact search, over memory it shares with the engine.

The main segment's vectors live inside a FAISS flat inner-product index (``IndexScalarQuantizer``
QT_fp16 for float16, ``IndexFlatIP`` for float32): the engine reads them as a numpy array
over the index's own codes, so there is one copy of the matrix. Both FAISS's fused fp16 scan
and the engine's own (``search/kernel.py``) read the matrix once at about memory read speed;
the first pass saves the aggregation over every row (bench-search reports both paths).

FAISS returns the best ``candidates`` images, not every score. The listings they belong to are
rescored exactly by the engine, and the answer is kept only when it is provably the exact one:
every image FAISS left out scored at most ``floor`` (its lowest returned score), so no listing
outside the candidates can score above ``floor + slack`` under ``max`` or ``mean_top_n``
(both at most a listing's best image). If the k-th listing (or ``min_score``) clears that
bound, the answer equals a full scan's; otherwise the engine scans everything.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from search import kernel

NORM_BYTES = 16 << 20  # float32 widened at a time when measuring row norms (no spike at load)
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # Linux; COLLAPSE (6.1+) makes huge pages now
FIRST_PASS_AGGREGATIONS = ("max", "mean_top_n")  # a listing's score is at most its best image's


@dataclass(frozen=True)
class FlatIndex:
    index: Any  # faiss.IndexScalarQuantizer (float16) or faiss.IndexFlatIP (float32)
    max_norm: float  # the largest row norm: bounds FAISS's rounding against the engine's

    def propose(self, query: kernel.F32, candidates: int) -> tuple[npt.NDArray[np.int64], float]:
        """The best ``candidates`` rows for one query and the floor: every row left out scores
        at most that (-inf when every row was returned)."""
        scores, rows = self.index.search(np.ascontiguousarray(query.reshape(1, -1), np.float32), candidates)
        found = rows[0] >= 0
        floor = float(scores[0][found][-1]) if found.all() and self.index.ntotal > candidates else -np.inf
        return rows[0][found].astype(np.int64), floor

    def slack(self, query: kernel.F32) -> float:
        """How far FAISS's float32 sum of a row may be from the engine's. float16 rows widen
        exactly, so each is a float32 sum of dim products with one rounding per term at most:
        FAISS's (any order) is within dim * 2^-24 * |x|.|q| of the true value (Cauchy-Schwarz
        bounds sum |x_i q_i| by |x|.|q|), the engine's (16 lanes of ceil(dim/16) fused
        multiply-adds, then a tree of 4 adds) within (ceil(dim/16) + 4) * 2^-24 * |x|.|q|.
        The slack is their sum, doubled for safety (second-order terms, the norm's rounding)."""
        dim = query.shape[-1]
        terms = dim + -(-dim // kernel.LANES) + 4
        return float(2.0 * terms * 2.0**-24 * float(np.linalg.norm(query)) * self.max_norm)


def allocate(rows: int, dim: int, dtype: np.dtype[Any]) -> tuple[Any, kernel.Vectors]:
    """A FAISS flat index sized for ``rows`` vectors (None when there are none) and the
    (rows, dim) array over its storage; fill the array, then :func:`seal` the index. The array
    keeps the index alive."""
    if dtype == np.float16:
        fp16 = faiss.ScalarQuantizer.QT_fp16
        index: Any = faiss.IndexScalarQuantizer(dim, fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(dim)
    nbytes = rows * dim * np.dtype(dtype).itemsize
    if index.code_size != dim * np.dtype(dtype).itemsize:
        raise RuntimeError(f"unexpected FAISS code size {index.code_size} for {dim} x {dtype}")
    if rows == 0:
        return None, np.empty((0, dim), dtype=dtype)
    index.codes.resize(nbytes)
    raw = (ctypes.c_uint8 * nbytes).from_address(int(index.codes.data()))
    raw.owner = index  # type: ignore[attr-defined]  # numpy views of raw keep the index alive
    vectors: kernel.Vectors = np.frombuffer(memoryview(raw), dtype=dtype).reshape(rows, dim)
    _huge_pages(vectors)
    return index, vectors


def _huge_pages(array: npt.NDArray[Any]) -> None:
    """Back the matrix with huge pages, as numpy does for its own large arrays: fewer TLB misses
    make a full scan 5-10% faster here. Best effort: elsewhere, or refused, nothing changes."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-array.ctypes.data // HUGE_PAGE) * HUGE_PAGE
    length = (array.ctypes.data + array.nbytes - start) // HUGE_PAGE * HUGE_PAGE
    if length > 0:
        for advice in (MADV_HUGEPAGE, MADV_COLLAPSE):
            madvise(start, length, advice)


def seal(index: Any, vectors: kernel.Vectors) -> FlatIndex | None:
    """The index from :func:`allocate`, searchable over the filled array."""
    if index is None:
        return None
    index.ntotal = len(vectors)
    index.codes.resize(vectors.nbytes)  # fewer rows than allocated: shrinks in place, never moves
    step = max(1, NORM_BYTES // max(1, 4 * vectors.shape[1]))
    norms = [
        float(np.linalg.norm(kernel.widen(vectors[s : s + step]), axis=1).max())
        for s in range(0, len(vectors), step)
    ]
    return FlatIndex(index, max(norms, default=0.0))
