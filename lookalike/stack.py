"""Wiring: build each component from settings. Nothing here runs at import."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Message

from extract.metrics import ExtractMetrics
from extract.model import FeatureModel, load_model
from extract.pipeline import ExtractPipeline
from extract.worker import DeadLetters, DecodeOptions
from extract.writer import StoreWriter
from ingest.broker import ensure_topics
from ingest.producer import KafkaProducer
from lookalike.consumer import ConsumerLoop, LoopStats
from lookalike.settings import CoreSettings, ExtractSettings, KafkaSettings, ModelSettings
from schemas.messages import MessageError, parse_stock
from schemas.records import ModelInfo
from store import Store, StoreError, open_store

log = logging.getLogger(__name__)


def configured_store(core: CoreSettings | None = None, apply_schema: bool = True) -> Store:
    store = open_store((core or CoreSettings()).store_url())
    if apply_schema:
        store.apply_schema()
    return store


def configured_model(
    settings: ModelSettings | None = None,
    core: CoreSettings | None = None,
    extract: ExtractSettings | None = None,
) -> FeatureModel:
    m, core, ex = settings or ModelSettings(), core or CoreSettings(), extract or ExtractSettings()
    return load_model(
        m.name,
        weights=m.weights,
        allow_random=m.allow_random and not core.production,
        dtype=m.dtype,
        device=m.device,
        amp=ex.amp,
        channels_last=ex.channels_last,
    )


def stored_model(store: Store, name: str | None = None) -> ModelInfo:
    """The model whose vectors the store holds under ``name`` (the configured one by default)."""
    name = name or ModelSettings().name
    info = store.get_model(name)
    if info is None:
        raise RuntimeError(f"the store holds no vectors of model {name}: run `lookalike extract` first")
    return info


def register_model(store: Store, info: ModelInfo) -> None:
    """Record the model; refuse to mix vectors of other weights under the same name."""
    known = store.get_model(info.name)
    if known is not None and (known.dim, known.dtype, known.weights) != (
        info.dim,
        info.dtype,
        info.weights,
    ):
        raise StoreError(
            f"the store holds {info.name} vectors made by {known.weights} ({known.dtype}); this worker "
            f"has {info.weights} ({info.dtype}). Use another store, or re-extract everything."
        )
    store.put_model(info)


def default_batch_size(model: FeatureModel) -> int:
    return 64 if model.device.type == "cuda" else 16


def default_decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_extract(
    store: Store,
    model: FeatureModel,
    kafka: KafkaSettings,
    model_settings: ModelSettings,
    *,
    drain: bool = False,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    extract: ExtractSettings | None = None,
    metrics: ExtractMetrics | None = None,
) -> tuple[LoopStats, ExtractMetrics]:
    """Consume ``lookalike.images`` into the store until stopped (or drained)."""
    ex, metrics = extract or ExtractSettings(), metrics or ExtractMetrics()
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.images_topic, kafka.dlq_topic], kafka.partitions, kafka.replication)
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
        StoreWriter(store, model_settings.dtype),
        DeadLetters(dlq, kafka.dlq_topic),
        opts,
        metrics,
        decode_workers=ex.decode_workers or default_decode_workers(),
        prefetch_batches=ex.prefetch_batches,
    )
    try:
        loop = ConsumerLoop(
            conf,
            kafka.group,
            [kafka.images_topic],
            pipeline,
            batch_size=model_settings.batch_size or default_batch_size(model),
            session_timeout_ms=ex.session_timeout_ms,
            observer=metrics,
        )
        try:
            return loop.run(stop, until_drained=drain, on_progress=on_progress), metrics
        finally:
            loop.close()
    finally:
        pipeline.close()
        dlq.flush()


def run_stock_sync(
    store: Store, kafka: KafkaSettings, *, drain: bool = False, stop: threading.Event | None = None
) -> LoopStats:
    """Follow ``lookalike.stock`` into ``stock_level``; a bad message is logged and skipped."""
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.stock_topic], kafka.partitions, kafka.replication)

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

    loop = ConsumerLoop(conf, kafka.stock_group, [kafka.stock_topic], handle, batch_size=500)
    try:
        return loop.run(stop, until_drained=drain)
    finally:
        loop.close()
