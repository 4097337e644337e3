"""The compact tier's codes: PCA-reduced float16 vectors in a FAISS IVF, trained on a sample.

PCA (mean and top principal directions of a sample) maps a stored vector x to the code
``P(x - mean)`` and a query q to ``Pq``; their dot product is ``q.x`` minus a constant per
query minus what the dropped directions hold, so codes rank images close to exact scores.
An IVF (``IndexIVFScalarQuantizer``, float16 codes, inner product) scans ``nprobe`` of its
lists per query; ids are row numbers in the order rows were added. Removed rows stay in the
IVF and are skipped through a bitmap of live rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import torch

from search import kernel

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ENCODE_ROWS = 8192  # rows projected at a time
TRAIN_PER_LIST = 39  # FAISS's smallest sample per IVF list


def nlist_for(rows: int, train_rows: int, wanted: int = 0) -> int:
    """IVF lists: ``wanted``, else about sqrt(rows); never more than the sample trains."""
    lists = wanted or max(1, int(math.sqrt(max(1, rows))))
    return max(1, min(lists, train_rows // TRAIN_PER_LIST))


@dataclass(frozen=True)
class Codes:
    mean: F32  # (dim,)
    components: F32  # (dim, dims): the top principal directions, as columns
    index: Any  # faiss.IndexIVFScalarQuantizer over the codes

    @staticmethod
    def train(sample: kernel.Vectors, dims: int, nlist: int) -> Codes:
        """PCA to ``dims`` (randomised, on the sample) and IVF lists over the sample's codes."""
        rows, dim = sample.shape
        if not 1 <= dims <= dim:
            raise ValueError(f"compact dims must be between 1 and the dimension {dim}, got {dims}")
        if rows < 2:
            raise ValueError(f"the compact tier needs at least 2 vectors to train on, got {rows}")
        x = torch.from_numpy(kernel.widen(sample))
        mean = x.mean(dim=0)
        rank = min(dims, rows, dim)
        with torch.random.fork_rng(devices=[]):  # the randomised PCA, seeded: builds repeat
            torch.manual_seed(0)
            _, _, v = torch.pca_lowrank(x - mean, q=rank, center=False, niter=3)
        components = np.zeros((dim, dims), dtype=np.float32)
        components[:, :rank] = v[:, :rank].numpy()
        quantizer = faiss.IndexFlatIP(dims)
        sq = faiss.ScalarQuantizer.QT_fp16
        lists = max(1, min(nlist, rows))
        index = faiss.IndexIVFScalarQuantizer(quantizer, dims, lists, sq, faiss.METRIC_INNER_PRODUCT)
        codes = Codes(mean.numpy(), components, index)
        index.train(codes.encode(sample))
        return codes

    @property
    def dims(self) -> int:
        return int(self.components.shape[1])

    def encode(self, vectors: kernel.Vectors) -> F32:
        """Codes (rows, dims) of stored vectors: their centred projections."""
        out = np.empty((len(vectors), self.dims), dtype=np.float32)
        p, mean = torch.from_numpy(self.components), torch.from_numpy(self.mean)
        for start in range(0, len(vectors), ENCODE_ROWS):
            block = torch.from_numpy(kernel.widen(vectors[start : start + ENCODE_ROWS]))
            torch.mm(block - mean, p, out=torch.from_numpy(out[start : start + len(block)]))
        return out

    def project(self, queries: F32) -> F32:
        """Queries in code space (not centred: the mean's share is the same for every row)."""
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        return torch.mm(q, torch.from_numpy(self.components)).numpy()

    def add(self, vectors: kernel.Vectors) -> None:
        """Append rows (ids continue from the last); only while nothing searches this index."""
        for start in range(0, len(vectors), ENCODE_ROWS):
            self.index.add(self.encode(vectors[start : start + ENCODE_ROWS]))

    def clone(self) -> Codes:
        return Codes(self.mean, self.components, faiss.clone_index(self.index))

    def propose(self, queries: F32, k: int, nprobe: int, live: npt.NDArray[np.uint8] | None) -> I64:
        """(queries, k) rows whose codes score best; -1 where fewer were found. ``live``: a
        bitmap (bit i of byte i // 8, little-endian) of the rows that may be returned."""
        selector = None if live is None else faiss.IDSelectorBitmap(self.index.ntotal, faiss.swig_ptr(live))
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        if selector is not None:
            params.sel = selector
        _, labels = self.index.search(self.project(queries), k, params=params)
        del selector  # kept alive until the search returned
        return np.asarray(labels, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Memory held: codes and ids in the lists, the list centres and the PCA."""
        rows = int(self.index.ntotal)
        lists = int(self.index.nlist) * self.dims * 4
        return rows * (int(self.index.code_size) + 8) + lists + self.components.nbytes + self.mean.nbytes
