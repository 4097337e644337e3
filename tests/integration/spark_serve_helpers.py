"""Helpers for the Spark search service tests: a random catalogue, queries sent as
SearchMessages, answers read back, the engine's answer to compare with, the freshness delay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Consumer

from config.settings import KafkaSettings, SearchSettings
from messaging.producer import KafkaProducer
from schemas.codec import l2_normalise
from schemas.messages import ImageMessage
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel
from search.loader import load_index
from search.scoring import ScoreOptions, SearchRequest
from search.spark.messages import AnswerNotice, SearchMessage
from search.tier import SearchIndex
from store import ResultRow, Store

DIM = 32
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")


def build_catalogue(store: Store, listings: int, seed: int = 7) -> list[uuid.UUID]:
    """``listings`` listings of 1 to 6 random vectors each, stock for most (some at 0)."""
    rng = np.random.default_rng(seed)
    rows, stock, ids = [], [], []
    for n in range(listings):
        lid = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | n)
        ids.append(lid)
        for _ in range(int(rng.integers(1, 7))):
            image = ImageRecord(
                lid, uuid.UUID(int=int(rng.integers(0, 2**63))), "test://", "image/jpeg", 1, 1, 1
            )
            rows.append(Extracted(image, f"listing-{n}", MODEL.name, l2_normalise(rng.normal(size=DIM))))
        if n % 7:  # a few listings have no stock level at all
            stock.append(StockLevel(lid, 0 if n % 3 == 0 else n, uuid.uuid4()))
    store.put_model(MODEL)
    for i in range(0, len(rows), 2000):
        store.write_extracted(rows[i : i + 2000], MODEL.dtype)
    store.put_stock(stock)
    return ids


def mixed_requests(n: int, listings: list[uuid.UUID], seed: int = 11) -> list[SearchRequest]:
    """Requests with every aggregation, stock filter, exclusions and a minimum score."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        opts = ScoreOptions(
            k=[5, 10, 25][i % 3],
            aggregation=["max", "mean_top_n", "count_above"][i % 3 if i % 4 else 0],  # type: ignore[arg-type]
            top_n=2,
            threshold=0.2,
            min_score=0.1 if i % 5 == 4 else None,
        )
        exclude = (
            frozenset(listings[int(j)] for j in rng.integers(0, len(listings), 3)) if i % 2 else frozenset()
        )
        vector = l2_normalise(rng.normal(size=DIM)).astype(np.float32)
        out.append(SearchRequest(vector, opts, in_stock_only=i % 3 == 1, exclude=exclude))
    return out


def send(kafka: KafkaSettings, messages: Iterable[tuple[bytes, bytes]], pause_s: float = 0.0) -> None:
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for key, value in messages:
            producer.send(kafka.queries_topic, key, value, [])
            if pause_s:
                producer.flush()
                time.sleep(pause_s)


def search_messages(requests: list[SearchRequest]) -> list[SearchMessage]:
    return [SearchMessage.of(uuid.uuid4(), MODEL.name, r, sent_at=time.time()) for r in requests]


class Answers:
    """Reads the answers topic from its beginning, gathering notices by query id."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.topic = kafka.answers_topic
        self.notices: dict[uuid.UUID, list[AnswerNotice]] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": f"answers-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([self.topic])

    def read(self, timeout_s: float = 0.2) -> None:
        for m in self._consumer.consume(500, timeout_s):
            if m.error() is None:
                n = AnswerNotice.parse(m.value())
                self.notices.setdefault(n.query_id, []).append(n)

    def wait_for(
        self, ids: Iterable[uuid.UUID], timeout_s: float, alive: Callable[[], bool] = lambda: True
    ) -> None:
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(self.notices):
            if time.monotonic() > deadline or not alive():
                missing = len(wanted - set(self.notices))
                raise AssertionError(
                    f"{missing} of {len(wanted)} queries not answered (service alive: {alive()})"
                )
            self.read()

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True)
class Expected:
    listing_ids: list[uuid.UUID]
    scores: list[float]
    images: list[list[uuid.UUID]]
    inventory: list[int | None]


def engine_index(store: Store) -> SearchIndex:
    return load_index(store, MODEL, SearchSettings())


def expected(index: SearchIndex, store: Store, request: SearchRequest) -> Expected:
    """The in-memory engine's answer to one request, with live stock."""
    levels = {s.listing_id: s.inventory for s in store.all_stock()}
    only = {lid for lid, inv in levels.items() if inv > 0} if request.in_stock_only else None
    ranked = index.search(request.vector, request.opts, exclude=request.exclude, only=only)
    return Expected(
        [r.listing_id for r in ranked],
        [r.score for r in ranked],
        [[i for i, _ in r.matches] for r in ranked],
        [levels.get(r.listing_id) for r in ranked],
    )


def check_rows(rows: list[ResultRow], want: Expected) -> None:
    """``query_results`` rows equal the engine's answer: listings, order, matches, stock; scores
    within float16 rounding (the same kernel: in fact equal)."""
    assert [r.listing_id for r in rows] == want.listing_ids
    np.testing.assert_allclose([r.score for r in rows], want.scores, rtol=1e-3, atol=1e-3)
    assert [[i for i, _ in r.matches] for r in rows] == want.images
    assert [r.inventory for r in rows] == want.inventory


def new_image_message(listing: uuid.UUID, image: uuid.UUID) -> ImageMessage:
    return ImageMessage(listing, image, "fresh", "image/jpeg", "test://", b"\xff\xd8")


def add_image(
    store: Store, kafka: KafkaSettings, listing: uuid.UUID, vector: np.ndarray, name: str = "fresh"
) -> uuid.UUID:
    """What an upload does: announced on the images topic, then stored by a worker."""
    image = uuid.uuid4()
    m = new_image_message(listing, image)
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
    record = ImageRecord(listing, image, "test://", "image/jpeg", 1, 1, 1)
    store.write_extracted([Extracted(record, name, MODEL.name, vector)], MODEL.dtype)
    return image


def freshness_delays(
    store: Store, kafka: KafkaSettings, answers: Answers, n: int, timeout_s: float = 60.0
) -> list[float]:
    """Store-write-to-answer delay of ``n`` new images, one at a time: each is stored (and
    announced), then queried with its own vector until the answer's first listing is its
    listing; the delay runs from the store write to that answer's notice."""
    rng = np.random.default_rng(99)
    delays = []
    for _ in range(n):
        listing, vector = uuid.uuid4(), l2_normalise(rng.normal(size=DIM))
        written = time.monotonic()
        add_image(store, kafka, listing, vector)
        deadline = written + timeout_s
        while True:
            msg = SearchMessage.of(
                uuid.uuid4(), MODEL.name, SearchRequest(vector.astype(np.float32), ScoreOptions(k=1))
            )
            send(kafka, [(msg.key(), msg.value())])
            answers.wait_for([msg.query_id], timeout_s)
            rows = store.read_query_results(msg.query_id)
            if rows and rows[0].listing_id == listing:
                delays.append(time.monotonic() - written)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"image of listing {listing} not found within {timeout_s}s")
    return delays


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))
