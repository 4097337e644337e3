"""A store with a real analytics run, for the API, page and fresh-scoring tests: a synthetic
catalogue with planted truth (analytics.synthetic), each image a small JPEG tinted by its true
cluster (so thumbnails and galleries show what the clusters are), analysed by the local engine."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from analytics.run import run_local
from analytics.synthetic import Planted, planted_catalogue
from config.settings import AnalyticsSettings, SearchSettings
from schemas.analytics import AnalysisResult
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel, as_uuid
from search.loader import load_index
from search.service import SearchService
from store import Store

DIM = 32
MODEL = ModelInfo("vgg16_fc7", "synthetic", DIM, "float16", "random:synthetic")
SETTINGS = AnalyticsSettings(
    map_method="pca", pca_dim=0, recall_queries=50, top_n=200, duplicate_threshold=0.95
)
PALETTE = np.array(
    [[230, 80, 60], [60, 140, 230], [90, 190, 90], [240, 190, 50], [160, 90, 200], [50, 190, 190],
     [230, 120, 180], [120, 120, 120], [200, 140, 90], [30, 60, 120]],
    dtype=np.float64,
)  # fmt: skip


@dataclass(frozen=True)
class Seeded:
    planted: Planted
    result: AnalysisResult
    names: dict[uuid.UUID, str]  # listing id -> name


def tile(rgb: np.ndarray, seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rgb[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def seed_store(
    store: Store,
    folder: Path | None,
    n: int = 600,
    clusters: int = 6,
    seed: int = 1,
    settings: AnalyticsSettings = SETTINGS,
) -> Seeded:
    """``n`` planted images written to the store (pixels under ``folder``; None: no pixels) and
    one complete analytics run over them."""
    p, names = write_catalogue(store, folder, n, clusters, seed)
    result = run_local(store, MODEL.name, settings.model_copy(update={"clusters": clusters}))
    return Seeded(p, result, names)


def write_catalogue(
    store: Store, folder: Path | None, n: int, clusters: int, seed: int = 1
) -> tuple[Planted, dict[uuid.UUID, str]]:
    """The planted catalogue's vectors, image rows (and pixels), listing names and stock, stored."""
    p = planted_catalogue(n, DIM, clusters, per_listing=5, rate=0.01, noise=0.6, seed=seed)
    cat = p.catalogue
    store.put_model(MODEL)
    names: dict[uuid.UUID, str] = {}
    rows = []
    for r in range(len(cat)):
        lid, iid = as_uuid(cat.listing_ids[r]), as_uuid(cat.image_ids[r])
        names.setdefault(lid, f"listing-{len(names)}")
        uri = "test://none"
        if folder is not None:
            path = folder / f"{iid}.jpg"
            colour = PALETTE[int(p.labels[r]) % len(PALETTE)] if p.labels[r] >= 0 else np.array([0.0, 0, 0])
            path.write_bytes(tile(colour, r))
            uri = path.as_uri()
        record = ImageRecord(lid, iid, uri, "image/jpeg", 48, 48, 1000)
        rows.append(Extracted(record, names[lid], MODEL.name, cat.vectors[r].astype(np.float32)))
        if len(rows) == 2000:
            store.write_extracted(rows, MODEL.dtype)
            rows = []
    store.write_extracted(rows, MODEL.dtype)
    store.put_stock([StockLevel(lid, i % 7, uuid.uuid4()) for i, lid in enumerate(names)])
    return p, names


def service(store: Store, search: SearchSettings | None = None) -> SearchService:
    index = load_index(store, MODEL, search or SearchSettings(follow="off"))

    def no_model():  # type: ignore[no-untyped-def]
        raise RuntimeError("these tests search by id only")

    return SearchService(store, index, no_model)
