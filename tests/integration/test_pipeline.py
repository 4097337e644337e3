"""The whole slice on real components: Kafka (Tansu), the CNN worker, SQLite, Spark local."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from config.settings import KafkaSettings, Settings
from extract.model import load_model
from ingest.catalogue import DEMO_QUERY_LISTING, build_demo_catalogue, scan_folder
from ingest.producer import catalogue_stock, image_messages, send_images, send_stock
from lookalike import stack
from lookalike.cli import app
from messaging.producer import KafkaProducer
from schemas import ids
from search.loader import load_index
from search.scoring import ScoreOptions
from search.service import SearchService
from search.spark.job import load_features, score_queries
from store import Store

pytestmark = pytest.mark.integration
LISTINGS = ("astronaut", "coffee", "rocket", "chelsea", "coins", "page")


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six listings of the demo catalogue, and the held-out query photo."""
    root = tmp_path_factory.mktemp("demo")
    full, query = build_demo_catalogue(root / "catalogue")
    small = root / "small"
    for name in LISTINGS:
        shutil.copytree(full.root / name, small / name)
    (small / "stock.csv").write_text(
        "listing,inventory\n" + "".join(f"{n},{full.stock[n]}\n" for n in LISTINGS)
    )
    return small, query


def test_pipeline_end_to_end(
    catalogue_dir: tuple[Path, Path],
    broker: str,
    spark: SparkSession,
    any_store: Store,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, query_path = catalogue_dir
    kafka = KafkaSettings(
        bootstrap=broker,
        images_topic=f"img-{unique}",
        stock_topic=f"stock-{unique}",
        dlq_topic=f"dlq-{unique}",
        group=f"g-{unique}",
        stock_group=f"s-{unique}",
    )
    settings = replace(Settings.from_env(), kafka=kafka)
    catalogue = scan_folder(root)
    model = load_model("vgg16_fc7", allow_random=True)

    def ingest_and_extract() -> int:
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            n = send_images(producer, kafka.images_topic, image_messages(catalogue))
            send_stock(producer, kafka.stock_topic, catalogue_stock(catalogue))
        stack.run_extract(any_store, model, settings, drain=True)
        stack.run_stock_sync(any_store, kafka, drain=True)
        return n

    sent = ingest_and_extract()
    assert sent == catalogue.image_count
    counts = {t: any_store.count(t) for t in ("features", "images", "listings", "stock_level")}
    assert counts == {
        "features": sent,
        "images": sent,
        "listings": len(LISTINGS),
        "stock_level": len(LISTINGS),
    }

    ingest_and_extract()  # the same images again: stable ids, idempotent writes
    assert {t: any_store.count(t) for t in counts} == counts

    query = model.embed_images([Image.open(query_path).convert("RGB")])
    opts = ScoreOptions(k=len(LISTINGS))
    features = load_features(spark, any_store.url, model.info, shards=3)
    from_spark = score_queries(
        spark, features, any_store.url, model.info, query, opts, settings.search.dtype
    )[0]
    service = SearchService(any_store, load_index(any_store, model.info, settings.search), lambda: model)
    from_engine = service.search_vector(query[0], opts)

    assert from_spark.results[0].listing_name == DEMO_QUERY_LISTING
    assert [r.listing_id for r in from_spark.results] == [r.listing_id for r in from_engine.results]
    np.testing.assert_allclose(
        [r.score for r in from_spark.results], [r.score for r in from_engine.results], rtol=1e-5
    )
    assert from_spark.results[0].inventory == catalogue.stock[DEMO_QUERY_LISTING]

    stored = any_store.read_query_results(from_spark.query_id)
    assert [r.listing_id for r in stored] == [r.listing_id for r in from_spark.results]
    assert [r.score for r in stored] == sorted((r.score for r in stored), reverse=True)
    assert any_store.read_query_results(from_engine.query_id)[0].listing_name == DEMO_QUERY_LISTING

    # The command line against the same store: search by listing id, JSON out.
    monkeypatch.setenv("LOOKALIKE_STORE", any_store.url)
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", model.info.name)  # the model that made the stored vectors
    coffee = ids.listing_id(DEMO_QUERY_LISTING)
    result = CliRunner().invoke(app, ["search", "--listing-id", str(coffee), "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"query_id", "results"} and len(doc["results"]) == 3
    assert set(doc["results"][0]) == {"listing_id", "listing_name", "score", "inventory", "images"}
    assert str(coffee) not in [r["listing_id"] for r in doc["results"]]  # its own listing left out
    bad = CliRunner().invoke(app, ["search", "--image-id", "not-a-uuid"])
    assert bad.exit_code == 2 and "must be a UUID" in bad.output
