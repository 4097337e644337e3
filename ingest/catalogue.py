"""Catalogues: a folder of listings (one subfolder each), or the demo catalogue built from
real photos that ship inside scikit-image."""

from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
STOCK_FILE = "stock.csv"
# scikit-image sample photos, each different enough from the others to be its own listing.
DEMO_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "horse",
    "logo",
    "colorwheel",
)
DEMO_QUERY_LISTING = "coffee"


class CatalogueError(ValueError):
    """A catalogue folder that cannot be ingested as it is."""


@dataclass(frozen=True)
class ListingSource:
    name: str
    images: tuple[Path, ...]


@dataclass
class Catalogue:
    root: Path
    listings: list[ListingSource]
    stock: dict[str, int] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return sum(len(listing.images) for listing in self.listings)


def scan_folder(root: Path, *, skip_bad: bool = False) -> Catalogue:
    """Each subfolder is a listing named after it; its image files are the listing's images.

    Files are checked by content, not by name. A non-image file is an error naming it,
    unless ``skip_bad``, which skips it with a warning.
    """
    if not root.exists():
        raise CatalogueError(f"{root} does not exist")
    if not root.is_dir():
        raise CatalogueError(f"{root} is not a folder (expected one subfolder per listing)")
    listings, bad = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        good = [f for f in files if _is_image(f)]
        bad += [f for f in files if f not in good]
        if good:
            listings.append(ListingSource(sub.name, tuple(good)))
    if bad and not skip_bad:
        shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise CatalogueError(f"{len(bad)} file(s) are not images: {shown} (use --skip-bad to skip them)")
    for b in bad:
        log.warning("skipping %s: not an image", b)
    if not listings:
        raise CatalogueError(
            f"{root} holds no listings: expected subfolders (one per listing) with image files"
        )
    return Catalogue(root, listings, read_stock(root / STOCK_FILE))


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def read_stock(path: Path) -> dict[str, int]:
    """Optional ``stock.csv`` with columns ``listing,inventory``."""
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        try:
            return {row["listing"]: int(row["inventory"]) for row in csv.DictReader(fh)}
        except (KeyError, ValueError) as exc:
            raise CatalogueError(
                f"{path}: expected columns listing,inventory with integers ({exc})"
            ) from None


# -- the demo catalogue ---------------------------------------------------------------------
def _photo(name: str) -> Image.Image:
    from skimage import data

    a = np.asarray(getattr(data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(a[..., :3])


def view(photo: Image.Image, rng: np.random.Generator, *, mirror: bool) -> Image.Image:
    """One listing photo: a crop, maybe mirrored, small colour, light and scale changes."""
    w, h = photo.size
    s = rng.uniform(0.75, 0.95)
    cw, ch = int(w * s), int(h * s)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = photo.crop((x, y, x + cw, y + ch))
    if mirror:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.85, 1.15))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.9, 1.1))
    scale = rng.uniform(0.8, 1.2)
    return out.resize((max(32, int(cw * scale)), max(32, int(ch * scale))), Image.Resampling.BICUBIC)


def build_demo_catalogue(root: Path) -> tuple[Catalogue, Path]:
    """Write the demo catalogue under ``root`` (once) and return it with the held-out query."""
    query = root.parent / "queries" / f"{DEMO_QUERY_LISTING}-held-out.jpg"
    if not (root / STOCK_FILE).is_file() or not query.is_file():
        _write_demo(root, query)
    plant_demo_cases(root)
    return scan_folder(root), query


def _write_demo(root: Path, query: Path) -> None:
    log.info("building the demo catalogue in %s", root)
    stock_rows = []
    for i, name in enumerate(DEMO_PHOTOS):
        photo = _photo(name)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(3 + int(rng.integers(0, 4))):
            view(photo, rng, mirror=j % 2 == 1).save(folder / f"{j + 1}.jpg", quality=90)
        inventory = 0 if i % 4 == 3 else int(rng.integers(1, 25))
        stock_rows.append((name, inventory))
        if name == DEMO_QUERY_LISTING:
            query.parent.mkdir(parents=True, exist_ok=True)
            held_out = np.random.default_rng(1234)
            view(photo, held_out, mirror=False).save(query, quality=90)
    with (root / STOCK_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["listing", "inventory"])
        writer.writerows(stock_rows)


# -- planted cases: what catalogue analytics should find in the demo catalogue ---------------------
@dataclass(frozen=True)
class PlantedCase:
    kind: str  # "cross_listing_duplicate" | "misfit" | "outlier": where analytics should report it
    listing: str  # the listing it was put in
    file: str  # its file name there
    what: str


DEMO_PLANTED = (
    PlantedCase("cross_listing_duplicate", "rocket", "9-astronaut-copy.jpg",
                "astronaut/1.jpg re-encoded (JPEG quality 60, 90% size) in another listing"),
    PlantedCase("misfit", "clock", "9-wrong-photo.jpg", "a photo of the cat (chelsea) in the clock listing"),
    PlantedCase("outlier", "camera", "9-no-photo.jpg", "an off-topic 'no photo' placeholder"),
)  # fmt: skip


def plant_demo_cases(root: Path) -> None:
    """Add the planted cases to a demo catalogue (once; files already there are kept)."""
    for case in DEMO_PLANTED:
        target = root / case.listing / case.file
        if target.is_file():
            continue
        if case.kind == "cross_listing_duplicate":
            with Image.open(root / "astronaut" / "1.jpg") as im:
                copy = im.convert("RGB").resize(
                    (im.width * 9 // 10, im.height * 9 // 10), Image.Resampling.BILINEAR
                )
            copy.save(target, quality=60)
        elif case.kind == "misfit":
            view(_photo("chelsea"), np.random.default_rng(99), mirror=False).save(target, quality=90)
        else:
            _placeholder().save(target, quality=90)


def _placeholder() -> Image.Image:
    from PIL import ImageDraw

    im = Image.new("RGB", (320, 240), (236, 238, 242))
    draw = ImageDraw.Draw(im)
    draw.rectangle((120, 70, 200, 130), outline=(150, 156, 168), width=4)
    draw.ellipse((145, 85, 175, 115), outline=(150, 156, 168), width=4)
    draw.text((118, 160), "NO PHOTO", fill=(120, 126, 138))
    return im
