"""The vector codec: L2-normalised vectors, little-endian float16 (default) or float32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

Dtype = Literal["float16", "float32"]
_NUMPY: dict[str, np.dtype[np.floating]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}


def numpy_dtype(dtype: str) -> np.dtype[np.floating]:
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise ValueError(f"vector dtype must be one of {sorted(_NUMPY)}, got {dtype!r}") from None


def l2_normalise(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Row-wise L2 normalisation; an all-zero row stays zero."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    out: npt.NDArray[np.float32] = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return out


def encode(vector: npt.NDArray[np.floating], dtype: str) -> bytes:
    return np.ascontiguousarray(vector, dtype=numpy_dtype(dtype)).tobytes()


def decode(blob: bytes, dtype: str, dim: int) -> npt.NDArray[np.float32]:
    vec = np.frombuffer(blob, dtype=numpy_dtype(dtype))
    if vec.size != dim:
        raise ValueError(f"vector blob holds {vec.size} values of {dtype}, expected {dim}")
    return vec.astype(np.float32)


def decode_many(blobs: Sequence[bytes], dtype: str, dim: int) -> npt.NDArray[np.float32]:
    """Decode many blobs into one (n, dim) float32 matrix with a single copy."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    flat = np.frombuffer(b"".join(blobs), dtype=numpy_dtype(dtype))
    if flat.size != len(blobs) * dim:
        raise ValueError(f"{len(blobs)} vector blobs do not all hold {dim} values of {dtype}")
    return flat.reshape(len(blobs), dim).astype(np.float32)
