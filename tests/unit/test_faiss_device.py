"""Where FAISS indexes run (search/faiss_device.py): the choice from what faiss was built with
and what it sees, the indexes that must stay on the CPU, and which copy a search uses. Runs here,
without a GPU; tests/integration/test_faiss_gpu.py runs the GPU path where one is present."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from search import faiss_device
from search.faiss_device import GPU_MAX_K, Placed, Placement, choose, place, refusal

GPU = Placement(2, "pretend: two GPUs seen")  # decisions taken before any GPU call


def _vectors(n: int = 500, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _flat(v: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    return index


def test_the_choice_needs_gpu_support_and_a_visible_gpu() -> None:
    assert choose(built_with_gpu=False, visible_gpus=0) == choose(False, 3)  # no support: GPUs do not matter
    assert not choose(False, 3).on_gpu and "gpu` extra" in choose(False, 3).reason
    assert not choose(True, 0).on_gpu and "sees no GPU" in choose(True, 0).reason
    assert choose(True, 2).gpus == 2 and choose(True, 2).on_gpu


def test_this_process_decides_once_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    faiss_device.detected.cache_clear()
    with caplog.at_level(logging.INFO, logger="search.faiss_device"):
        first, second = faiss_device.detected(), faiss_device.detected()
    assert first is second
    lines = [r.getMessage() for r in caplog.records if r.name == "search.faiss_device"]
    assert len(lines) == 1 and lines[0].startswith("faiss: indexes on the ")
    built = hasattr(faiss, "StandardGpuResources")
    assert first.on_gpu == (built and faiss.get_num_gpus() > 0)


def test_indexes_without_a_gpu_implementation_stay_on_the_cpu() -> None:
    dim = 16
    assert "HNSW" in (refusal(faiss.IndexHNSWFlat(dim, 8, faiss.METRIC_INNER_PRODUCT), None) or "")
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    assert "no GPU implementation" in (refusal(sq, None) or "")  # the exact first pass's index
    assert refusal(faiss.IndexFlatIP(dim), 100) is None
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 4, faiss.METRIC_INNER_PRODUCT)
    assert refusal(ivf, GPU_MAX_K) is None
    assert "over FAISS's GPU limit" in (refusal(ivf, GPU_MAX_K + 1) or "")
    ivf.nprobe = GPU_MAX_K + 1
    assert "nprobe" in (refusal(ivf, None) or "")


def test_without_a_gpu_the_index_is_used_as_built() -> None:
    v = _vectors()
    index = _flat(v)
    placed = place(index, "test index", 10, Placement(0, "no GPU"))
    assert placed.cpu is index and placed.gpu is None and not placed.on_gpu
    _, labels = placed.search(v[:3], 5)
    assert labels[:, 0].tolist() == [0, 1, 2]


def test_with_a_gpu_what_cannot_move_stays_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    hnsw = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(_vectors())
    with caplog.at_level(logging.INFO, logger="search.faiss_device"):
        placed = place(hnsw, "the hnsw ANN", None, GPU)
    assert placed.cpu is hnsw and placed.gpu is None
    assert "the hnsw ANN stays on the CPU: HNSW has no GPU implementation" in caplog.text


def test_a_search_uses_the_gpu_copy_unless_it_asks_for_more_than_the_gpu_returns() -> None:
    v = _vectors()
    cpu = _flat(v)
    stand_in = _flat(-v)  # stands in for the GPU copy: a different index, to see which answered
    both = Placed(cpu, stand_in)
    _, small = both.search(v[:1], 1)
    assert small[0, 0] == int(np.argmax(-v @ v[0]))  # the "GPU" copy answered
    _, large = both.search(v[:1], GPU_MAX_K + 1)
    assert large[0, 0] == 0  # past the GPU's limit: the CPU copy
    only_gpu = Placed(None, stand_in)
    _, labels = only_gpu.search(v[:1], 3)
    assert labels.shape == (1, 3)
    with pytest.raises(ValueError, match="CPU or a GPU copy"):
        Placed(None, None)


def test_kmeans_is_told_the_gpu_count_or_false() -> None:
    assert faiss_device.kmeans_gpus(GPU) == 2
    assert faiss_device.kmeans_gpus(Placement(0, "no GPU")) is False
