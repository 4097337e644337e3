"""The CNNs: output size, normalisation, deterministic random weights, weight loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract import model as model_mod
from extract.model import SPECS, WeightsMissing, load_model
from tests.conftest import jpeg_bytes


def _images(n: int = 2) -> list[Image.Image]:
    import io

    return [Image.open(io.BytesIO(jpeg_bytes(seed, (120, 90)))).convert("RGB") for seed in range(n)]


@pytest.fixture(autouse=True)
def empty_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pretrained weights anywhere: the tests decide what is there."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.mark.parametrize(("name", "dim"), [("vgg16_fc7", 4096), ("resnet50_pool", 2048)])
def test_output_dimension_and_normalisation(name: str, dim: int) -> None:
    m = load_model(name, allow_random=True)
    out = m.embed_images(_images())
    assert out.shape == (2, dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert m.info.dim == dim and m.info.weights == "random:seed=0"


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
    cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_file
    cached.parent.mkdir(parents=True)
    torch.save(net.state_dict(), cached)
    from_cache = load_model("resnet50_pool")  # no random allowed: must find the file
    assert from_cache.info.weights == f"file:{cached}"
    explicit = tmp_path / "mine.pth"
    torch.save(net.state_dict(), explicit)
    from_path = load_model("resnet50_pool", weights=explicit)
    np.testing.assert_allclose(
        from_cache.embed_images(_images(1)), from_path.embed_images(_images(1)), atol=1e-6
    )
    random = load_model("resnet50_pool", weights=None, allow_random=True)
    assert random.info.weights.startswith("file:")  # the cache wins over random weights
    assert model_mod.find_weights(spec, None) == cached


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
    from tests.conftest import tiny_model

    m = tiny_model()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = (pixels.float() / 255 - mean) / std
    torch.testing.assert_close(m.to_device(pixels), expected, rtol=1e-5, atol=1e-5)


def test_the_cpu_path_uses_no_cuda_only_features() -> None:
    m = load_model("resnet50_pool", allow_random=True, device="cpu", amp=True, channels_last=True)
    assert m.device.type == "cpu" and not m.cuda and not m.amp and not m.channels_last
    images = _images(2)
    batch = torch.stack([m.preprocess(i) for i in images])
    np.testing.assert_allclose(m.embed(batch), m.embed_images(images), atol=1e-6)
    assert m.info.name == "resnet50_pool" and m.info.weights == "random:seed=0"
