"""Spherical k-means with FAISS (on PCA-reduced vectors or on a sample of the full ones), then one
assignment on the full vectors so that clusters, centroids and new arrivals share one space."""

from __future__ import annotations

import faiss
import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.pca import sample_rows
from search import faiss_device

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
Vectors = npt.NDArray[np.floating]


def spherical_kmeans(points: Vectors, k: int, iters: int, seed: int, redo: int = 1) -> F32:
    """Centroids (k, dim) of spherical k-means over ``points`` (trained on at most 256 per
    cluster): ``redo`` runs from k-means++ seeds, the one whose points sit closest to their
    centroids kept (FAISS's objective). FAISS's own start (k random points) lands in poor local
    optima when the clusters are many and even; k-means++ spreads the seeds over them."""
    rows = sample_rows(len(points), 256 * k, seed)
    train = d.normalise_rows(np.asarray(points[rows], dtype=np.float32))
    gpu = faiss_device.kmeans_gpus()
    best, best_fit = np.zeros((0, train.shape[1]), np.float32), -np.inf
    for run in range(redo):
        rng = np.random.default_rng([seed, run])
        km = faiss.Kmeans(
            train.shape[1], k, niter=iters, seed=seed + run, spherical=True, gpu=gpu, verbose=False,
            max_points_per_centroid=256, min_points_per_centroid=1,
        )  # fmt: skip
        km.train(train, init_centroids=kmeans_plus_plus(train, k, rng))
        fit = float(
            np.asarray(km.obj)[-1]
        )  # spherical: FAISS's sum of similarities to the assigned centroids
        if fit > best_fit:
            best, best_fit = np.ascontiguousarray(km.centroids, dtype=np.float32), fit
    return best


def kmeans_plus_plus(points: F32, k: int, rng: np.random.Generator, sample_per_cluster: int = 32) -> F32:
    """k seeds by greedy k-means++ (Arthur & Vassilvitskii; the greedy variant scikit-learn
    uses): each step draws ``2 + ln k`` candidates with probability proportional to their
    squared distance to the nearest seed so far (``2 - 2 cos`` on the sphere) and keeps the one
    that lowers the total most. Drawn from at most ``sample_per_cluster * k`` of the points."""
    pool = points[sample_rows(len(points), sample_per_cluster * k, int(rng.integers(2**31)))]
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(len(pool)))]
    nearest = pool @ pool[chosen[0]]  # similarity to the closest seed so far
    for _ in range(1, min(k, len(pool))):
        weight = np.cumsum(np.maximum(2.0 - 2.0 * nearest, 0.0), dtype=np.float64)
        if weight[-1] <= 0:  # every point already is a seed's copy
            chosen.append(int(rng.integers(len(pool))))
            continue
        picks = np.minimum(
            np.searchsorted(weight, rng.random(trials) * weight[-1], side="right"), len(pool) - 1
        )
        after = np.maximum(nearest[:, None], pool @ pool[picks].T)  # (n, trials)
        best = int(np.argmax(after.sum(axis=0, dtype=np.float64)))  # highest similarity: lowest cost
        chosen.append(int(picks[best]))
        nearest = after[:, best].copy()
    return np.ascontiguousarray(pool[chosen], dtype=np.float32)


def assign_chunked(vectors: Vectors, centroids: F32, chunk: int = 16384) -> tuple[I32, F32]:
    labels = np.empty(len(vectors), dtype=np.int32)
    sims = np.empty(len(vectors), dtype=np.float32)
    for s in range(0, len(vectors), chunk):
        labels[s : s + chunk], sims[s : s + chunk] = d.assign(vectors[s : s + chunk], centroids)
    return labels, sims


def centroid_sums(vectors: Vectors, labels: I32, k: int, chunk: int = 8192) -> F32:
    """Sum of the (full) vectors of each cluster, by one-hot matrix products."""
    sums = np.zeros((k, vectors.shape[1]), dtype=np.float32)
    for s in range(0, len(vectors), chunk):
        lab = labels[s : s + chunk]
        onehot = np.zeros((k, len(lab)), dtype=np.float32)
        onehot[lab, np.arange(len(lab))] = 1.0
        sums += onehot @ np.asarray(vectors[s : s + chunk], dtype=np.float32)
    return sums


def cluster(
    vectors: Vectors, points: Vectors, k: int, iters: int, seed: int, redo: int = 1
) -> tuple[F32, I32, F32]:
    """(full-space centroids, labels, similarity to own centroid): k-means on ``points`` (the
    vectors or their reduction), centroids recomputed from the full vectors, one full assignment."""
    reduced_centroids = spherical_kmeans(points, k, iters, seed, redo)
    first, _ = assign_chunked(
        d.normalise_rows(points) if points is not vectors else points, reduced_centroids
    )
    centroids = d.normalise_rows(centroid_sums(vectors, first, k))
    labels, sims = assign_chunked(vectors, centroids)
    return centroids, labels, sims
