"""The 2-D map: PCA to a few dozen dimensions, t-SNE (openTSNE) on a sample, every other image
placed at its most similar sample point."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.pca import Pca, fit_pca, sample_rows

F32 = npt.NDArray[np.float32]
MAP_DIM = 50


def embed(sample: F32, method: str, seed: int) -> F32:
    """2-D coordinates of a (small) sample of reduced points."""
    if method == "pca" or len(sample) < 10:
        out = np.zeros((len(sample), 2), dtype=np.float32)
        width = min(2, sample.shape[1])
        out[:, :width] = sample[:, :width]
        return out
    if method != "tsne":
        raise ValueError(f"map method must be tsne or pca, got {method!r}")
    from openTSNE import TSNE  # heavy import, only when a map is drawn

    perplexity = float(min(30, max(2, (len(sample) - 1) // 3)))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, n_jobs=-1, random_state=seed, verbose=False,
        n_iter=250, early_exaggeration_iter=125, negative_gradient_method="bh",
    )  # fmt: skip
    return np.asarray(tsne.fit(sample.astype(np.float64)), dtype=np.float32)


def map_points(vectors: npt.NDArray[np.floating], pca: Pca | None, seed: int) -> tuple[Pca | None, F32]:
    """Points the map is drawn from: the first MAP_DIM PCA components (fitting a PCA if none given)."""
    if pca is None and vectors.shape[1] > MAP_DIM:
        rows = sample_rows(len(vectors), 10_000, seed)
        pca = fit_pca(np.asarray(vectors[rows], dtype=np.float32), min(MAP_DIM, len(rows)), seed)
    if pca is None:
        return None, np.asarray(vectors, dtype=np.float32)
    small = Pca(pca.mean, np.ascontiguousarray(pca.components[:, :MAP_DIM]))
    return small, small.apply(vectors)


def map_xy(points: F32, sample_size: int, method: str, seed: int, chunk: int = 16384) -> F32:
    """x, y of every point: the sample embedded, the rest placed by nearest sample point."""
    rows = sample_rows(len(points), sample_size, seed + 2)
    unit = d.normalise_rows(points)
    xy_sample = embed(points[rows], method, seed)
    xy = np.empty((len(points), 2), dtype=np.float32)
    for s in range(0, len(points), chunk):
        xy[s : s + chunk] = d.place_by_nearest(unit[s : s + chunk], unit[rows], xy_sample)
    xy[rows] = xy_sample
    return xy
