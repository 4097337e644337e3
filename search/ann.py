"""Approximate candidate search with FAISS: IVF-Flat, IVF-PQ or HNSW over the main segment.

The ANN only proposes images (row numbers of the main segment); the engine rescores the
proposed listings exactly, so an approximate answer's scores are exact and only its recall
(which listings were found) can fall short.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import torch

from config.settings import SearchSettings
from search import faiss_device, kernel

log = logging.getLogger(__name__)
ADD_ROWS = 8192  # rows widened to float32 at a time while adding


def configure_threads(threads: int) -> None:
    """Threads for the search kernels (torch) and FAISS, process-wide; 0 leaves the defaults.
    On a machine shared with other busy processes, 1 avoids threads waiting on each other."""
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def nlist_for(rows: int, settings: SearchSettings) -> int:
    """IVF lists: the setting, else about sqrt(rows); never more than the training sample allows."""
    wanted = settings.nlist or max(1, int(math.sqrt(rows)))
    return max(1, min(wanted, rows // settings.train_rows_per_list or 1))


def build(vectors: kernel.Vectors, settings: SearchSettings) -> faiss_device.Placed:
    """An ANN over ``vectors`` (rows, dim), ids = row numbers; on the GPUs when there are any
    (``search/faiss_device.py``), a CPU copy kept for searches past FAISS's GPU limit of k."""
    rows, dim = vectors.shape
    index: faiss.Index = _empty(dim, rows, settings, vectors.dtype == np.float16)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        size = min(rows, nlist_for(rows, settings) * settings.train_rows_per_list)
        sample = rng.choice(rows, size=size, replace=False)
        index.train(kernel.widen(vectors[np.sort(sample)]))
    for start in range(0, rows, ADD_ROWS):
        index.add(kernel.widen(vectors[start : start + ADD_ROWS]))
    _set_search_params(index, settings)
    log.info("ann: %s over %d rows (%s)", settings.ann, rows, type(index).__name__)
    return faiss_device.place(index, f"the {settings.ann} ANN")


def _empty(dim: int, rows: int, settings: SearchSettings, fp16: bool) -> Any:
    ip = faiss.METRIC_INNER_PRODUCT
    sq = faiss.ScalarQuantizer.QT_fp16
    if settings.ann == "hnsw":
        hnsw: Any = (
            faiss.IndexHNSWSQ(dim, sq, settings.hnsw_m, ip)  # type: ignore[arg-type]
            if fp16
            else faiss.IndexHNSWFlat(dim, settings.hnsw_m, ip)
        )
        hnsw.hnsw.efConstruction = settings.ef_construction
        return hnsw
    nlist = nlist_for(rows, settings)
    quantizer = faiss.IndexFlatIP(dim)
    if settings.ann == "ivf_pq":
        if dim % settings.pq_m:
            raise ValueError(f"search pq_m must divide the dimension {dim}, got {settings.pq_m}")
        return faiss.IndexIVFPQ(quantizer, dim, nlist, settings.pq_m, 8, ip)
    if fp16:
        return faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, sq, ip)
    return faiss.IndexIVFFlat(quantizer, dim, nlist, ip)


def _set_search_params(index: Any, settings: SearchSettings) -> None:
    if settings.ann == "hnsw":
        index.hnsw.efSearch = settings.ef_search
    else:
        index.nprobe = settings.nprobe


def propose(
    index: faiss_device.Placed, queries: npt.NDArray[np.float32], candidates: int
) -> npt.NDArray[np.int64]:
    """(queries, candidates) main-segment rows the ANN finds closest; -1 where it has fewer."""
    _, labels = index.search(queries, candidates)
    return np.asarray(labels, dtype=np.int64)
