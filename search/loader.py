"""Loading an index: the in-memory tier (every stored vector of one model) or the compact tier
(reduced codes in memory, full vectors read back from the store), then the follower that keeps
it fresh (the topic when Kafka is configured, else a store scan)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress

from config.settings import KafkaSettings, SearchSettings
from schemas.records import FeatureBatch, ModelInfo
from search import ann
from search.compact_build import build_compact
from search.engine import VectorIndex
from search.follow import ChangeObserver, ChangeSource, Follower, StoreScanSource
from search.follow_kafka import ImageStreamSource
from search.segment import Segment
from search.snapshot import open_snapshot
from search.tier import SearchIndex
from store import Store

log = logging.getLogger(__name__)
SCAN_BATCH = 1024  # rows decoded at a time while loading: the only memory beside the index


def load_index(
    store: Store,
    model: ModelInfo,
    settings: SearchSettings,
    kafka: KafkaSettings | None = None,
    *,
    progress: bool = False,
    observers: Sequence[ChangeObserver] = (),
    snapshot: Path | None = None,
) -> SearchIndex:
    """The index the settings ask for (``tier``), then the follower that keeps it fresh; ``kafka``
    None: no stream to follow. ``observers`` are told each change the follower applied.
    ``snapshot``: the in-memory tier over that snapshot's map instead of a scan of the store
    (its follower reads changes from when the snapshot's scan began)."""
    loaded_from_ms = int(time.time() * 1000)
    index: SearchIndex
    if snapshot is not None:
        index, loaded_from_ms = load_snapshot_index(snapshot, model, settings)
    elif settings.tier == "compact":
        index = build_compact(store, model, settings, progress=progress)
    else:
        index = load_memory_index(store, model, settings, progress=progress)
    index.follower = start_following(store, model, index, settings, kafka, loaded_from_ms, observers)
    return index


def load_memory_index(
    store: Store, model: ModelInfo, settings: SearchSettings, *, progress: bool = False
) -> VectorIndex:
    """Every vector of ``model`` streamed from the store into the in-memory tier."""
    index = VectorIndex(model, settings)
    ann.configure_threads(settings.threads)
    rows = store.count_features(model)  # the final buffer is sized once: no second matrix
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"loading {model.name} vectors", total=rows)
        main, late = Segment.stream(
            store.scan_features(model, batch_size=SCAN_BATCH),
            rows,
            index.dtype,
            model.dim,
            lambda n: bar.advance(task, n),
        )
    index.reset([main])
    if late:  # stored between the count and the scan: the fresh tier takes them
        index.add(FeatureBatch.concat(late, model.dim))
    log.info("index: %d vectors of %s in %d listings", len(index), model.name, index.listing_count)
    return index


def load_snapshot_index(path: Path, model: ModelInfo, settings: SearchSettings) -> tuple[VectorIndex, int]:
    """The in-memory tier over a snapshot mapped read-only (shared with every process mapping
    it), the rows stored during its scan in the fresh tier; and the snapshot's generation."""
    if settings.tier != "memory":
        raise ValueError(f"a snapshot serves the memory tier, not LOOKALIKE_SEARCH_TIER={settings.tier}")
    opened = open_snapshot(path, model, settings.dtype)
    index = VectorIndex(model, settings)
    ann.configure_threads(settings.threads)
    index.adopt(opened.main)
    if len(opened.late):
        index.add(opened.late)
    log.info("index: %d vectors of %s mapped from %s", len(index), model.name, path)
    return index, opened.generation


def start_following(
    store: Store,
    model: ModelInfo,
    index: SearchIndex,
    settings: SearchSettings,
    kafka: KafkaSettings | None,
    loaded_from_ms: int,
    observers: Sequence[ChangeObserver] = (),
) -> Follower | None:
    """The follower the settings ask for, started; None when following is off."""
    mode = settings.follow
    streaming = kafka is not None and bool(kafka.bootstrap)
    if mode == "auto":
        mode = "stream" if streaming else "off"
    if mode == "off":
        log.info("index follower off: vectors stored from now on are searchable after a restart")
        return None
    source: ChangeSource
    if mode == "stream":
        if kafka is None or not streaming:
            raise ValueError("LOOKALIKE_SEARCH_FOLLOW=stream needs LOOKALIKE_KAFKA_BOOTSTRAP")
        since = loaded_from_ms - int(settings.follow_lookback_s * 1000)
        # never off for a topic or broker that is not there yet: the source waits for them
        source = ImageStreamSource(kafka.client_config(), kafka.images_topic, store, model, index, since)
    else:
        source = StoreScanSource(store, model, index)
    log.info("index follower: %s every %.1fs", mode, settings.follow_interval_s)
    return Follower(index, source, settings.follow_interval_s, observers).start()
