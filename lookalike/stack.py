"""Wiring: build each component from settings. Nothing here runs at import."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from analytics.fresh import AlertPublisher, FreshScorer
from analytics.run import analytics_store
from api.deps import Components, Ingest
from config.settings import KafkaSettings, Settings
from extract.metrics import ExtractMetrics
from extract.model import FeatureModel, load_model, resolve_model_name
from extract.pipeline import ExtractPipeline
from extract.steps import DeadLetters, DecodeOptions
from extract.writer import StoreWriter
from messaging.admin import ensure_topics, wait_for_topics
from messaging.consumer import ConsumerLoop, LoopStats, Message
from messaging.errors import BrokerUnavailable
from messaging.producer import KafkaProducer
from schemas.messages import MessageError, model_topic, parse_stock
from search.follow import ChangeObserver
from search.loader import load_index
from search.service import SearchService
from search.spark.client import SparkSearchClient
from search.spark.remote import SparkSearch
from search.store_lookup import StoreLookup
from store import Store, StoreError, open_store
from store.blobs import BlobStore, open_blobs
from store.models import register_model, stored_model
from store.outbox import Outbox

log = logging.getLogger(__name__)


def configured_store(settings: Settings, apply_schema: bool = True) -> Store:
    store = open_store(settings.core.store_url(), settings.cassandra)
    if apply_schema:
        store.apply_schema()
    return store


def configured_blobs(settings: Settings) -> BlobStore:
    """Where every image's original bytes are kept (LOOKALIKE_BLOBS_URL; a folder by default)."""
    return open_blobs(settings.blobs.blobs_url(settings.core.data_dir), settings.blobs)


def configured_model(settings: Settings) -> FeatureModel:
    m, ex = settings.model, settings.extract
    return load_model(
        m.name,
        weights=m.weights,
        allow_random=m.allow_random and not settings.core.production,
        dtype=m.dtype,
        device=m.device,
        amp=ex.amp,
        channels_last=ex.channels_last,
        production=settings.core.production,  # "auto" then means VGG16 fc7, weights required
    )


def model_name(settings: Settings) -> str:
    """The configured model's name, ``auto`` resolved: what extract stores vectors under."""
    return resolve_model_name(
        settings.model.name, settings.model.weights, production=settings.core.production
    )


def search_service(
    settings: Settings,
    store: Store,
    model: str | None = None,
    *,
    progress: bool = False,
    score_arrivals: bool = False,
    snapshot: Path | None = None,
) -> SearchService:
    """The engine over every stored vector of ``model`` (the configured one by default), kept
    fresh by a follower; the CNN for image queries is loaded on first use. ``score_arrivals``:
    the follower also scores new images against the last analytics run (and alerts).
    ``snapshot``: the vectors mapped from that snapshot instead of scanned from the store."""
    info = stored_model(store, model or model_name(settings))
    kafka = settings.kafka if settings.kafka.bootstrap else None
    following = settings.search.follow in ("stream", "scan") or (settings.search.follow == "auto" and kafka)
    observers = arrival_observers(settings, store, info.name) if score_arrivals and following else []
    index = load_index(
        store, info, settings.search, kafka, progress=progress, observers=observers, snapshot=snapshot
    )
    return SearchService(
        store,
        index,
        lazy(lambda: configured_model(settings)),
        settings.model.max_pixels,
        batch_max=settings.search.batch_max,
        decode_threads=settings.api.model_concurrency,
        embed_batch_max=settings.model.batch_size,
    )


def spark_search(settings: Settings, store: Store, model: str | None = None) -> SparkSearch:
    """Searches answered by the Spark search service (``LOOKALIKE_SEARCH_ENGINE=spark``): no
    vector is loaded here, a query's vector is looked up in the store or embedded by the CNN
    (loaded on first use)."""
    if not settings.kafka.bootstrap:
        raise ValueError(
            "LOOKALIKE_SEARCH_ENGINE=spark needs LOOKALIKE_KAFKA_BOOTSTRAP (its queries go through Kafka)"
        )
    info = stored_model(store, model or model_name(settings))
    service = SearchService(
        store, StoreLookup(store, info), lazy(lambda: configured_model(settings)), settings.model.max_pixels
    )
    return SparkSearch(service, SparkSearchClient(settings.kafka), settings.search.spark_timeout_s)


def api_components(
    settings: Settings,
    service: SearchService | None = None,
    spark: SparkSearch | None = None,
    *,
    snapshot: Path | None = None,
    process: str = "",
    score_arrivals: bool = True,
) -> Components:
    """What the API's routers use: the query service (loaded from the store unless given; with
    the ``spark`` engine, the Spark search service's client and no index) and, when Kafka is
    configured, the ingest producer. One of several serving processes (``process`` says which)
    maps ``snapshot``; one of them scores arrivals (one alert each)."""
    if service is None and spark is None and settings.search.engine == "spark":
        spark = spark_search(settings, configured_store(settings))
    if spark is not None:
        service = spark.service
    service = service or search_service(
        settings,
        configured_store(settings),
        progress=not process,
        score_arrivals=score_arrivals,
        snapshot=snapshot,
    )
    kafka = settings.kafka
    blobs = configured_blobs(settings)
    if not kafka.bootstrap:
        return Components(service, blobs=blobs, process=process)
    # bounded delivery: an upload answered 503 is never delivered later behind the client's back
    producer = KafkaProducer(
        kafka.client_config(),
        kafka.max_message_bytes,
        ack_timeout_s=kafka.delivery_timeout_s,
        delivery_timeout_s=kafka.delivery_timeout_s,
    )
    return Components(
        service, Ingest(producer, kafka, Outbox(blobs)), blobs=blobs, spark=spark, process=process
    )


def stack_topics(kafka: KafkaSettings) -> list[str]:
    """The topics the live stack uses (a model's re-embedding topic is its workers' own)."""
    return [kafka.images_topic, kafka.stock_topic, kafka.dlq_topic, kafka.alerts_topic]


def clear_outbox(blobs: BlobStore) -> Callable[[Sequence[Message]], None]:
    """The consumer loops' ``on_stored`` hook: the outbox records of stored messages go."""
    outbox = Outbox(blobs)

    def clear(messages: Sequence[Message]) -> None:
        outbox.done_with(m.headers() for m in messages)

    return clear


def arrival_observers(settings: Settings, store: Store, model: str) -> list[ChangeObserver]:
    """Analytics' scoring of images stored after the last run, for the index follower; alerts go
    to the alerts topic when Kafka is configured. None when the store keeps no analytics."""
    try:
        target = analytics_store(store)
    except StoreError as exc:
        log.info("arrivals are not scored: %s", exc)
        return []
    kafka, publish = settings.kafka, None
    if kafka.bootstrap:
        conf = kafka.client_config()
        try:  # a replica started while the broker is away still starts (its follower waits)
            ensure_topics(conf, [kafka.alerts_topic], kafka.partitions, kafka.replication, timeout_s=5.0)
        except BrokerUnavailable as exc:
            log.warning("alerts topic not checked (%s): the first alert creates it", exc)
        publish = AlertPublisher(KafkaProducer(conf, kafka.max_message_bytes), kafka.alerts_topic)
    return [FreshScorer(target, model, publish)]


def lazy(build: Callable[[], FeatureModel]) -> Callable[[], FeatureModel]:
    """``build`` called once, on first use."""
    made: list[FeatureModel] = []

    def get() -> FeatureModel:
        if not made:
            made.append(build())
        return made[0]

    return get


def default_batch_size(model: FeatureModel) -> int:
    return model.default_batch


def default_decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_extract(
    store: Store,
    model: FeatureModel,
    settings: Settings,
    *,
    drain: bool = False,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    metrics: ExtractMetrics | None = None,
    blobs: BlobStore | None = None,
    finish: threading.Event | None = None,
    lag_interval_s: float = 5.0,
) -> tuple[LoopStats, ExtractMetrics]:
    """Consume ``lookalike.images`` and the model's own re-embedding topic
    (``lookalike.images.<model>``) into the store until stopped (or drained, or drained once
    ``finish`` is set); the original bytes are kept in the blob store (the configured one
    unless given) and the outbox records of what is stored are cleared. A broker that is not
    there yet is waited for (its topics are created once it answers)."""
    ex, kafka, model_settings = settings.extract, settings.kafka, settings.model
    metrics = metrics or ExtractMetrics()
    conf = kafka.client_config()
    topics = [kafka.images_topic, model_topic(kafka.images_topic, model.info.name)]
    stop = stop or threading.Event()
    if not wait_for_topics(conf, [*topics, kafka.dlq_topic], kafka.partitions, kafka.replication, stop):
        return LoopStats(), metrics
    blobs = blobs or configured_blobs(settings)
    register_model(store, model.info)
    dlq = KafkaProducer(conf, kafka.max_message_bytes)
    opts = DecodeOptions(
        model_settings.max_pixels,
        ex.fetch_timeout_s,
        ex.max_reference_bytes,
        jpeg_on_device=ex.gpu_decode and model.cuda,
    )
    pipeline = ExtractPipeline(
        model,
        StoreWriter(
            store,
            model_settings.dtype,
            blobs=blobs,
            blobs_give_up_after_s=settings.blobs.give_up_after_s or None,
        ),
        DeadLetters(dlq, kafka.dlq_topic),
        opts,
        metrics,
        decode_workers=ex.decode_workers or default_decode_workers(),
        prefetch_batches=ex.prefetch_batches,
    )
    try:
        loop = ConsumerLoop(
            conf,
            kafka.extract_group(model.info.name),
            topics,
            pipeline,
            batch_size=model_settings.batch_size or default_batch_size(model),
            session_timeout_ms=ex.session_timeout_ms,
            observer=metrics,
            lag_interval_s=lag_interval_s,
            on_stored=clear_outbox(blobs),
            name="extract worker",
        )
        try:
            stats = loop.run(stop, until_drained=drain, on_progress=on_progress, finish=finish)
            return stats, metrics
        finally:
            loop.close()
    finally:
        pipeline.close()
        dlq.close()  # dead letters were each acknowledged before their batch was committed


def run_stock_sync(
    store: Store,
    kafka: KafkaSettings,
    *,
    drain: bool = False,
    stop: threading.Event | None = None,
    finish: threading.Event | None = None,
    blobs: BlobStore | None = None,
) -> LoopStats:
    """Follow ``lookalike.stock`` into ``stock_level``; a bad message is logged and skipped.
    ``blobs``: where the outbox records of applied levels are cleared (every entry point passes
    it: a record left would replay a stale level; None only in tests without an API). A broker
    that is not there yet is waited for."""
    conf = kafka.client_config()
    stop = stop or threading.Event()
    if not wait_for_topics(conf, [kafka.stock_topic], kafka.partitions, kafka.replication, stop):
        return LoopStats()

    def handle(batch: Sequence[Message]) -> None:
        levels = []
        for m in batch:
            try:
                levels.append(parse_stock(m.value()))
            except MessageError as exc:
                log.warning(
                    "skipping stock message %s[%d]@%d: %s",
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    exc,
                )
        store.put_stock(levels)

    cleared = clear_outbox(blobs) if blobs is not None else None
    loop = ConsumerLoop(
        conf,
        kafka.stock_group,
        [kafka.stock_topic],
        handle,
        batch_size=500,
        on_stored=cleared,
        name="stock follower",
    )
    try:
        return loop.run(stop, until_drained=drain, finish=finish)
    finally:
        loop.close()


class BackgroundLoops:
    """Long-running loops (an extract worker, the stock follower) on threads of this process,
    each given the same stop and finish events. ``drain`` sets ``finish``: each loop empties
    its topics, commits and returns; ``close`` sets ``stop`` and waits, so each loop finishes
    the batches in flight and commits what it stored. A loop that dies is logged and reported
    to ``on_failure`` (its name), e.g. to stop the server it feeds."""

    def __init__(self, on_failure: Callable[[str], None] | None = None) -> None:
        self.stop = threading.Event()
        self.finish = threading.Event()
        self.failed: list[str] = []
        self.metrics = ExtractMetrics()  # the extract worker's (progress of a drain)
        self.on_failure = on_failure
        self._threads: list[threading.Thread] = []

    def running(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def drain(self, timeout_s: float, tick: Callable[[], None] | None = None) -> bool:
        """Let each loop empty what the broker holds, then return: True once all have, False
        at ``timeout_s``. ``tick`` is called about once a second meanwhile (progress)."""
        self.finish.set()
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            for thread in self._threads:
                thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
                if tick is not None:
                    tick()
        return not self.running()

    def start(self, name: str, loop: Callable[[threading.Event, threading.Event], object]) -> None:
        def run() -> None:
            try:
                loop(self.stop, self.finish)
            except BaseException:
                log.exception("%s stopped", name)
                self.failed.append(name)
                if self.on_failure is not None:
                    self.on_failure(name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self, timeout_s: float = 60.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s did not stop within %.0fs", thread.name, timeout_s)


def start_live_workers(
    store: Store,
    model: FeatureModel,
    settings: Settings,
    loops: BackgroundLoops | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> BackgroundLoops:
    """An extract worker and the stock follower on threads until ``close``; what they store is
    logged, so a new upload can be followed on the console."""

    def stored(n: int, _lag: int | None) -> None:
        if n:
            log.info("extract: %d image%s stored", n, "" if n == 1 else "s")

    loops = loops or BackgroundLoops()
    loops.on_failure = on_failure
    blobs = configured_blobs(settings)
    loops.start(
        "extract-worker",
        lambda stop, finish: run_extract(
            store,
            model,
            settings,
            stop=stop,
            finish=finish,
            on_progress=stored,
            metrics=loops.metrics,
            blobs=blobs,
            lag_interval_s=1.0,
        ),
    )
    loops.start(
        "stock-follower",
        lambda stop, finish: run_stock_sync(store, settings.kafka, stop=stop, finish=finish, blobs=blobs),
    )
    return loops
