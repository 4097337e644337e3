"""Where FAISS indexes run: on the GPUs when this process's faiss has GPU support (the ``gpu``
extra, faiss-gpu, which the GPU image installs) and a GPU is visible; on the CPU otherwise.

Decided once per process and said in the log. Moved: the ANN's IVF indexes (IVF-Flat, IVF-SQ
float16, IVF-PQ) and analytics' kNN candidates (flat, IVF) and k-means. Kept on the CPU, and the
log says so: HNSW (no GPU implementation in FAISS), the exact first pass (``search/flat.py``: the
engine scans the same memory, and its exactness bound assumes float32 sums that cuBLAS may do in
TF32) and the compact tier (its searches filter rows with an ID selector, which FAISS's GPU
indexes do not take). ``CUDA_VISIBLE_DEVICES=`` keeps a process on the CPU.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
GPU_KINDS = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)
GPU_MAX_K = 2048  # FAISS's GPU k-selection: at most this many results (and IVF probes) per query


Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Placement:
    gpus: int  # GPUs the indexes go to; 0: the CPU
    reason: str  # why, for the log line

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0


def choose(built_with_gpu: bool, visible_gpus: int) -> Placement:
    """The process-wide choice from what faiss was built with and how many GPUs it sees."""
    if not built_with_gpu:
        return Placement(0, "this faiss has no GPU support (the GPU image's `gpu` extra installs faiss-gpu)")
    if visible_gpus < 1:
        return Placement(0, "faiss has GPU support but sees no GPU")
    return Placement(visible_gpus, f"faiss sees {visible_gpus} GPU(s)")


@functools.cache
def detected() -> Placement:
    """This process's placement, logged once."""
    built = hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_all_gpus")
    placement = choose(built, int(faiss.get_num_gpus()) if built else 0)
    log.info("faiss: indexes on the %s (%s)", "GPU" if placement.on_gpu else "CPU", placement.reason)
    return placement


def refusal(index: Any, max_k: int | None) -> str | None:
    """Why ``index`` stays on the CPU even with a GPU (None: it can move). ``max_k``: the most
    results a search of it asks for (None: unknown; a CPU copy is then kept for large ones)."""
    if isinstance(index, faiss.IndexHNSW):
        return "HNSW has no GPU implementation in FAISS"
    if not isinstance(index, GPU_KINDS):
        return f"{type(index).__name__} has no GPU implementation in FAISS"
    nprobe = int(getattr(index, "nprobe", 1))
    if nprobe > GPU_MAX_K:
        return f"nprobe {nprobe} is over FAISS's GPU limit of {GPU_MAX_K}"
    if max_k is not None and max_k > GPU_MAX_K:
        return f"searches ask for {max_k} results, over FAISS's GPU limit of {GPU_MAX_K}"
    return None


@dataclass(frozen=True)
class Placed:
    """An index on the CPU, on the GPUs, or both: a search goes to the GPU copy unless it asks
    for more results than FAISS's GPU code returns."""

    cpu: Any | None
    gpu: Any | None

    def __post_init__(self) -> None:
        if self.cpu is None and self.gpu is None:
            raise ValueError("a placed index needs a CPU or a GPU copy")

    @property
    def on_gpu(self) -> bool:
        return self.gpu is not None

    def search(self, queries: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], Labels]:
        index: Any = self.gpu if self.gpu is not None and (k <= GPU_MAX_K or self.cpu is None) else self.cpu
        distances, labels = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return distances, labels


def place(index: Any, what: str, max_k: int | None = None, placement: Placement | None = None) -> Placed:
    """``index`` (built and filled on the CPU) copied to every visible GPU when it can be.
    ``max_k``: the most results a search asks for; within the GPU's limit only the GPU copy is
    kept, past it the index stays on the CPU, and unknown (None) keeps both, the CPU one for
    searches that ask for more than the GPU returns. A configuration FAISS's GPU code refuses stays on
    the CPU, with a warning."""
    where = placement or detected()
    if not where.on_gpu:
        return Placed(index, None)
    why = refusal(index, max_k)
    if why is not None:
        log.info("faiss: %s stays on the CPU: %s", what, why)
        return Placed(index, None)
    options: Any = faiss.GpuMultipleClonerOptions()
    options.useFloat16LookupTables = isinstance(index, faiss.IndexIVFPQ)  # needed past 48 sub-quantizers
    try:
        gpu = faiss.index_cpu_to_all_gpus(index, co=options, ngpu=where.gpus)
    except RuntimeError as exc:  # FAISS refuses a configuration its GPU code lacks
        log.warning("faiss: %s stays on the CPU: the GPU copy failed: %s", what, exc)
        return Placed(index, None)
    log.info("faiss: %s on %d GPU(s) (%s)", what, where.gpus, type(gpu).__name__)
    return Placed(None if max_k is not None else index, gpu)


def kmeans_gpus(placement: Placement | None = None) -> int | bool:
    """The ``gpu`` argument of ``faiss.Kmeans``: the GPU count, or False for the CPU."""
    where = placement or detected()
    return where.gpus if where.on_gpu else False
