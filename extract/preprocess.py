"""Pixels for the CNN: resize the short side, centre-crop, keep uint8 until the device.

Batches travel as uint8 (a quarter of float32's bytes): the cast and the ImageNet
normalisation happen on the device, in :meth:`extract.model.FeatureModel.to_device`.
On the CPU the resize is Pillow's antialiased bilinear (in the decode threads, without the
GIL); on a GPU, JPEGs are decoded in one batch by nvJPEG and resized with torch's antialiased
bilinear, which follows Pillow's filter to within rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

RESIZE = 256  # short side before the crop (torchvision's ImageNet recipe)
CROP = 224


def short_side_size(width: int, height: int, short: int = RESIZE) -> tuple[int, int]:
    """(width, height) with the short side at ``short``, as torchvision computes it."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def to_uint8(image: Image.Image, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """An RGB picture -> (3, crop, crop) uint8 tensor: short side to ``resize``, centre crop.

    One Pillow resample of just the cropped region (``box``): the same pixels as resizing
    the whole picture and cropping after, at about half the cost.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = short_side_size(image.width, image.height, resize)
    sx, sy = w / image.width, h / image.height
    left, top = (w - crop) // 2, (h - crop) // 2
    box = (left / sx, top / sy, (left + crop) / sx, (top + crop) / sy)
    region = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(region).transpose(2, 0, 1)))


def stack_uint8(tensors: Sequence[torch.Tensor], pin: bool) -> torch.Tensor:
    """One (n, 3, h, w) batch; in page-locked memory when ``pin`` (for non-blocking copies)."""
    first = tensors[0]
    out = torch.empty((len(tensors), *first.shape), dtype=torch.uint8, pin_memory=pin)
    return torch.stack(list(tensors), out=out)


def decode_jpegs_on_device(
    datas: Sequence[bytes], device: torch.device, resize: int = RESIZE, crop: int = CROP
) -> torch.Tensor:
    """Batched nvJPEG decode (``torchvision.io.decode_jpeg`` on CUDA), then resize and crop
    on the GPU: (n, 3, crop, crop) uint8 on ``device``. Raises RuntimeError if any fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    images = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    out = []
    for image in images:
        h, w = image.shape[-2:]
        size = short_side_size(int(w), int(h), resize)
        resized = F.resize(image, [size[1], size[0]], antialias=True)
        out.append(F.center_crop(resized, [crop, crop]))
    return torch.stack(out)
