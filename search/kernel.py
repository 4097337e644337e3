"""The exact scoring kernel: inner products of every stored vector with a batch of queries.

The scan is a small C kernel (``search/_scan.c``, built when the package is installed, loaded
with ctypes, which releases the GIL): float16 rows are converted in registers (F16C/AVX-512)
and multiplied straight away, so the matrix is read once, at the speed memory can be read,
for one query or a batch (rows are taken a tile at a time and every query is applied while the
tile sits in L1). The best path the CPU offers is chosen at run time (AVX-512F, else AVX2 + FMA
+ F16C, else portable C); all give the same bits. A score is one fixed sum (16 lanes of fused
multiply-adds in dimension order, then a fixed tree), so a row's score depends on that row and
the query only: not on the batch, the thread, the path or where the row lies. The engine and
the Spark job both score through ``score``.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import warnings
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

F32 = npt.NDArray[np.float32]
Vectors = npt.NDArray[np.float16] | npt.NDArray[np.float32]
Isa = Literal["generic", "avx2", "avx512"]
ISAS: tuple[Isa, ...] = ("generic", "avx2", "avx512")  # the C kernel's paths, by its numbering
LIBRARY = "_scan"
LANES = 16  # a score is 16 lanes of fused multiply-adds, summed as a fixed tree


@cache
def _lib() -> ctypes.CDLL:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / (LIBRARY + suffix)
        if path.is_file():
            break
    else:
        raise ImportError(
            f"the scan kernel {here / LIBRARY}.*.so is not built: run 'make test' (or "
            "'uv pip install -e .'), which compiles search/_scan.c"
        )
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lk_isa.argtypes, lib.lk_isa.restype = [], ctypes.c_int
    lib.lk_scan.argtypes = [ptr, ctypes.c_int, i64, i64, ptr, i64, ptr, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.lk_scan.restype = ctypes.c_int
    lib.lk_read_sum.argtypes = [ptr, i64, ctypes.c_int, ctypes.c_int]
    lib.lk_read_sum.restype = ctypes.c_uint64
    lib.lk_permute_rows.argtypes = [ptr, ptr, i64, i64]
    lib.lk_permute_rows.restype = ctypes.c_int
    return lib


def best_isa() -> Isa:
    """The fastest path this CPU (and its OS) supports."""
    level: int = _lib().lk_isa()
    return ISAS[level]


def default_threads() -> int:
    """Scan threads when not told: the process-wide setting (``ann.configure_threads``)."""
    return max(1, torch.get_num_threads())


def score(
    vectors: Vectors,
    queries: F32,
    threads: int | None = None,
    isa: Isa | None = None,
    out: F32 | None = None,
) -> F32:
    """(rows, queries) float32 inner products of ``vectors`` (rows, dim; float16 or float32)
    with ``queries`` (queries, dim), reading ``vectors`` once. ``threads`` split the rows (the
    kernel starts fewer when the work is small); ``isa`` forces a path (tests; at most
    :func:`best_isa`). ``out``: a writable (rows, queries) float32 array of any strides to
    write into, e.g. the transpose of a by-query matrix (:func:`score_by_query`) or a slice."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or vectors.ndim != 2 or q.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must be (n, {vectors.shape[1]}), got {q.shape}")
    if vectors.dtype not in (np.float16, np.float32):
        raise ValueError(f"vectors must be float16 or float32, got {vectors.dtype}")
    n, m = vectors.shape[0], q.shape[0]
    out = _output(out, n, m)
    if n == 0 or m == 0:
        return out
    x = np.ascontiguousarray(vectors)  # read-only arrays (memory maps, Arrow buffers) are fine
    level = ISAS.index(isa) if isa is not None else len(ISAS) - 1
    lib = _lib()
    rc = lib.lk_scan(
        x.ctypes.data,
        int(x.dtype == np.float16),
        n,
        x.shape[1],
        q.ctypes.data,
        m,
        out.ctypes.data,
        out.strides[0] // out.itemsize,
        out.strides[1] // out.itemsize,
        threads or default_threads(),
        level,
    )
    if rc != 0:
        raise MemoryError(f"the scan kernel could not allocate {m} padded queries")
    return out


def score_by_query(vectors: Vectors, queries: F32, threads: int | None = None, isa: Isa | None = None) -> F32:
    """:func:`score` laid out (queries, rows): each query's scores contiguous, as the ranking
    reads them (written so by the kernel; transposing a large (rows, queries) matrix afterwards
    costs more than the scan)."""
    out = np.empty((len(queries), len(vectors)), dtype=np.float32)
    score(vectors, queries, threads, isa, out=out.T)
    return out


def _output(out: F32 | None, n: int, m: int) -> F32:
    """``out`` checked as a place for (n, m) scores, or a new (n, m) array."""
    if out is None:
        return np.empty((n, m), dtype=np.float32)
    if out.shape != (n, m) or out.dtype != np.float32 or not out.flags.writeable:
        raise ValueError(f"out must be a writable ({n}, {m}) float32 array, got {out.shape} {out.dtype}")
    if any(s % out.itemsize or s < 0 for s in out.strides):
        raise ValueError(f"out's strides must be whole, non-negative floats, got {out.strides}")
    return out


def read_sum(buffer: npt.NDArray[Any], threads: int = 1, isa: Isa | None = None) -> int:
    """The sum of ``buffer``'s 64-bit words, read as the scan reads (same paths, same threads):
    its time measures read bandwidth."""
    b = np.ascontiguousarray(buffer)
    level = ISAS.index(isa) if isa is not None else len(ISAS) - 1
    return int(_lib().lk_read_sum(b.ctypes.data, b.nbytes, threads, level))


def permute_rows(array: npt.NDArray[Any], order: npt.NDArray[np.int64]) -> None:
    """In place, row i of ``array`` becomes its old row ``order[i]``; ``order`` must be a
    permutation of its rows. No second matrix: one row of scratch."""
    n = len(array)
    perm = np.ascontiguousarray(order, dtype=np.int64)
    if len(perm) != n or not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"need a writable C-contiguous array and {n} row numbers, got {len(perm)}")
    if n and (perm.min() < 0 or perm.max() >= n or not (np.bincount(perm, minlength=n) == 1).all()):
        raise ValueError("order must be a permutation of the rows")
    row_bytes = array[:1].nbytes
    if _lib().lk_permute_rows(array.ctypes.data, perm.ctypes.data, n, row_bytes) != 0:
        raise MemoryError("no memory for the permutation's bookkeeping")


def _tensor(a: Vectors) -> torch.Tensor:
    """A zero-copy tensor over an array; read-only arrays (memory maps, Arrow buffers) are
    fine because the conversions only read them."""
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


def narrow_into(vectors: npt.NDArray[np.floating], out: Vectors) -> None:
    """``vectors`` converted into ``out`` (same shape, float16 or float32) with SIMD, no temporary."""
    if vectors.shape != out.shape:
        raise ValueError(f"cannot write {vectors.shape} into {out.shape}")
    torch.from_numpy(out).copy_(_tensor(np.ascontiguousarray(vectors)))
