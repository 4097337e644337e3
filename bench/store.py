"""Store benchmark: write throughput at several concurrency levels, and full-scan throughput.

    python -m bench.store [--url STORE_URL] [--vectors N] [--dim D] [--batch B]

Prints JSON. The baseline is one writer (concurrency 1) and one scan stream (1 shard), measured
in the same run; other levels are reported as ratios to it. Without --url, a temporary SQLite
file is used. Writes go to listings named bench-*; use a scratch store or keyspace.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from schemas.codec import l2_normalise, numpy_dtype
from schemas.records import Extracted, ImageRecord, ModelInfo
from store import Store, open_store


def make_batches(
    n: int, dim: int, batch: int, model: str, images_per_listing: int = 4
) -> list[list[Extracted]]:
    rng = np.random.default_rng(0)
    vectors = l2_normalise(rng.normal(size=(n, dim)).astype(np.float32))
    rows = []
    for i in range(n):
        listing = uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{i // images_per_listing}")
        image = ImageRecord(
            listing, uuid.uuid5(uuid.NAMESPACE_URL, f"bench-img-{i}"), "bench://", "image/jpeg", 1, 1, 1
        )
        rows.append(Extracted(image, f"bench-{i // images_per_listing}", model, vectors[i]))
    return [rows[i : i + batch] for i in range(0, n, batch)]


def write_rate(store: Store, batches: list[list[Extracted]], dtype: str, concurrency: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: store.write_extracted(b, dtype), batches))
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def scan_rate(store: Store, model: ModelInfo, shards: int) -> tuple[float, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(shards) as pool:
        counts = list(
            pool.map(lambda s: sum(len(b) for b in store.scan_features(model, s, shards)), range(shards))
        )
    return sum(counts) / (time.perf_counter() - started), sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="")
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--concurrency", default="1,2,4,8")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    store = open_store(url)
    store.apply_schema()
    model = ModelInfo("bench", "1", args.dim, args.dtype, "random:bench")
    store.put_model(model)
    batches = make_batches(args.vectors, args.dim, args.batch, model.name)
    mb_per_row = args.dim * numpy_dtype(args.dtype).itemsize / 1e6
    writes = {}
    for c in (int(x) for x in args.concurrency.split(",")):
        rate = write_rate(store, batches, args.dtype, c)  # upserts: every level writes the same rows
        writes[c] = {"rows_per_s": round(rate), "vector_mb_per_s": round(rate * mb_per_row, 1)}
    base_w = writes[min(writes)]["rows_per_s"]
    scans = {}
    for shards in (1, 2, 4):
        rate, rows = scan_rate(store, model, shards)
        scans[shards] = {
            "rows_per_s": round(rate),
            "vector_mb_per_s": round(rate * mb_per_row, 1),
            "rows": rows,
        }
    base_s = scans[1]["rows_per_s"]
    print(
        json.dumps(
            {
                "store": url.split("://")[0],
                "vectors": args.vectors,
                "dim": args.dim,
                "dtype": args.dtype,
                "batch": args.batch,
                "write": {
                    f"concurrency_{c}": {**v, "ratio_vs_1": round(v["rows_per_s"] / base_w, 2)}
                    for c, v in writes.items()
                },
                "scan": {
                    f"shards_{s}": {**v, "ratio_vs_1": round(v["rows_per_s"] / base_s, 2)}
                    for s, v in scans.items()
                },
            },
            indent=2,
        )
    )
    store.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
