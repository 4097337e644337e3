"""Peak memory of loading an index, each measured in a fresh child process (part of bench.search).

The parent writes the benchmark's vectors as a ``.npy`` file and an id CSV; children then
1. ``features import`` them into a SQLite store (``search.vector_io``),
2. load the index from that store (``search.loader.load_memory_index``: count, then stream into the
   final float16 buffer),
3. load it the previous way (every scanned batch kept as its own segment, then all copied into
   the index), the baseline.
Each child reports its resident size before (imports done), at its peak (VmHWM) and after;
``peak_over_final`` is peak / resident size after, ``peak_over_index`` is what the load added
at its peak over the float16 matrix it built.

    python -m bench.search_load --child load|previous|import DIR   (what the parent runs)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import search_data

MODEL = "bench_load"


def _status(field: str) -> int:
    """A size from /proc/self/status, in bytes. VmHWM is this process's own peak: ru_maxrss
    would include the parent's size at the fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss() -> int:
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _child(mode: str, folder: Path) -> dict[str, Any]:
    from config.settings import SearchSettings
    from schemas.records import FeatureBatch
    from search import vector_io
    from search.engine import VectorIndex
    from search.loader import load_memory_index
    from search.segment import Segment
    from store import open_store

    store = open_store(f"sqlite:///{folder / 'load.db'}")
    store.apply_schema()
    before = _rss()
    started = time.perf_counter()
    if mode == "import":
        result = vector_io.import_features(store, folder / "v.npy", folder / "ids.csv", MODEL, "float16")
        rows, index_bytes = result.rows, result.rows * result.model.dim * 2
    else:
        model = store.get_model(MODEL)
        assert model is not None, "run the import child first"
        settings = SearchSettings(follow="off", threads=1)
        if mode == "load":
            index = load_memory_index(store, model, settings)
        else:  # the previous loader: a segment per scanned batch, then one copy of them all
            index = VectorIndex(model, settings)
            parts: list[FeatureBatch | Segment] = [
                Segment.build([b], index.dtype, model.dim) for b in store.scan_features(model)
            ]
            index.reset(parts)
            del parts
        rows, index_bytes = len(index), index.main_segment().vectors.nbytes
    seconds = time.perf_counter() - started
    after, peak = _rss(), _peak()
    return {
        "rows": rows,
        "seconds": round(seconds, 1),
        "index_bytes": index_bytes,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "final_rss_bytes": after,
        "peak_over_final": round(peak / after, 2),
        "peak_over_index": round((peak - before) / index_bytes, 2),
    }


def _uuid(packed: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(packed).ljust(16, b"\0"))  # numpy drops trailing NUL bytes


def _run_child(mode: str, folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.search_load", "--child", mode, str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def bench_load(data: search_data.Data, rows: int) -> dict[str, Any]:
    """Import ``rows`` of the benchmark's vectors into a new SQLite store, then load it twice."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "v.npy", data.vectors[:rows])
        with (folder / "ids.csv").open("w") as f:
            f.write("listing_id,image_id\n")
            for lid, iid in zip(data.listing_ids[:rows], data.image_ids[:rows], strict=True):
                f.write(f"{_uuid(lid)},{_uuid(iid)}\n")
        imported = _run_child("import", folder)
        loaded = _run_child("load", folder)
        previous = _run_child("previous", folder)
    return {
        "from": "sqlite store, float16 index",
        "peak_rss_bytes": loaded["peak_rss_bytes"],
        "peak_over_final": loaded["peak_over_final"],
        "peak_over_index": loaded["peak_over_index"],
        "target_met": loaded["peak_over_final"] <= 1.3,
        "store_load": loaded,
        "previous_store_load": previous,
        "features_import": imported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", choices=["import", "load", "previous"], required=True)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(_child(args.child, args.folder)) + "\n")


if __name__ == "__main__":
    main()
