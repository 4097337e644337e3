"""Photos for the upload benchmark: small generated JPEGs (800 x 600, smooth colour fields with
some noise, about the size of a catalogue photo), made in memory and the same in every run."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(seed: int, width: int = 800, height: int = 600) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.002, 0.02, 2).tolist()
        phase = float(rng.uniform(0, 6.3))
        channels.append(127 + 100 * np.sin(x * fx + y * fy + phase))
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def photos(n: int) -> list[bytes]:
    return [photo(seed) for seed in range(n)]
