"""PCA fitted on a sample by a randomized range finder (a few matrix products; a full eigen
decomposition of a 4096 x 4096 covariance is far slower), shared by both engines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Pca:
    mean: F32  # (dim,)
    components: F32  # (dim, out): orthonormal columns, most variance first

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    def apply(self, vectors: npt.NDArray[np.floating], chunk: int = 16384) -> F32:
        out = np.empty((len(vectors), self.out_dim), dtype=np.float32)
        for s in range(0, len(vectors), chunk):
            block = np.asarray(vectors[s : s + chunk], dtype=np.float32)
            out[s : s + chunk] = (block - self.mean) @ self.components
        return out


def fit_pca(sample: npt.NDArray[np.floating], out_dim: int, seed: int = 0, power_iters: int = 2) -> Pca:
    """Top ``out_dim`` principal directions of a sample (rows), deterministic for a seed."""
    x = np.asarray(sample, dtype=np.float32)
    n, dim = x.shape
    if not 1 <= out_dim <= min(n, dim):
        raise ValueError(f"PCA needs 1 <= out_dim <= min(rows, dim) = {min(n, dim)}, got {out_dim}")
    mean = x.mean(axis=0)
    xc = x - mean
    width = min(dim, out_dim + 16)
    omega = np.random.default_rng(seed).standard_normal((dim, width)).astype(np.float32)
    q = _orthonormal(xc @ omega)
    for _ in range(power_iters):
        q = _orthonormal(xc @ _orthonormal(xc.T @ q))
    b = q.T @ xc  # (width, dim)
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    out_dim = min(out_dim, len(vt))  # a centred sample of n rows spans at most n - 1 directions
    comps = vt[:out_dim].T.astype(np.float32)
    # a fixed sign per component (largest entry positive), so runs and engines agree
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(out_dim)])
    signs[signs == 0] = 1
    return Pca(mean.astype(np.float32), np.ascontiguousarray(comps * signs))


def _orthonormal(y: F32) -> F32:
    """Orthonormal columns spanning y's (through the small Gram matrix: Householder QR of a tall
    matrix is much slower here)."""
    w, v = np.linalg.eigh((y.T @ y).astype(np.float64))
    keep = w > w.max() * 1e-10
    basis = v[:, keep] / np.sqrt(w[keep])
    out: F32 = (y @ basis.astype(np.float32)).astype(np.float32)
    return out


def sample_rows(n: int, size: int, seed: int) -> npt.NDArray[np.int64]:
    """A sorted random sample of row numbers (all rows when n <= size)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)
