"""The exact scoring kernel: inner products of every stored vector with a batch of queries.

float16 rows are widened to float32 a block at a time into a reused, cache-sized buffer, and
each block is one BLAS matrix product with the whole query batch; the stored matrix is read
from memory once per batch, so one query costs about what reading the matrix costs. float32
rows go to BLAS directly. The engine and the Spark job both score through ``score``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

F32 = npt.NDArray[np.float32]
Vectors = npt.NDArray[np.float16] | npt.NDArray[np.float32]
BLOCK_BYTES = 4 << 20  # float32 block kept in L2/L3 while BLAS reads it


def block_rows(dim: int, queries: int) -> int:
    """Rows per block: the widened block stays cache-sized, larger batches get smaller blocks."""
    return max(64, BLOCK_BYTES // (4 * dim) // max(1, queries // 16))


def score(vectors: Vectors, queries: F32) -> F32:
    """(rows, queries) float32 inner products of ``vectors`` (rows, dim) with ``queries``
    (queries, dim). A row's score depends on that row and the query, up to its last bit: BLAS
    may round a row one ulp differently depending on where it falls in a block."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or vectors.ndim != 2 or q.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must be (n, {vectors.shape[1]}), got {q.shape}")
    n, m = vectors.shape[0], q.shape[0]
    out = np.empty((n, m), dtype=np.float32)
    if n == 0 or m == 0:
        return out
    qt = torch.from_numpy(q)
    out_t = torch.from_numpy(out)
    if vectors.dtype == np.float32:
        torch.mm(_tensor(vectors), qt.T, out=out_t)
        return out
    rows = block_rows(q.shape[1], m)
    src = _tensor(vectors)
    buffer = torch.empty((rows, q.shape[1]), dtype=torch.float32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = buffer[: stop - start]
        block.copy_(src[start:stop])
        if m == 1:
            torch.mv(block, qt[0], out=out_t[start:stop, 0])
        else:
            torch.mm(block, qt.T, out=out_t[start:stop])
    return out


def _tensor(a: Vectors) -> torch.Tensor:
    """A zero-copy tensor over an array; read-only arrays (memory maps, Arrow buffers) are
    fine because the kernel only reads them."""
    arr = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def widen(vectors: Vectors) -> F32:
    """``vectors`` as a new float32 array (float16 widened with SIMD, not numpy's slow cast)."""
    if vectors.dtype == np.float32:
        return np.array(vectors, dtype=np.float32)
    out = np.empty(vectors.shape, dtype=np.float32)
    torch.from_numpy(out).copy_(_tensor(vectors))
    return out


def narrow(vectors: npt.NDArray[np.floating], dtype: np.dtype[Any]) -> Vectors:
    """``vectors`` in ``dtype`` (float16 or float32), converted with SIMD."""
    if vectors.dtype == dtype:
        return vectors
    out: Vectors = np.empty(vectors.shape, dtype=dtype)
    torch.from_numpy(out).copy_(_tensor(np.ascontiguousarray(vectors)))
    return out
