"""A Spark driver process for the cluster tests: the batch job (``load_features`` +
``score_queries``) on a given master, its answers printed as JSON, and optionally a gate in front
of the scoring: each task announces itself (``started-<pid>``, the pid of its Python worker) in the
gate folder and waits there until ``release`` appears, so a test can act (kill a worker, kill this
driver) while tasks are known to be running on chosen executors.

    python -m tests.integration.spark_cluster_driver STORE_URL MASTER QUERIES.npy MODEL [--gate DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from config.settings import SearchSettings, SparkSettings
from search.scoring import ScoreOptions
from search.spark.job import FEATURES_SCHEMA, load_features, score_queries
from search.spark.session import spark_scope
from store import open_store
from store.models import stored_model

SHARDS = 8


@dataclass(frozen=True)
class Gate:
    """Runs in each task, in front of the scorer: passes the batches through unchanged."""

    folder: str
    timeout_s: float = 180.0

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        folder = Path(self.folder)
        (folder / f"started-{os.getpid()}").touch()
        deadline = time.monotonic() + self.timeout_s
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield from batches


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("master")
    parser.add_argument("queries", type=Path)
    parser.add_argument("model")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--gate", default="")
    args = parser.parse_args()
    store = open_store(args.store)
    model = stored_model(store, args.model)
    store.close()
    queries = np.load(args.queries)
    settings = SparkSettings(master=args.master, driver_memory="1g", conf={"spark.executor.memory": "512m"})
    with spark_scope(settings, "lookalike-cluster-test", args.store) as spark:
        features = load_features(spark, args.store, model, SHARDS, settings)
        if args.gate:
            features = features.mapInArrow(Gate(args.gate), FEATURES_SCHEMA)
        opts = ScoreOptions(k=args.k)
        answers = score_queries(spark, features, args.store, model, queries, opts, SearchSettings().dtype)
    sys.stdout.write(json.dumps([a.as_json() for a in answers]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
