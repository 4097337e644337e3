"""The kNN graph, exact on the full vectors.

* ``clusters`` (the default past ``exact_max`` images): the k-means clusters are the blocks of an
  IVF search done with matrix products. The members of a cluster are searched exactly among the
  members of the ``probes`` clusters nearest to it (itself included): one BLAS product per block,
  on the full vectors, so no candidate is lost to a reduction. Cost ~ n * probes * n/k * dim.
* ``exact``: every row against every row, in blocks (n * n * dim: small catalogues).
* ``ivf`` / ``hnsw``: FAISS candidates on the (PCA-reduced) points, rescored on the full vectors
  (kept for comparison: on noisy wide vectors the reduction loses true neighbours, recall@10 0.57).

recall@10 against exact search is measured on a sample of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.pca import sample_rows
from search import faiss_device
from search.scoring import group_starts

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.floating]


@dataclass(frozen=True)
class KnnGraph:
    neighbours: I64  # (n, K) rows, best first; -1 padding; never the row itself
    sims: F32  # (n, K) exact similarities on the full vectors; -inf padding
    method: str


def candidate_index(
    points: F32, method: str, exact_max: int, nprobe: int, seed: int, max_k: int | None = None
) -> tuple[faiss_device.Placed, str]:
    """FAISS's candidates over ``points``, built on the CPU and then on the GPUs when there are
    any (``search/faiss_device.py``); ``max_k``: the most a search asks for, if known."""
    n, dim = points.shape
    if method == "auto":
        method = "exact" if n <= exact_max else "ivf"
    if method == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    elif method == "ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train = points[sample_rows(n, min(n, 64 * nlist), seed)]
        index.cp.seed = seed
        index.train(train)
        index.nprobe = min(nlist, nprobe)
    else:
        raise ValueError(f"kNN method must be auto, exact, ivf or hnsw, got {method!r}")
    index.add(points)
    return faiss_device.place(index, f"the kNN candidates ({method})", max_k), method


def rescore(vectors: Vectors, rows: I64, candidates: I64, chunk: int = 256) -> tuple[I64, F32]:
    """Exact similarities of each row to its candidates (self and -1 dropped), best first."""
    n, c = candidates.shape
    sims = np.full((n, c), -np.inf, dtype=np.float32)
    for s in range(0, n, chunk):
        cand = candidates[s : s + chunk]
        q = np.asarray(vectors[rows[s : s + chunk]], dtype=np.float32)
        safe = np.where(cand >= 0, cand, 0)
        got = np.asarray(vectors[safe.ravel()], dtype=np.float32).reshape(len(cand), c, -1)
        block = np.einsum("qd,qcd->qc", q, got)
        block[(cand < 0) | (cand == rows[s : s + chunk, None])] = -np.inf
        sims[s : s + chunk] = block
    order = np.argsort(-sims, axis=1, kind="stable")
    out_ids = np.take_along_axis(candidates, order, axis=1)
    out_sims = np.take_along_axis(sims, order, axis=1)
    out_ids[~np.isfinite(out_sims)] = -1
    return out_ids, out_sims


def exact_search(vectors: Vectors, queries: I64, k: int, chunk: int = 8192) -> tuple[I64, F32]:
    """Brute-force top k (self excluded) of some rows over all rows, on the full vectors."""
    q = np.asarray(vectors[queries], dtype=np.float32)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for s in range(0, len(vectors), chunk):
        block = q @ np.asarray(vectors[s : s + chunk], dtype=np.float32).T
        ids = np.arange(s, s + block.shape[1], dtype=np.int64)
        block[queries[:, None] == ids[None, :]] = -np.inf
        all_s = np.concatenate([best_s, block], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, block.shape)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, axis=1), np.take_along_axis(all_i, top, axis=1)
    return best_i, best_s


def build_graph(
    vectors: Vectors,
    points: F32,
    k: int,
    method: str = "auto",
    exact_max: int = 20_000,
    nprobe: int = 16,
    seed: int = 0,
    *,
    labels: npt.NDArray[np.int32] | None = None,
    centroids: F32 | None = None,
    probes: int = 8,
    cache_mb: int = 2048,
) -> KnnGraph:
    """k nearest neighbours of every row (any listing), similarities exact on ``vectors``.

    ``auto``: ``exact`` up to ``exact_max`` rows, else ``clusters`` (needs ``labels`` and
    ``centroids``, the k-means assignment on the full vectors). ``ivf`` and ``hnsw`` find
    candidates on ``points`` (the vectors or their PCA reduction) and rescore them."""
    n = len(points)
    if method == "auto":
        method = "exact" if n <= exact_max or labels is None or centroids is None else "clusters"
    if method == "exact":
        if n * vectors.shape[1] * 4 <= cache_mb * 2**20:
            one = np.zeros(n, dtype=np.int32)
            neighbours, sims = blocked_graph(vectors, one, np.ones((1, 1), np.float32), k, 1, cache_mb)
        else:
            neighbours, sims = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
            for s in range(0, n, 8192):
                rows = np.arange(s, min(n, s + 8192), dtype=np.int64)
                found, sc = exact_search(vectors, rows, min(k, n - 1))
                neighbours[rows], sims[rows] = _pad(found, sc, k)
        return KnnGraph(neighbours, sims, "exact")
    if method == "clusters":
        if labels is None or centroids is None:
            raise ValueError("the clusters kNN method needs the k-means labels and centroids")
        neighbours, sims = blocked_graph(vectors, labels, centroids, k, probes, cache_mb)
        return KnnGraph(neighbours, sims, f"clusters(probes={min(probes, len(centroids))})")
    want = min(n, 4 * k + 1)
    index, used = candidate_index(points, method, exact_max, nprobe, seed, want)
    rows = np.arange(n, dtype=np.int64)
    neighbours = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    step = 16384
    for s in range(0, n, step):
        _, cand = index.search(points[s : s + step], want)
        ids, sc = rescore(vectors, rows[s : s + step], cand.astype(np.int64))
        ids, sc = _pad(ids, sc, k)
        neighbours[s : s + step], sims[s : s + step] = ids[:, :k], sc[:, :k]
    return KnnGraph(neighbours, sims, used)


def blocked_graph(
    vectors: Vectors,
    labels: npt.NDArray[np.int32],
    centroids: F32,
    k: int,
    probes: int,
    cache_mb: int = 2048,
    query_chunk: int = 2048,
) -> tuple[I64, F32]:
    """Each row's exact top k among the members of its cluster's ``probes`` nearest clusters.

    Vectors are widened to float32 once, ordered by cluster, when that copy fits in ``cache_mb``;
    otherwise block by block."""
    n, dim = vectors.shape
    order = np.argsort(labels, kind="stable").astype(np.int64)
    bounds = np.searchsorted(labels[order], np.arange(len(centroids) + 1))
    probe = d.probe_clusters(centroids, probes)
    cached: F32 | None = None
    if n * dim * 4 <= cache_mb * 2**20:
        cached = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 16384):
            cached[s : s + 16384] = vectors[order[s : s + 16384]]

    def block(c: int) -> tuple[F32, I64]:
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        rows = order[lo:hi]
        if cached is not None:
            return cached[lo:hi], rows
        return np.asarray(vectors[rows], dtype=np.float32), rows

    neighbours = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    for c in range(len(centroids)):
        if bounds[c + 1] == bounds[c]:
            continue
        q_vec, q_rows = block(c)
        parts = [block(int(p)) for p in probe[c] if bounds[p + 1] > bounds[p]]
        cand = np.concatenate([v for v, _ in parts]) if len(parts) > 1 else parts[0][0]
        cand_rows = np.concatenate([r for _, r in parts])
        for s in range(0, len(q_rows), query_chunk):
            ids, sc = d.block_topk(
                q_vec[s : s + query_chunk], q_rows[s : s + query_chunk], cand, cand_rows, k
            )
            neighbours[q_rows[s : s + query_chunk]] = ids
            sims[q_rows[s : s + query_chunk]] = sc
    return neighbours, sims


def _pad(ids: I64, sims: F32, k: int) -> tuple[I64, F32]:
    if ids.shape[1] >= k:
        return ids, sims
    extra = k - ids.shape[1]
    return (
        np.pad(ids, ((0, 0), (0, extra)), constant_values=-1),
        np.pad(sims, ((0, 0), (0, extra)), constant_values=-np.inf),
    )


Search = Callable[[I64, int], tuple[I64, F32]]  # (rows, k) -> exact top k of those rows (self excluded)


def outlier_kth(
    vectors: Vectors, listing_ids: npt.NDArray[np.bytes_], graph: KnnGraph, k: int, evidence: int = 5
) -> tuple[F32, I64]:
    """The k-th other-listing similarity of every row and its nearest other-listing rows
    (evidence); rows whose graph holds fewer than k other-listing neighbours are searched exactly."""
    kth, ev, _ = outlier_kth_by(lambda rows, wide: exact_search(vectors, rows, wide), listing_ids, graph, k,
                                evidence)  # fmt: skip
    return kth, ev


def outlier_kth_by(
    search: Search, listing_ids: npt.NDArray[np.bytes_], graph: KnnGraph, k: int, evidence: int = 5
) -> tuple[F32, I64, F32]:
    """:func:`outlier_kth` with the exact search given (the local engine's or the Spark job's);
    also the evidence's similarities."""
    nb_listing = listing_ids[np.where(graph.neighbours >= 0, graph.neighbours, 0)]
    kth, found = d.other_listing_kth(graph.sims, nb_listing, listing_ids, k)
    ev, ev_sims = _others_with(graph.neighbours, graph.sims, nb_listing, listing_ids, evidence)
    missing = np.flatnonzero(~found)
    if len(missing):
        # their own listing crowds the graph: exact search wide enough to pass it
        sizes = np.diff(np.append(group_starts(listing_ids), len(listing_ids)))
        wide = min(len(listing_ids) - 1, k + int(sizes.max()))
        for s in range(0, len(missing), 1024):
            rows = missing[s : s + 1024]
            ids, sc = search(rows, wide)
            nl = listing_ids[np.where(ids >= 0, ids, 0)]
            got, ok = d.other_listing_kth(sc, nl, listing_ids[rows], k)
            kth[rows] = np.where(ok, got, np.float32(-1.0))
            ev[rows], ev_sims[rows] = _others_with(ids, sc, nl, listing_ids[rows], evidence)
    return kth, ev, ev_sims


def _others_with(
    ids: I64, sims: F32, nb_listing: npt.NDArray[np.bytes_], own: npt.NDArray[np.bytes_], m: int
) -> tuple[I64, F32]:
    """The first m other-listing neighbours of each row and their similarities (-1 / -inf padding)."""
    other = (nb_listing != own[:, None]) & (ids >= 0) & np.isfinite(sims)
    order = np.argsort(~other, axis=1, kind="stable")[:, :m]
    out = np.take_along_axis(ids, order, axis=1)
    out_s = np.take_along_axis(sims, order, axis=1).astype(np.float32)
    keep = np.take_along_axis(other, order, axis=1)
    out[~keep] = -1
    out_s[~keep] = -np.inf
    if out.shape[1] < m:
        out = np.pad(out, ((0, 0), (0, m - out.shape[1])), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, m - out_s.shape[1])), constant_values=-np.inf)
    return out, out_s


def measure_recall(
    vectors: Vectors, graph: KnnGraph, queries: int = 1000, k: int = 10, seed: int = 0
) -> float:
    """recall@k of the graph against exact search on the full vectors, on a sample of rows."""
    return measure_recall_by(lambda rows, kk: exact_search(vectors, rows, kk), graph, queries, k, seed)


def recall_rows(n: int, queries: int, seed: int) -> I64:
    """The rows recall is measured on (the same for both engines)."""
    return sample_rows(n, queries, seed + 1)


def measure_recall_by(
    search: Search, graph: KnnGraph, queries: int = 1000, k: int = 10, seed: int = 0
) -> float:
    n = len(graph.neighbours)
    k = min(k, n - 1, graph.neighbours.shape[1])
    if k < 1:
        return 1.0
    rows = recall_rows(n, queries, seed)
    exact, _ = search(rows, k)
    return d.knn_recall(graph.neighbours[rows], exact, k)
