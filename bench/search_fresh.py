"""Freshness: from a worker's store write to the vector being in the index the searches read,
following the images topic on an embedded broker (as ``LOOKALIKE_SEARCH_FOLLOW=stream`` does)."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from messaging.admin import ensure_topics
from messaging.broker import EmbeddedBroker
from messaging.producer import KafkaProducer
from schemas.codec import l2_normalise
from schemas.messages import ImageMessage
from schemas.records import Extracted, ImageRecord, ModelInfo
from search.engine import VectorIndex
from search.follow import Follower
from search.follow_kafka import ImageStreamSource
from search.scoring import ScoreOptions
from store import open_store

TOPIC = "bench.images"
TIMEOUT_S = 30.0


def bench_freshness(
    index: VectorIndex, model: ModelInfo, samples: int = 40, interval_s: float = 0.2
) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": broker.bootstrap}
        ensure_topics(conf, [TOPIC], 2)
        store = open_store(f"sqlite:///{Path(tmp) / 'fresh.db'}")
        store.apply_schema()
        store.put_model(model)
        source = ImageStreamSource(conf, TOPIC, store, model, index, int(time.time() * 1000) - 1000)
        follower = Follower(index, source, interval_s).start()
        producer = KafkaProducer(conf, 1_000_000)
        try:
            for i in range(samples):
                listing, image = uuid.uuid4(), uuid.uuid4()
                msg = ImageMessage(listing, image, f"fresh-{i}", "image/jpeg", "bench://", b"pixels")
                producer.send(TOPIC, msg.key(), msg.payload, msg.headers())
                producer.flush()
                time.sleep(float(rng.uniform(0.0, 0.3)))  # the worker decodes and embeds meanwhile
                vector = l2_normalise(rng.standard_normal(model.dim).astype(np.float32))
                record = ImageRecord(listing, image, "bench://", "image/jpeg", 1, 1, 1)
                started = time.perf_counter()
                store.write_extracted([Extracted(record, f"fresh-{i}", model.name, vector)], model.dtype)
                _wait_for(index, image)
                latencies.append(time.perf_counter() - started)
            found = index.search(vector, ScoreOptions(k=1))[0].listing_id == listing
        finally:
            follower.stop()
            source.close()
            store.close()
    ms = np.array(latencies) * 1000
    p99 = float(np.percentile(ms, 99))
    return {
        "how": f"store write -> in the index, following the images topic, polled every {interval_s}s",
        "samples": samples,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(p99, 1),
        "last_write_found_by_search": found,
        "target_met": p99 <= 2000,
    }


def _wait_for(index: VectorIndex, image: uuid.UUID) -> None:
    key = np.array([image.bytes], dtype="S16")
    deadline = time.perf_counter() + TIMEOUT_S
    while not np.isin(key, index.image_id_array())[0]:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"image {image} not searchable after {TIMEOUT_S}s")
        time.sleep(0.002)
