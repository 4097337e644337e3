"""The spark-serve benchmark's clients (bench/spark_serve.py) on the real wire, before the service:
a stand-in answers each SearchMessage on lookalike.queries with an AnswerNotice, a pass at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import search_data
from bench.spark_serve import Answers, Client, batch_sum_count, burst, closed_loop, fill_store, mean_batch
from messaging.admin import ensure_topics
from messaging.tail import TopicTail
from schemas.records import ModelInfo
from search.spark.messages import ANSWERS_TOPIC, QUERIES_TOPIC, AnswerNotice, SearchMessage
from store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration
MODEL = ModelInfo("bench", "1", 16, "float16", "random:bench")


class StandIn:
    """Answers whatever is waiting on the queries topic as one pass; a model it does not know
    gets an error notice, as the service does."""

    def __init__(self, bootstrap: str) -> None:
        self.passes: list[int] = []
        self._tail = TopicTail(
            {"bootstrap.servers": bootstrap}, QUERIES_TOPIC, int(time.time() * 1000) - 1000
        )
        self._producer = Producer({"bootstrap.servers": bootstrap})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ready(self) -> None:
        while not self._tail.status.startswith("following"):  # its thread reads
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._tail.read(256, 0.05)
            if not batch:
                continue
            self.passes.append(len(batch))
            for _, value in batch:
                query = SearchMessage.parse(value)
                error = None if query.model == MODEL.name else f"unknown model {query.model}"
                notice = AnswerNotice(query_id=query.query_id, results=0 if error else 10, error=error)
                self._producer.produce(ANSWERS_TOPIC, notice.value(), notice.key())
            self._producer.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._tail.close()


@pytest.fixture
def wire(broker: str) -> Iterator[tuple[Client, StandIn]]:
    ensure_topics({"bootstrap.servers": broker}, [QUERIES_TOPIC, ANSWERS_TOPIC], 2)
    stand_in, answers = StandIn(broker), Answers(broker)
    stand_in.ready()
    answers.ready()
    yield Client(broker, MODEL, answers, timeout_s=30), stand_in
    answers.close()
    stand_in.close()


def test_clients_get_one_notice_per_query(wire: tuple[Client, StandIn]) -> None:
    client, stand_in = wire
    queries = search_data.queries(search_data.make(64, MODEL.dim), 40)
    seconds, notice = client.ask(queries[0])
    assert seconds > 0 and notice.results == 10 and notice.error is None
    loop = closed_loop(client, queries, clients=8, per_client=3)
    assert loop["rps"] > 0 and loop["p99_ms"] >= loop["p50_ms"] > 0
    assert burst(client, queries[:16]) > 0
    assert sum(stand_in.passes) == 1 + 24 + 16  # every query sent once


def test_an_error_notice_fails_the_run(broker: str, wire: tuple[Client, StandIn]) -> None:
    client, _ = wire
    other = Client(broker, ModelInfo("nope", "1", MODEL.dim, "float16", "x"), client.answers, timeout_s=30)
    with pytest.raises(RuntimeError, match="unknown model nope"):
        other.ask(np.full(MODEL.dim, 0.25, dtype=np.float32))


def test_mean_batch_from_the_services_histogram() -> None:
    registry = CollectorRegistry()
    passes = Histogram("lookalike_spark_serve_batch_queries", "queries per pass", registry=registry)
    for n in (1, 3):
        passes.observe(n)
    before = batch_sum_count(generate_latest(registry).decode())
    for n in (8, 32):
        passes.observe(n)
    after = batch_sum_count(generate_latest(registry).decode())
    assert before == (4.0, 2.0) and mean_batch(before, after) == 20.0
    assert batch_sum_count("# nothing about passes\nup 1\n") is None
    assert mean_batch(before, before) is None


def test_the_catalogue_goes_to_the_store(sqlite_store: SQLiteStore) -> None:
    data = search_data.make(40, MODEL.dim)
    fill_store(sqlite_store, data, MODEL, batch=16)
    assert sqlite_store.count_features(MODEL) == 40
    assert len(sqlite_store.all_stock()) == len(np.unique(data.listing_ids))
