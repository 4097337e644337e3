"""The main job on the embedded defaults: broker, SQLite, Spark local, the CNN, the API.

Every stage is the real one: images go through Kafka, the extract worker stores vectors,
Spark scores the held-out query and writes ``query_results``, the in-memory engine answers
the same query, and the API serves the result. While it serves, the stack stays live: the
broker, an extract worker, the stock follower and the index follower keep running, so a photo
uploaded to ``POST /v1/images`` (or on the page) becomes searchable within seconds.

The embedded broker keeps nothing across a stop, so the stack's topics are created as soon as
it starts, and what the API acknowledged and no worker stored before the last stop (however it
ended: SIGKILL included) is produced again from the ingest outbox before anything else; a
graceful stop drains the broker first (``lookalike/drain.py``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import uvicorn
from PIL import Image
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.app import create_app
from config.settings import ApiSettings, CoreSettings, KafkaSettings, Settings
from extract.model import FeatureModel
from ingest.catalogue import DEMO_QUERY_LISTING, Catalogue, build_demo_catalogue, scan_folder, view
from ingest.producer import catalogue_stock, image_messages, send_images, send_stock
from ingest.replay import replay
from lookalike import stack
from lookalike.drain import DrainingServer
from lookalike.output import print_answer
from messaging.admin import wait_for_topics
from messaging.broker import EmbeddedBroker
from messaging.producer import KafkaProducer
from schemas import ids
from schemas.records import ModelInfo, QueryAnswer
from search.loader import load_index, load_memory_index
from search.scoring import ScoreOptions
from search.service import SearchService
from search.spark.remote import SparkSearch
from search.tier import SearchIndex
from store import Store
from store.outbox import Outbox
from store.results import answer_from_rows

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    spark: QueryAnswer
    engine: QueryAnswer
    expected_listing: str
    store: Store
    service: SearchService
    model: FeatureModel
    settings: Settings  # with the Kafka the demo used (the embedded broker's address)
    remote: SparkSearch | None = None  # engine spark: the Spark search service answers searches


@contextlib.contextmanager
def with_broker(settings: Settings) -> Iterator[Settings]:
    """The settings with the configured Kafka, or with an embedded broker for the block."""
    if settings.kafka.bootstrap:
        yield settings
        return
    if settings.core.production:
        raise ValueError("LOOKALIKE_PRODUCTION=1 needs LOOKALIKE_KAFKA_BOOTSTRAP (no embedded broker)")
    with EmbeddedBroker() as broker:
        yield replace(settings, kafka=settings.kafka.model_copy(update={"bootstrap": broker.bootstrap}))


def create_topics(kafka: KafkaSettings) -> None:
    """The stack's topics, before any reader starts (a follower of a topic that does not exist
    yet waits for it; creating them first spares it the wait)."""
    wait_for_topics(kafka.client_config(), stack.stack_topics(kafka), kafka.partitions, kafka.replication)


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


def ingest(
    catalogue: Catalogue, store: Store, model: FeatureModel, kafka: KafkaSettings, outbox: Outbox
) -> int:
    """Produce what the outbox holds (acknowledged before the last stop, never stored), the
    catalogue's images not stored yet, and every stock level. Returns the messages produced
    to the images topic."""
    all_ids = [ids.image_id(li.name, p.name) for li in catalogue.listings for p in li.images]
    stored = store.existing_images(all_ids, model.info.name)
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        replayed = replay(outbox, producer, topics={kafka.images_topic, kafka.stock_topic}, progress=True)
        sent = send_images(producer, kafka.images_topic, image_messages(catalogue, skip=stored))
        send_stock(producer, kafka.stock_topic, catalogue_stock(catalogue))
    log.info("ingest: %d images produced, %d already stored", sent, len(stored))
    return sent + replayed[kafka.images_topic]


def extract(store: Store, model: FeatureModel, settings: Settings, expected: int) -> None:
    """Run the extract worker until the images topic is drained, then apply stock."""
    stack.run_stock_sync(store, settings.kafka, drain=True, blobs=stack.configured_blobs(settings))
    if expected == 0:
        return
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("extract", total=expected)
        _, metrics = stack.run_extract(
            store,
            model,
            settings,
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
    settings: Settings, store: Store, model: ModelInfo, queries: npt.NDArray[np.float32], opts: ScoreOptions
) -> QueryAnswer:
    """Score the query with the Spark job (which writes query_results); Spark stops after."""
    from search.spark.job import load_features, score_queries
    from search.spark.session import spark_scope

    spark_settings = settings.spark
    with spark_scope(spark_settings, store_url=store.url) as spark:
        features = load_features(spark, store.url, model, spark_settings.shards, spark_settings)
        return score_queries(spark, features, store.url, model, queries, opts, settings.search.dtype)[0]


@contextlib.contextmanager
def demo_session(
    settings: Settings, images: Path | None, console: Console, *, live: bool
) -> Iterator[DemoResult]:
    """The demo run with a broker (embedded unless configured) that stays up for the block;
    ``live``: the index follows the images topic, so what is extracted later is searchable."""
    with with_broker(settings) as with_kafka, contextlib.ExitStack() as services:
        create_topics(with_kafka.kafka)
        result = run_demo(with_kafka, images, console, follow=live, services=services)
        try:
            yield result
        finally:  # the index follower reads the topic: it stops before the broker does
            stop_following(result.service.index)
            result.store.close()


def run_demo(
    settings: Settings,
    images: Path | None,
    console: Console,
    *,
    follow: bool = False,
    services: contextlib.ExitStack | None = None,
) -> DemoResult:
    """``settings.kafka`` must name a broker (see :func:`demo_session`). Engine ``spark``: the
    Spark search service is started into ``services`` (stopped when it closes) and the query
    goes through it."""
    core = settings.core
    started = time.monotonic()
    catalogue, query_path, expected = prepare_catalogue(core, images)
    console.print(
        f"catalogue: {len(catalogue.listings)} listings, {catalogue.image_count} images ({catalogue.root})"
    )
    store = stack.configured_store(settings)
    model = stack.configured_model(settings)
    console.print(f"model: {model.describe()}", markup=False, highlight=False, soft_wrap=True)
    sent = ingest(catalogue, store, model, settings.kafka, Outbox(stack.configured_blobs(settings)))
    extract(store, model, settings, sent)
    query = model.embed_images([Image.open(query_path).convert("RGB")])
    opts = ScoreOptions(k=min(10, len(catalogue.listings)))
    remote = None
    if settings.search.engine == "spark":
        from lookalike.demo_spark import served_search

        remote, spark_answer = served_search(settings, store, model, query[0], opts, services)
    else:
        spark_answer = spark_search(settings, store, model.info, query, opts)
    stored = answer_from_rows(spark_answer.query_id, store.read_query_results(spark_answer.query_id))
    follow = follow and remote is None  # engine spark: the API holds no index
    observers = (
        stack.arrival_observers(settings, store, model.info.name) if follow else []
    )  # analytics alerts
    index = (
        load_memory_index(store, model.info, settings.search)  # only to compare the answers
        if remote is not None
        else load_index(
            store,
            model.info,
            settings.search,
            settings.kafka if follow else None,
            progress=True,
            observers=observers,
        )
    )
    service = SearchService(
        store,
        index,
        lambda: model,
        settings.model.max_pixels,
        batch_max=settings.search.batch_max,
        decode_threads=settings.api.model_concurrency,
        embed_batch_max=settings.model.batch_size,
    )
    engine_answer = service.search_vector(query[0], opts)

    print_answer(
        console,
        stored,
        f"Listings like {query_path.name} "
        f"({'the Spark search service' if remote else 'Spark'}, read back from query_results)",
        expected,
    )
    same = [r.listing_id for r in stored.results] == [r.listing_id for r in engine_answer.results]
    top = stored.results[0].listing_name if stored.results else None
    console.print(
        f"in-memory engine ranking {'[green]agrees[/]' if same else '[red]DIFFERS[/]'} with Spark; "
        f"top listing {top!r} {'[green]is[/]' if top == expected else '[red]is not[/]'} "
        f"the one the query photo came from ({expected!r}); {time.monotonic() - started:.0f}s in all"
    )
    served = remote.service if remote is not None else service  # what the API searches with
    return DemoResult(stored, engine_answer, expected, store, served, model, settings, remote)


# ---- serving the live stack --------------------------------------------------------------


def session_key(api: ApiSettings) -> tuple[ApiSettings, str | None]:
    """The API settings with a key for the ingest endpoints: those of ``LOOKALIKE_API_KEYS``
    when set (None returned: nothing to print), else a new random one, returned to be printed."""
    if api.keys:
        return api, None
    key = secrets.token_urlsafe(24)
    return api.model_copy(update={"keys": [SecretStr(key)]}), key


def print_usage(console: Console, api: ApiSettings, key: str | None) -> None:
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    base = f"http://{host}:{api.port}"
    lines = [f"API and web page on {base}  (Ctrl-C to stop)"]
    if key is None:
        lines.append("API key: one of LOOKALIKE_API_KEYS")
    else:
        lines += [
            f"API key for this session: {key}",
            f"  the page, ready to add photos: {base}/#key={key}",
        ]
    shown = key or "YOUR-KEY"
    lines += [
        "  add a photo to a new or existing listing (searchable within seconds):",
        f'  curl -H "X-API-Key: {shown}" -F listing=my-listing -F image=@photo.jpg {base}/v1/images',
        "  find listings like a photo:",
        f"  curl -F image=@photo.jpg {base}/v1/search/image",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.file.flush()  # at once, also into a pipe: the key is needed while the demo serves


def serve_live(result: DemoResult, console: Console) -> int:
    """Serve the API (ingest on) while an extract worker and the stock follower run on threads
    and the index follows the images topic. SIGINT (Ctrl-C) or SIGTERM stops gracefully
    (``lookalike/drain.py``): writes refused, the broker drained into the store, then the
    server and the workers; the caller stops the broker. Returns the exit status: 0, or 1 when
    a worker died (the server is stopped then too)."""
    settings = result.settings
    api, key = session_key(settings.api)
    components = stack.api_components(settings, result.service, result.remote)
    app = create_app(api, components)
    config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning")
    loops = stack.BackgroundLoops()
    gate = components.ingest.gate if components.ingest is not None else None
    server = DrainingServer(config, gate, loops, api.drain_timeout_s)

    def worker_died(name: str) -> None:
        log.error("%s died: stopping the demo", name)
        server.should_exit = True

    with stop_on_signals(server):
        stack.start_live_workers(result.store, result.model, settings, loops, worker_died)
        try:
            print_usage(console, api, key)
            if result.remote is not None:
                console.print("searches are answered by the Spark search service (lookalike spark-serve)")
            server.run()  # uvicorn handles SIGINT/SIGTERM while it serves, then hands them on
        finally:
            log.info("stopping the extract worker and the stock follower")
            loops.close()
    log.info("demo stopped")
    return 1 if loops.failed else 0


@contextlib.contextmanager
def stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGINT / SIGTERM outside uvicorn's own handling (before it serves, or passed on by it
    after its shutdown): ask the server to exit; the caller then stops the rest in order."""

    def stop(signum: int, frame: object) -> None:
        if not server.should_exit:
            log.info("%s: stopping", signal.Signals(signum).name)
        server.should_exit = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_following(index: SearchIndex) -> None:
    """Stop the index's follower thread, if any, and close its topic reader."""
    follower = index.follower
    if follower is None:
        return
    follower.stop()
    close = getattr(follower.source, "close", None)
    if close is not None:
        close()
    index.follower = None
