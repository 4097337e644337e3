"""``python -m lookalike.spark_search``: the Spark search job for a batch of queries.

    python -m lookalike.spark_search (--vectors QUERIES.npy | --image-ids IDS.txt) [--k K]
        [--aggregation A] [--in-stock-only] [--model NAME]

Reads ``features`` through Spark (store shard scans, or spark-cassandra-connector when
configured), scores every query against every vector per partition, writes ``query_results``
and prints one JSON answer per query (the shape of ``lookalike search --json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.settings import Settings
from lookalike import stack
from schemas.ids import parse_uuid
from search.scoring import AGGREGATIONS, MAX_K, ScoreOptions
from search.spark import queries
from search.spark.job import load_features, score_queries
from search.spark.session import spark_scope
from store import StoreError
from store.models import stored_model


def _k(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be between 1 and {MAX_K}, got {text}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", type=Path, help=".npy array of query vectors, one per row")
    source.add_argument("--image-ids", type=Path, help="text file with one stored image id per line")
    parser.add_argument("--k", type=_k, default=10, metavar=f"1..{MAX_K}")
    parser.add_argument("--aggregation", default="max", choices=AGGREGATIONS)
    parser.add_argument("--in-stock-only", action="store_true")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        store = stack.configured_store(settings)
        model = stored_model(store, args.model or stack.model_name(settings))
    except (ValueError, StoreError) as exc:
        parser.error(str(exc))
    if args.vectors is not None:
        q = queries.from_file(args.vectors, model)
    else:
        lines = [line.strip() for line in args.image_ids.read_text().splitlines() if line.strip()]
        q = queries.from_images(store, model, [parse_uuid(x, "image id") for x in lines])
    opts = ScoreOptions(k=args.k, aggregation=args.aggregation)
    spark_settings = settings.spark
    with spark_scope(spark_settings, "lookalike-search", store.url) as spark:
        features = load_features(spark, store.url, model, spark_settings.shards, spark_settings)
        answers = score_queries(
            spark, features, store.url, model, q, opts, settings.search.dtype, args.in_stock_only
        )
    sys.stdout.write(json.dumps([a.as_json() for a in answers], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
