"""The analytics definitions, once: pure numpy, shared by the local engine and the Spark job.

Vectors are L2-normalised, so cosine similarity is a dot product and a score is ``1 - similarity``.

* outlier score: 1 - similarity to the k-th nearest image of *other* listings;
* listing misfit: 1 - cosine similarity to the mean of the listing's *other* images (listings
  with at least ``MISFIT_MIN_IMAGES`` images);
* percentile: where a score falls among the scores at percentiles 0..100 of the run;
* near-duplicates: kNN-graph pairs at or above a threshold, connected components, each checked
  against its medoid (members below the threshold to it are split off and regrouped);
* clusters: spherical k-means; size, cohesion (mean similarity to the centroid), nearest
  clusters (centroid similarity) and medoid (the member most similar to the centroid).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
MISFIT_MIN_IMAGES = 3
PERCENTILES = np.linspace(0.0, 1.0, 101)
DUPLICATE_RANGE = (0.5, 0.9999)  # a duplicate threshold outside this is refused


def default_clusters(n: int, cap: int) -> int:
    """About sqrt(n / 2) clusters, at least 1, at most ``cap`` and ``n``."""
    return max(1, min(cap, n, round(math.sqrt(n / 2))))


def check_duplicate_threshold(t: float) -> float:
    lo, hi = DUPLICATE_RANGE
    if not lo <= t <= hi:
        raise ValueError(f"duplicate similarity threshold must be in [{lo}, {hi}], got {t}")
    return t


def check_clusters(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"clusters must be at least 1, got {k}")
    if n < k:
        raise ValueError(f"{n} images cannot make {k} clusters: ask for at most {n}")
    return k


# -- scores ---------------------------------------------------------------------------------------
def other_listing_kth(
    sims: F32, neighbour_listing: npt.NDArray[np.bytes_], own_listing: npt.NDArray[np.bytes_], k: int
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """Similarity of each row's k-th nearest neighbour of another listing.

    ``sims`` (n, K) similarities sorted best first (padding: -inf), ``neighbour_listing`` (n, K)
    their listings. Returns (similarity, found): found is False where fewer than k other-listing
    neighbours are among the K (the caller widens its search for those rows).
    """
    other = (neighbour_listing != own_listing[:, None]) & np.isfinite(sims)
    rank = np.cumsum(other, axis=1)  # how many others up to and including column j
    hit = other & (rank == k)
    found = hit.any(axis=1)
    col = np.argmax(hit, axis=1)
    kth = np.where(found, sims[np.arange(len(sims)), col], np.float32(-1.0)).astype(np.float32)
    return kth, found


def outlier_scores(kth_similarity: F32) -> F32:
    return (1.0 - kth_similarity).astype(np.float32)


def listing_sums(vectors: npt.NDArray[np.floating], starts: I64) -> tuple[F32, I64]:
    """Sum of each listing's vectors (rows grouped by listing) and its image count."""
    n = len(vectors)
    if len(starts) == 0:
        return np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64)
    sums = np.add.reduceat(np.asarray(vectors, dtype=np.float32), starts, axis=0)
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    return sums.astype(np.float32), counts


def misfit_scores(vectors: npt.NDArray[np.floating], starts: I64) -> F32:
    """1 - cosine(x, mean of the listing's other images); NaN for listings under 3 images."""
    v = np.asarray(vectors, dtype=np.float32)
    sums, counts = listing_sums(v, starts)
    per_row = np.repeat(np.arange(len(starts)), counts)
    s = sums[per_row]
    xs = np.einsum("ij,ij->i", v, s)
    xx = np.einsum("ij,ij->i", v, v)
    ss = np.einsum("ij,ij->i", s, s)
    rest_dot = xs - xx  # x . (S - x)
    rest_norm = np.sqrt(np.maximum(ss - 2.0 * xs + xx, 0.0))
    cos = np.divide(rest_dot, rest_norm, out=np.zeros_like(rest_dot), where=rest_norm > 1e-12)
    out: F32 = (1.0 - cos).astype(np.float32)
    out[counts[per_row] < MISFIT_MIN_IMAGES] = np.nan
    return out


def score_quantiles(scores: F32) -> tuple[float, ...]:
    """Scores at percentiles 0, 1, ..., 100 (NaNs ignored; empty when there are none)."""
    valid = scores[~np.isnan(scores)]
    if len(valid) == 0:
        return ()
    return tuple(float(q) for q in np.quantile(valid.astype(np.float64), PERCENTILES))


def percentiles(scores: F32, quantiles: tuple[float, ...]) -> F32:
    """Vectorised :func:`schemas.analytics.quantile_rank`: NaN stays NaN."""
    out = np.full(len(scores), np.nan, dtype=np.float32)
    if not quantiles:
        return out
    q = np.asarray(quantiles, dtype=np.float64)
    s = scores.astype(np.float64)
    n = len(q) - 1
    i = np.clip(np.searchsorted(q, s, side="right") - 1, 0, n - 1)
    lo, hi = q[i], q[i + 1]
    gap = hi - lo
    frac = np.divide(s - lo, gap, out=np.zeros_like(s), where=gap > 0)
    pct = 100.0 * (i + np.clip(frac, 0.0, 1.0)) / n
    pct = np.where(s < q[0], 0.0, np.where(s >= q[-1], 100.0, pct))
    valid = ~np.isnan(s)
    out[valid] = pct[valid]
    return out


def top_rows(scores: F32, ids: npt.NDArray[np.bytes_], n: int) -> I64:
    """Rows of the n highest scores, worst first; ties by image id (NaN never chosen)."""
    valid = np.flatnonzero(~np.isnan(scores))
    if len(valid) > n:
        cut = np.partition(scores[valid], len(valid) - n)[len(valid) - n]
        valid = valid[scores[valid] >= cut]
    order = np.lexsort((ids[valid], -scores[valid].astype(np.float64)))
    return valid[order][:n].astype(np.int64)


# -- clusters -------------------------------------------------------------------------------------
def assign(vectors: npt.NDArray[np.floating], centroids: F32) -> tuple[npt.NDArray[np.int32], F32]:
    """Nearest centroid (highest dot product) of each row, and that similarity."""
    sims = np.asarray(vectors, dtype=np.float32) @ centroids.T
    best = np.argmax(sims, axis=1)
    return best.astype(np.int32), sims[np.arange(len(sims)), best].astype(np.float32)


def normalise_rows(m: npt.NDArray[np.floating]) -> F32:
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    out: F32 = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
    return out


def cluster_partials(
    cluster: npt.NDArray[np.int32], similarity: F32, k: int
) -> tuple[I64, npt.NDArray[np.float64], F32, I64]:
    """Per cluster: size, sum of similarities, best similarity and its row (-1: empty).

    Partials combine across partitions with :func:`combine_partials`."""
    sizes: I64 = np.bincount(cluster, minlength=k).astype(np.int64)
    sim_sums = np.bincount(cluster, weights=similarity.astype(np.float64), minlength=k)
    best = np.full(k, -np.inf, dtype=np.float32)
    np.maximum.at(best, cluster, similarity)
    rows = np.full(k, -1, dtype=np.int64)
    is_best = similarity == best[cluster]
    # the first row reaching the best similarity (rows come in a fixed order)
    for r in np.flatnonzero(is_best)[::-1]:
        rows[cluster[r]] = r
    return sizes, sim_sums.astype(np.float64), best, rows


def nearest_clusters(centroids: F32, n: int = 3) -> list[tuple[tuple[int, float], ...]]:
    """Each cluster's n most similar other clusters (by centroid similarity)."""
    k = len(centroids)
    sims = centroids @ centroids.T
    np.fill_diagonal(sims, -np.inf)
    out = []
    for c in range(k):
        order = np.lexsort((np.arange(k), -sims[c].astype(np.float64)))[: min(n, k - 1)]
        out.append(tuple((int(j), float(sims[c, j])) for j in order))
    return out


# -- the kNN graph --------------------------------------------------------------------------------
def probe_clusters(centroids: F32, probes: int) -> I64:
    """(k, p): each cluster and its p - 1 most similar others (by centroid similarity), itself first:
    the clusters whose members are the candidates of its members' nearest neighbours."""
    k = len(centroids)
    p = max(1, min(probes, k))
    sims = centroids @ centroids.T
    np.fill_diagonal(sims, np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :p]
    return order.astype(np.int64)


def block_topk(
    queries: F32, query_rows: I64, candidates: F32, candidate_rows: I64, k: int
) -> tuple[I64, F32]:
    """Exact top k (rows, similarities; best first, ties by row; -1 / -inf padding) of each query
    among the candidates, the query's own row excluded: one matrix product."""
    sims = queries @ candidates.T
    sims[query_rows[:, None] == candidate_rows[None, :]] = -np.inf
    m = sims.shape[1]
    if m > k:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), sims.shape).copy()
    top_s = np.take_along_axis(sims, part, axis=1)
    top_r = candidate_rows[part]
    order = np.lexsort((top_r, -top_s.astype(np.float64)), axis=1)
    top_s = np.take_along_axis(top_s, order, axis=1)
    top_r = np.take_along_axis(top_r, order, axis=1)
    top_r[~np.isfinite(top_s)] = -1
    if top_s.shape[1] < k:
        pad = k - top_s.shape[1]
        top_r = np.pad(top_r, ((0, 0), (0, pad)), constant_values=-1)
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_r.astype(np.int64), top_s.astype(np.float32)


def merge_topk(rows: I64, sims: F32, k: int) -> tuple[I64, F32]:
    """Merge (n, m) candidate lists (e.g. several blocks' top k side by side) into the top k,
    duplicates dropped, best first, ties by row."""
    s = sims.astype(np.float64).copy()
    order = np.lexsort((-s, rows), axis=1)  # by row, so a row's copies sit side by side
    r = np.take_along_axis(rows, order, axis=1)
    s = np.take_along_axis(s, order, axis=1)
    dup = np.zeros_like(r, dtype=bool)
    dup[:, 1:] = (r[:, 1:] == r[:, :-1]) & (r[:, 1:] >= 0)
    s[dup] = -np.inf
    order = np.lexsort((r, -s), axis=1)[:, :k]
    r = np.take_along_axis(r, order, axis=1)
    out_s = np.take_along_axis(s, order, axis=1).astype(np.float32)
    r[~np.isfinite(out_s)] = -1
    return r, out_s


# -- near-duplicates ------------------------------------------------------------------------------
def duplicate_edges(rows: I64, neighbours: I64, sims: F32, threshold: float) -> I64:
    """Unique pairs (i < j) of the kNN graph at or above the threshold, as an (m, 2) array."""
    mask = (sims >= threshold) & (neighbours >= 0) & (neighbours != rows[:, None])
    a = np.broadcast_to(rows[:, None], sims.shape)[mask]
    b = neighbours[mask]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


def components(n: int, edges: I64) -> I64:
    """Connected-component label of each of n nodes (union-find, labels = smallest member)."""
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def duplicate_groups(
    ids: npt.NDArray[np.bytes_], vectors: npt.NDArray[np.floating], edges: I64, threshold: float
) -> list[tuple[int, list[int]]]:
    """Groups of near-duplicates among ``ids`` (local rows in ``edges``): (medoid, members).

    A component's medoid is the member with the highest total similarity to the others (ties:
    smallest id); members below the threshold to it are split off and grouped again among
    themselves, so a chain a~b~c does not glue a to c. Groups of one are dropped.
    """
    v = np.asarray(vectors, dtype=np.float32)
    out: list[tuple[int, list[int]]] = []
    pending = [np.arange(len(ids), dtype=np.int64)]
    while pending:
        nodes = pending.pop()
        if len(nodes) < 2:
            continue
        local = {int(g): i for i, g in enumerate(nodes)}
        sub = np.array(
            [(local[int(a)], local[int(b)]) for a, b in edges if int(a) in local and int(b) in local],
            dtype=np.int64,
        ).reshape(-1, 2)
        labels = components(len(nodes), sub)
        for label in np.unique(labels):
            members = nodes[labels == label]
            if len(members) < 2:
                continue
            gram = v[members] @ v[members].T
            totals = gram.sum(axis=1)
            order = np.lexsort((ids[members], -totals.astype(np.float64)))
            medoid = int(order[0])
            keep = gram[medoid] >= threshold
            keep[medoid] = True
            kept, dropped = members[keep], members[~keep]
            if len(kept) >= 2:
                out.append((int(members[medoid]), sorted(int(m) for m in kept)))
            if len(dropped) >= 2:
                pending.append(dropped)
    return out


def order_groups(
    groups: list[tuple[int, list[int]]], ids: npt.NDArray[np.bytes_], listing: npt.NDArray[np.bytes_]
) -> list[tuple[int, list[int], bool]]:
    """(medoid, members medoid first, cross_listing): cross-listing first, larger first, then by
    medoid id, so both engines number groups alike."""
    rows = []
    for medoid, members in groups:
        cross = len({bytes(listing[m]) for m in members}) > 1
        ordered = [medoid, *sorted((m for m in members if m != medoid), key=lambda m: bytes(ids[m]))]
        rows.append((medoid, ordered, cross))
    rows.sort(key=lambda g: (not g[2], -len(g[1]), bytes(ids[g[0]])))
    return rows


# -- the map --------------------------------------------------------------------------------------
def place_by_nearest(points: F32, sample_points: F32, sample_xy: F32) -> F32:
    """Map coordinates of points not in the sample: those of their most similar sample point."""
    nearest = np.argmax(points @ sample_points.T, axis=1)
    out: F32 = sample_xy[nearest].astype(np.float32)
    return out


def knn_recall(found: I64, exact: I64, k: int) -> float:
    """Mean share of the exact k nearest found among the first k of ``found``."""
    if len(exact) == 0:
        return 1.0
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k)
