"""The exact scan against the memory *read* bound, with 1 and 2 threads (part of bench.search).

Read bandwidth is measured the way the scan reads: a streaming sum of the matrix's 64-bit words
(``kernel.read_sum``, the same SIMD path and threads as the scan) over the matrix itself, which
is larger than the caches. Each run times the read, the bare scan (``kernel.score``, one query)
and the engine's one-query search (its default, the full scan, then with FAISS's first pass), one after
the other, so all see the same load on a shared machine; medians are compared. Baselines on
the same data: numpy float32 ``X @ q`` (the matrix widened once, outside the timing) and the
previous kernel (float16 widened a cache-sized block at a time, then torch BLAS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from search import ann, kernel
from search.engine import VectorIndex
from search.scoring import ScoreOptions

BLOCK_BYTES = 4 << 20  # the previous kernel's float32 block


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _ms(seconds: list[float]) -> float:
    return round(float(np.median(seconds)) * 1000, 2)


def widen_blas(vectors: npt.NDArray[np.float16], queries: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The previous kernel: float16 widened into a reused cache-sized block, one BLAS call each."""
    n, dim = vectors.shape
    m = len(queries)
    out = np.empty((n, m), dtype=np.float32)
    rows = max(64, BLOCK_BYTES // (4 * dim) // max(1, m // 16))
    src, qt, out_t = torch.from_numpy(vectors), torch.from_numpy(queries), torch.from_numpy(out)
    buffer = torch.empty((rows, dim), dtype=torch.float32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = buffer[: stop - start]
        block.copy_(src[start:stop])
        if m == 1:
            torch.mv(block, qt[0], out=out_t[start:stop, 0])
        else:
            torch.mm(block, qt.T, out=out_t[start:stop])
    return out


def bench_read_bound(
    index: VectorIndex, qs: npt.NDArray[np.float32], runs: int, threads: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    x = np.asarray(index.main_segment().vectors, dtype=np.float16)
    q1 = np.ascontiguousarray(qs[:1])
    opts = ScoreOptions(k=10)
    settings = index.settings
    faiss_first = settings.model_copy(update={"exact_first_pass": True})
    restore = torch.get_num_threads()
    out: dict[str, Any] = {"isa": kernel.best_isa(), "bytes_scanned": x.nbytes}
    for t in threads:
        ann.configure_threads(t)
        kernel.score(x, q1, t)  # warm
        reads, scans, engine, engine_first, previous = [], [], [], [], []
        for _ in range(runs):
            reads.append(_time(lambda: kernel.read_sum(x, t)))  # noqa: B023
            scans.append(_time(lambda: kernel.score(x, q1, t)))  # noqa: B023
            engine.append(_time(lambda: index.search_many(q1, opts)))
            index.settings = faiss_first
            engine_first.append(_time(lambda: index.search_many(q1, opts)))
            index.settings = settings
            previous.append(_time(lambda: widen_blas(x, q1)))
        bound = float(np.median(reads))
        out[f"threads_{t}"] = {
            "read_bandwidth_gb_s": round(x.nbytes / bound / 1e9, 2),
            "read_bound_ms": round(bound * 1000, 2),
            "scan_one_query_ms": _ms(scans),
            "scan_ratio_to_read_bound": round(float(np.median(scans)) / bound, 2),
            "engine_one_query_ms": _ms(engine),
            "engine_ratio_to_read_bound": round(float(np.median(engine)) / bound, 2),
            "engine_first_pass_ms": _ms(engine_first),
            "engine_first_pass_ratio_to_read_bound": round(float(np.median(engine_first)) / bound, 2),
            "previous_kernel_one_query_ms": _ms(previous),
            "previous_kernel_ratio_to_read_bound": round(float(np.median(previous)) / bound, 2),
        }
    ann.configure_threads(restore)
    return out


def bench_batch(
    x: npt.NDArray[np.float16], qs: npt.NDArray[np.float32], batch: int, runs: int
) -> dict[str, Any]:
    """A batch read in one pass: the kernel against the previous widen + BLAS kernel; and the
    scores laid out by query as the ranking reads them, written so by the kernel
    (``kernel.score_by_query``) against the previous way, (rows, queries) then transposed."""
    q = np.ascontiguousarray(qs[:batch])
    ours, previous, by_query, transposed = [], [], [], []
    for _ in range(runs):
        ours.append(_time(lambda: kernel.score(x, q)))
        previous.append(_time(lambda: widen_blas(x, q)))
        by_query.append(_time(lambda: kernel.score_by_query(x, q)))
        transposed.append(_time(lambda: np.ascontiguousarray(kernel.score(x, q).T)))
    return {
        "scan_ms": _ms(ours),
        "previous_kernel_ms": _ms(previous),
        "speedup_vs_previous": round(float(np.median(previous) / np.median(ours)), 2),
        "by_query_ms": _ms(by_query),
        "transposed_after_ms": _ms(transposed),
        "by_query_speedup": round(float(np.median(transposed) / np.median(by_query)), 2),
    }


def numpy_f32_one_query(x: npt.NDArray[np.float16], q: npt.NDArray[np.float32], runs: int) -> float:
    """Seconds (median) of numpy float32 ``X @ q`` on the same data, widened once beforehand."""
    xf = kernel.widen(x)
    q1 = np.ascontiguousarray(q[0])
    xf @ q1
    return float(np.median([_time(lambda: xf @ q1) for _ in range(runs)]))
