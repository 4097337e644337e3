"""Spherical k-means with FAISS (on PCA-reduced vectors or on a sample of the full ones), then one
assignment on the full vectors so that clusters, centroids and new arrivals share one space."""

from __future__ import annotations

import faiss
import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.pca import sample_rows

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
Vectors = npt.NDArray[np.floating]


def spherical_kmeans(points: Vectors, k: int, iters: int, seed: int, redo: int = 1) -> F32:
    """Centroids (k, dim) of spherical k-means over ``points`` (trained on at most 256 per cluster)."""
    rows = sample_rows(len(points), 256 * k, seed)
    train = d.normalise_rows(np.asarray(points[rows], dtype=np.float32))
    gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        train.shape[1], k, niter=iters, seed=seed, spherical=True, gpu=gpu, verbose=False, nredo=redo,
        max_points_per_centroid=256, min_points_per_centroid=1,
    )  # fmt: skip
    km.train(train)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


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
