"""The CNN: VGG16 fc7 (4096) or ResNet-50 pooled (2048), L2-normalised outputs.

Weights come from an explicit path, else torchvision's file in the torch cache; random
weights only when allowed, with a loud warning (never in production).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torchvision
from PIL import Image
from torch import nn

from extract.preprocess import stack_uint8, to_uint8
from schemas.records import ModelInfo

log = logging.getLogger(__name__)
RANDOM_SEED = 0
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision's weights expect
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    weights_file: str  # torchvision's checkpoint name, as it lands in the torch cache
    build: Callable[[], nn.Module]  # the full network, untrained
    head: Callable[[nn.Module], nn.Module]  # the network cut at the feature layer


def _vgg16_fc7(net: nn.Module) -> nn.Module:
    assert isinstance(net, torchvision.models.VGG)
    # classifier = [fc6, relu, dropout, fc7, relu, dropout, fc8]: keep up to fc7's ReLU.
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *list(net.classifier)[:5])


def _resnet50_pool(net: nn.Module) -> nn.Module:
    assert isinstance(net, torchvision.models.ResNet)
    net.fc = nn.Identity()
    out: nn.Module = net
    return out


SPECS = {
    "vgg16_fc7": ModelSpec(
        "vgg16_fc7",
        4096,
        "vgg16-397923af.pth",
        lambda: torchvision.models.vgg16(weights=None),
        _vgg16_fc7,
    ),
    "resnet50_pool": ModelSpec(
        "resnet50_pool",
        2048,
        "resnet50-11ad3fa6.pth",
        lambda: torchvision.models.resnet50(weights=None),
        _resnet50_pool,
    ),
}


class WeightsMissing(RuntimeError):
    """No pretrained weights where we looked, and random weights are not allowed."""


def find_weights(spec: ModelSpec, explicit: Path | None) -> Path | None:
    """An explicit path must exist; otherwise look in the torch cache."""
    if explicit is not None:
        if not explicit.is_file():
            raise WeightsMissing(f"LOOKALIKE_MODEL_WEIGHTS={explicit} is not a file")
        return explicit
    cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_file
    return cached if cached.is_file() else None


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class PendingVectors:
    """Vectors of one batch, possibly still being computed on the GPU."""

    def __init__(self, host: torch.Tensor, ready: torch.cuda.Event | None) -> None:
        self._host, self._ready = host, ready

    def result(self) -> npt.NDArray[np.float32]:
        """(n, dim) L2-normalised float32; waits for the device when needed."""
        if self._ready is not None:
            self._ready.synchronize()
        out: npt.NDArray[np.float32] = self._host.numpy()
        return out


class FeatureModel:
    """A CNN cut at its feature layer: uint8 pixels in, L2-normalised vectors out.

    On CUDA: page-locked host batches, non-blocking copies, float16 autocast, channels-last,
    and results copied back asynchronously (``embed_async``), so the caller can queue the
    next batch before this one has finished.
    """

    def __init__(
        self,
        spec: ModelSpec,
        net: nn.Module,
        info: ModelInfo,
        device: torch.device,
        *,
        amp: bool = True,
        channels_last: bool = True,
    ) -> None:
        self.spec, self.info, self.device = spec, info, device
        self.cuda = device.type == "cuda"
        self.amp = amp and self.cuda
        self.channels_last = channels_last and self.cuda
        net = net.eval().to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        self.net = net
        self._mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A picture -> (3, 224, 224) uint8, as the worker and the query path both do it."""
        return to_uint8(image)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) uint8 (host or device) -> normalised float on the device."""
        if self.cuda and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        x = batch.to(self.device, non_blocking=True).float().sub_(self._mean).div_(self._std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def embed_async(self, batch: torch.Tensor) -> PendingVectors:
        """Queue one uint8 batch; on CUDA this returns before the GPU is done."""
        x = self.to_device(batch)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with amp:
            out = self.net(x)
        vectors = nn.functional.normalize(out.float(), dim=1)
        if not self.cuda:
            return PendingVectors(vectors, None)
        host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(vectors, non_blocking=True)
        ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
        ready.record()
        return PendingVectors(host, ready)

    def embed(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """(n, 3, 224, 224) uint8 -> (n, dim), L2-normalised float32."""
        return self.embed_async(batch).result()

    def embed_images(self, images: list[Image.Image]) -> npt.NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        return self.embed(stack_uint8([self.preprocess(i) for i in images], pin=self.cuda))


def load_model(
    name: str,
    *,
    weights: Path | None = None,
    allow_random: bool = False,
    dtype: str = "float16",
    device: str = "auto",
    amp: bool = True,
    channels_last: bool = True,
) -> FeatureModel:
    """``amp`` and ``channels_last`` apply on CUDA only (float16 autocast, NHWC layout)."""
    if name not in SPECS:
        raise ValueError(f"model must be one of {sorted(SPECS)}, got {name!r}")
    spec = SPECS[name]
    path = find_weights(spec, weights)
    net = spec.build() if path else _seeded(spec.build)
    if path is not None:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        source = f"file:{path}"
    elif allow_random:
        log.warning(
            "NO PRETRAINED WEIGHTS for %s: using RANDOM weights (seed %d). Similarity will be "
            "poor. Put torchvision's %s in %s/checkpoints or set LOOKALIKE_MODEL_WEIGHTS.",
            name,
            RANDOM_SEED,
            spec.weights_file,
            torch.hub.get_dir(),
        )
        source = f"random:seed={RANDOM_SEED}"
    else:
        raise WeightsMissing(
            f"no pretrained weights for {name}: put torchvision's {spec.weights_file} in "
            f"{torch.hub.get_dir()}/checkpoints, or set LOOKALIKE_MODEL_WEIGHTS=/path/to/file.pth "
            "(LOOKALIKE_MODEL_ALLOW_RANDOM=1 runs on random weights, never in production)"
        )
    info = ModelInfo(name=name, version=source.rsplit("/", 1)[-1], dim=spec.dim, dtype=dtype, weights=source)
    return FeatureModel(spec, spec.head(net), info, pick_device(device), amp=amp, channels_last=channels_last)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Random weights, the same on every machine: seed a private generator state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()
