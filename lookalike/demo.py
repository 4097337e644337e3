"""The main job on the embedded defaults: broker, SQLite, Spark local, the CNN, the API.

Every stage is the real one: images go through Kafka, the extract worker stores vectors,
Spark scores the held-out query and writes ``query_results``, the in-memory engine answers
the same query, and the API serves the result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from extract.model import FeatureModel
from ingest.broker import EmbeddedBroker
from ingest.catalogue import DEMO_QUERY_LISTING, Catalogue, build_demo_catalogue, scan_folder, view
from ingest.producer import KafkaProducer, catalogue_stock, image_messages, send_images, send_stock
from lookalike import stack
from lookalike.output import print_answer
from lookalike.settings import CoreSettings, KafkaSettings, ModelSettings, SparkSettings
from schemas import ids
from schemas.records import ModelInfo, QueryAnswer
from search.engine import load_index
from search.scoring import ScoreOptions
from search.service import SearchService, answer_from_rows
from store import Store

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    spark: QueryAnswer
    engine: QueryAnswer
    expected_listing: str
    store: Store
    service: SearchService


@contextlib.contextmanager
def kafka_settings(core: CoreSettings) -> Iterator[KafkaSettings]:
    """The configured Kafka, or an embedded broker for the duration of the block."""
    kafka = KafkaSettings()
    if kafka.bootstrap:
        yield kafka
        return
    if core.production:
        raise RuntimeError("LOOKALIKE_PRODUCTION=1 needs LOOKALIKE_KAFKA_BOOTSTRAP (no embedded broker)")
    with EmbeddedBroker() as broker:
        yield kafka.model_copy(update={"bootstrap": broker.bootstrap})


def prepare_catalogue(core: CoreSettings, images: Path | None) -> tuple[Catalogue, Path, str]:
    """The catalogue, a held-out query photo, and the listing it was taken from."""
    if images is None:
        catalogue, query = build_demo_catalogue(core.data_dir / "catalogue")
        return catalogue, query, DEMO_QUERY_LISTING
    catalogue = scan_folder(images)
    listing = catalogue.listings[len(catalogue.listings) // 2]
    query = core.data_dir / "queries" / f"{listing.name}-held-out.jpg"
    query.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(listing.images[0]) as photo:
        view(photo.convert("RGB"), np.random.default_rng(1234), mirror=False).save(query, quality=90)
    return catalogue, query, listing.name


def ingest(catalogue: Catalogue, store: Store, model: FeatureModel, kafka: KafkaSettings) -> int:
    """Produce the images not stored yet, and every stock level. Returns images sent."""
    all_ids = [ids.image_id(li.name, p.name) for li in catalogue.listings for p in li.images]
    stored = store.existing_images(all_ids, model.info.name)
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        sent = send_images(producer, kafka.images_topic, image_messages(catalogue, skip=stored))
        send_stock(producer, kafka.stock_topic, catalogue_stock(catalogue))
    log.info("ingest: %d images produced, %d already stored", sent, len(stored))
    return sent


def extract(store: Store, model: FeatureModel, kafka: KafkaSettings, expected: int) -> None:
    """Run the extract worker until the images topic is drained, then apply stock."""
    stack.run_stock_sync(store, kafka, drain=True)
    if expected == 0:
        return
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("extract", total=expected)
        _, metrics = stack.run_extract(
            store,
            model,
            kafka,
            ModelSettings(),
            drain=True,
            on_progress=lambda n, _lag: bar.advance(task, n),
        )
    t = metrics.totals
    log.info(
        "extract: %d images stored, %d dead letters; decode %.1fs, infer %.1fs, write %.1fs",
        t.images,
        t.dead_letters,
        t.seconds["decode"],
        t.seconds["infer"],
        t.seconds["write"],
    )


def spark_search(
    store: Store, model: ModelInfo, queries: npt.NDArray[np.float32], opts: ScoreOptions
) -> QueryAnswer:
    """Score the query with the Spark job (which writes query_results); Spark stops after."""
    from search.spark.job import load_features, score_queries
    from search.spark.session import spark_scope

    settings = SparkSettings()
    with spark_scope(settings, store_url=store.url) as spark:
        features = load_features(spark, store.url, model, settings.shards, settings)
        return score_queries(spark, features, store.url, model, queries, opts)[0]


def run_demo(images: Path | None, console: Console) -> DemoResult:
    core = CoreSettings()
    started = time.monotonic()
    catalogue, query_path, expected = prepare_catalogue(core, images)
    console.print(
        f"catalogue: {len(catalogue.listings)} listings, {catalogue.image_count} images ({catalogue.root})"
    )
    store = stack.configured_store(core)
    model = stack.configured_model(ModelSettings(), core)
    with kafka_settings(core) as kafka:
        sent = ingest(catalogue, store, model, kafka)
        extract(store, model, kafka, sent)
    query = model.embed_images([Image.open(query_path).convert("RGB")])
    opts = ScoreOptions(k=min(10, len(catalogue.listings)))
    spark_answer = spark_search(store, model.info, query, opts)
    stored = answer_from_rows(spark_answer.query_id, store.read_query_results(spark_answer.query_id))
    service = SearchService(store, load_index(store, model.info, progress=True), lambda: model)
    engine_answer = service.search_vector(query[0], opts)

    print_answer(
        console,
        stored,
        f"Listings like {query_path.name} (Spark, read back from query_results)",
        expected,
    )
    same = [r.listing_id for r in stored.results] == [r.listing_id for r in engine_answer.results]
    top = stored.results[0].listing_name if stored.results else None
    console.print(
        f"in-memory engine ranking {'[green]agrees[/]' if same else '[red]DIFFERS[/]'} with Spark; "
        f"top listing {top!r} {'[green]is[/]' if top == expected else '[red]is not[/]'} "
        f"the one the query photo came from ({expected!r}); {time.monotonic() - started:.0f}s in all"
    )
    return DemoResult(stored, engine_answer, expected, store, service)
