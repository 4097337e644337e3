"""Page benchmark: what the web page's screens ask of the store, at catalogue scale (SQLite in a
temporary folder).

    python -m bench.page [--listings N] [--images M] [--repeat R] [--save]

1. The catalogue grid (the first screen): a page of 24 listings at the start, the middle and the
   end of N listings. ``GET /v1/listings`` pages by keyset (``Store.listings_page``); the
   baseline, measured in the same run, is OFFSET paging of the same table, whose cost grows with
   the depth. The whole page (``catalogue_page``: listings, their images and stock) is timed too.
2. The Explore page's cluster list: every cluster's 6 most central images, read in one go
   (``central_members``, from the strips a run keeps) against the baseline of reading each
   cluster's members and keeping the first 6 (what it costs without the strips), over a real
   analysis of M planted images.

Prints JSON (milliseconds, medians of R repeats); ``--save`` writes bench/results/page-*.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from analytics.local import analyze, new_run
from analytics.phases import Phases
from analytics.synthetic import planted_catalogue
from api.routers.listings import catalogue_page
from bench.analyze import _device as device
from config.settings import AnalyticsSettings
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel
from store.sqlite import SQLiteStore

PAGE = 24
STRIP = 6
MODEL = ModelInfo("bench-page", "1", 8, "float16", "random:bench")


def ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def fill_catalogue(store: SQLiteStore, listings: int, per_listing: int = 4) -> list[uuid.UUID]:
    """``listings`` listings of ``per_listing`` images each, with stock; their ids in page order."""
    vector = np.full(MODEL.dim, 1 / np.sqrt(MODEL.dim), dtype=np.float32)
    ids = [uuid.uuid5(uuid.NAMESPACE_URL, f"bench-page-{i}") for i in range(listings)]
    store.put_model(MODEL)
    for start in range(0, listings, 5000):
        rows = [
            Extracted(
                ImageRecord(lid, uuid.uuid5(lid, str(j)), "bench://", "image/jpeg", 1, 1, 1),
                f"listing {start + i}",
                MODEL.name,
                vector,
            )
            for i, lid in enumerate(ids[start : start + 5000])
            for j in range(per_listing)
        ]
        store.write_extracted(rows, MODEL.dtype)
        store.put_stock(
            [StockLevel(lid, i % 5, uuid.uuid4()) for i, lid in enumerate(ids[start : start + 5000])]
        )
    return sorted(ids, key=lambda i: i.bytes)


def paging(store: SQLiteStore, path: Path, listings: int, repeat: int) -> dict[str, object]:
    order = fill_catalogue(store, listings)
    db = sqlite3.connect(path)
    offset_sql = "SELECT listing_id, name FROM listings ORDER BY listing_id LIMIT ? OFFSET ?"
    out: dict[str, object] = {"listings": listings, "page": PAGE}
    for where, at in (("start", 0), ("middle", listings // 2), ("end", listings - PAGE)):
        after = order[at - 1] if at else None
        keyset = ms(lambda: store.listings_page(PAGE + 1, after), repeat)  # noqa: B023
        offset = ms(lambda: db.execute(offset_sql, (PAGE + 1, at)).fetchall(), repeat)  # noqa: B023
        whole = ms(lambda: catalogue_page(store, PAGE, after, 1), repeat)  # noqa: B023
        page = catalogue_page(store, PAGE, after, 1)
        assert [r.listing_id for r in page.listings] == order[at : at + PAGE]
        out[where] = {
            "keyset_ms": keyset,
            "offset_ms": offset,
            "offset_over_keyset": round(offset / keyset, 1),
            "catalogue_page_ms": whole,
        }
    db.close()
    return out


def strips(store: SQLiteStore, images: int, repeat: int) -> dict[str, object]:
    planted = planted_catalogue(images, 32, max(2, int(np.sqrt(images / 2))), seed=3)
    settings = AnalyticsSettings(map_method="pca", pca_dim=0, recall_queries=20)
    with Phases() as phases:
        result = analyze(planted.catalogue, new_run("bench-page", settings, "local"), settings, phases)
    store.write_result(result)
    run_id = result.run.run_id
    clusters = [c.cluster_id for c in store.read_clusters(run_id)]
    one_read = ms(lambda: store.central_members(run_id, STRIP), repeat)
    per_cluster = ms(lambda: [store.cluster_members(run_id, c)[:STRIP] for c in clusters], repeat)
    found = store.central_members(run_id, STRIP)
    assert found == {c: store.cluster_members(run_id, c)[:STRIP] for c in clusters}
    assert all(found[c.cluster_id][0] == c.medoid_image_id for c in result.clusters)
    return {
        "images": images,
        "clusters": len(clusters),
        "central_members_ms": one_read,
        "members_per_cluster_ms": per_cluster,
        "members_over_central": round(per_cluster / one_read, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "page.db"
        store = SQLiteStore(f"sqlite:///{path}")
        store.apply_schema()
        figures = {
            "machine": device(),
            "catalogue": paging(store, path, args.listings, args.repeat),
            "cluster_strips": strips(store, args.images, args.repeat),
        }
        store.close()
    print(json.dumps(figures, indent=2))
    if args.save:
        out = Path(__file__).parent / "results" / f"page-sqlite-{args.listings // 1000}k.json"
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main()
