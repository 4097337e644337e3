"""The pretrained embedded model sees what photos show: it names them, finds altered copies,
tells faces from other things, and scores unrelated photos low (random weights do not)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torchvision
from PIL import Image, ImageEnhance, ImageOps

from extract.model import SPECS, FeatureModel, find_weights, load_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(image: Image.Image, side: float, corner: int) -> Image.Image:
    w, h = image.size
    cw, ch = int(w * side), int(h * side)
    x, y = (0, 0) if corner == 0 else (w - cw, h - ch)
    return image.crop((x, y, x + cw, y + ch))


ALTERATIONS: list[Callable[[Image.Image], Image.Image]] = [
    lambda im: _jpeg(im, 15),
    lambda im: im.resize((im.width // 3, im.height // 3), Image.Resampling.BICUBIC),
    lambda im: _crop(im, 0.7, 0),
    lambda im: ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.5)).enhance(0.75),
    lambda im: _jpeg(ImageOps.mirror(_crop(im, 0.8, 1)), 30),
]


@pytest.fixture(scope="module")
def lite0() -> FeatureModel:
    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def originals(lite0: FeatureModel) -> npt.NDArray[np.float32]:
    return lite0.embed_images([_photo(n) for n in PHOTOS])


def test_it_names_what_the_photos_show(lite0: FeatureModel) -> None:
    """The network with its ImageNet classifier, fed exactly as the feature model is fed."""
    spec = SPECS["efficientnet_lite0"]
    found = find_weights(spec, None)
    assert found is not None and found.path is not None
    net = spec.build()
    net.load_state_dict(torch.load(found.path, map_location="cpu", weights_only=True))
    batch = torch.stack([lite0.preprocess(_photo(n)) for n in ("coffee", "chelsea")])
    with torch.inference_mode():
        probs = net.eval()(lite0.to_device(batch)).softmax(1)
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert categories[ESPRESSO] == "espresso"
    assert int(probs[0].argmax()) == ESPRESSO and float(probs[0, ESPRESSO]) > 0.5
    assert int(probs[1].argmax()) in CATS, categories[int(probs[1].argmax())]


def test_an_altered_copy_is_nearer_its_original_than_any_other_photo(
    lite0: FeatureModel, originals: npt.NDArray[np.float32]
) -> None:
    for i, name in enumerate(PHOTOS):
        copies = lite0.embed_images([alter(_photo(name)) for alter in ALTERATIONS])
        sims = copies @ originals.T
        assert (sims.argmax(axis=1) == i).all(), (name, sims.round(2))
        assert sims[:, i].min() > 0.6, (name, sims[:, i].round(2))


def test_unrelated_photos_score_low_and_copies_high(
    lite0: FeatureModel, originals: npt.NDArray[np.float32]
) -> None:
    """The spread that makes a ranking readable: random VGG16 scores every pair 0.95-0.98."""
    sims = originals @ originals.T
    others = sims[~np.eye(len(PHOTOS), dtype=bool)]
    assert np.median(others) < 0.4 and others.max() < 0.6, sims.round(2)


def test_faces_find_faces(lite0: FeatureModel) -> None:
    """scikit-image's lfw_subset: 100 faces, then 100 non-face patches (25x25 grey)."""
    from skimage import data

    patches = data.lfw_subset()  # type: ignore[no-untyped-call]
    images = [Image.fromarray((p * 255).astype(np.uint8)).convert("RGB").resize((100, 100)) for p in patches]
    v = lite0.embed_images(images)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims[:100].argmax(axis=1)
    assert (nearest < 100).mean() >= 0.9
    face_face = sims[:100, :100][np.isfinite(sims[:100, :100])].mean()
    assert face_face > sims[:100, 100:].mean() + 0.1


def test_random_weights_lack_that_spread() -> None:
    """The contrast the checks above rely on: the same network untrained fails them."""
    from dataclasses import replace
    from unittest import mock

    spec = replace(SPECS["efficientnet_lite0"], packaged=lambda: None)
    with (
        mock.patch.dict(SPECS, {"efficientnet_lite0": spec}),
        mock.patch.object(torch.hub, "get_dir", lambda: "/nonexistent-torch-hub"),
    ):
        random = load_model("efficientnet_lite0", allow_random=True, device="cpu")
    assert not random.weights.pretrained
    v = random.embed_images([_photo(n) for n in PHOTOS])
    others = (v @ v.T)[~np.eye(len(PHOTOS), dtype=bool)]
    assert np.median(others) > 0.8
