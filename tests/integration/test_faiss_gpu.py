"""FAISS on a GPU (the GPU image: faiss-gpu and a CUDA device): the engine's IVF ANN, analytics'
kNN candidates and k-means run there and agree with the CPU. Skipped, with the reason, elsewhere."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from analytics.clusters import spherical_kmeans
from analytics.knn import candidate_index
from config.settings import SearchSettings
from search import ann, faiss_device

PLACEMENT = faiss_device.detected()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not PLACEMENT.on_gpu, reason=f"needs a GPU and faiss-gpu: {PLACEMENT.reason}"),
]


def _vectors(n: int = 20_000, dim: int = 64, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_the_engines_ann_runs_on_the_gpu_and_agrees_with_the_cpu(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    v = _vectors()
    settings = SearchSettings(mode="approximate", ann=kind, nprobe=32, pq_m=16)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="search.faiss_device"):
        placed = ann.build(v.astype(np.float16), settings)
    assert placed.on_gpu and placed.cpu is not None  # the CPU copy answers searches past the GPU's k
    assert f"the {kind} ANN on" in caplog.text
    q = v[:64]
    gpu_rows = ann.propose(placed, q, 100)
    cpu_rows = ann.propose(faiss_device.Placed(placed.cpu, None), q, 100)
    overlap = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(gpu_rows, cpu_rows, strict=True)])
    assert overlap > 0.95, f"GPU and CPU {kind} proposals overlap {overlap:.3f}"
    assert (ann.propose(placed, q, faiss_device.GPU_MAX_K + 1)[:, 0] == cpu_rows[:, 0]).all()


def test_analytics_knn_and_kmeans_run_on_the_gpu() -> None:
    v = _vectors(5000, 32)
    placed, method = candidate_index(v, "exact", 10_000, 16, 0, max_k=17)
    assert method == "exact" and placed.on_gpu and placed.cpu is None
    _, gpu_labels = placed.search(v[:100], 17)
    exact = faiss.IndexFlatIP(v.shape[1])
    exact.add(v)
    _, cpu_labels = exact.search(v[:100], 17)
    assert np.mean(gpu_labels[:, :10] == cpu_labels[:, :10]) > 0.99
    centroids = spherical_kmeans(v, 20, 10, 0)
    assert centroids.shape == (20, 32) and np.isfinite(centroids).all()
