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
