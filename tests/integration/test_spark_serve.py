"""The Spark search service (``lookalike spark-serve``) gives the in-memory engine's answers,
keeps them fresh without a reload, and answers every query exactly once across a SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from config.settings import KafkaSettings, SearchSettings, SparkSettings
from messaging.admin import ensure_topics
from schemas.codec import l2_normalise
from schemas.messages import DeleteMessage
from schemas.records import as_uuid
from search.scoring import ScoreOptions, SearchRequest
from search.spark.messages import SearchMessage
from search.spark.metrics import ServeMetrics
from search.spark.serve import Service
from store import ResultRow, Store, open_store
from tests.integration.kafka_helpers import ROOT
from tests.integration.spark_serve_helpers import (
    DIM,
    MODEL,
    Answers,
    add_image,
    build_catalogue,
    check_rows,
    engine_index,
    expected,
    freshness_delays,
    mixed_requests,
    percentile,
    search_messages,
    send,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


def kafka_for(broker: str, unique: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=broker,
        images_topic=f"img-{unique}",
        queries_topic=f"q-{unique}",
        answers_topic=f"a-{unique}",
        queries_group=f"serve-{unique}",
    )


@contextmanager
def running(
    spark: SparkSession, store: Store, kafka: KafkaSettings, **spark_settings: object
) -> Iterator[Service]:
    """The service on the session's Spark (local[2]), in a thread, stopped on the way out."""
    ensure_topics(kafka.client_config(), [kafka.images_topic], kafka.partitions)
    settings = SparkSettings(master="local[2]", serve_follow_interval_s=0.05, **spark_settings)  # type: ignore[arg-type]
    service = Service(spark, store, MODEL, settings, SearchSettings(), kafka, ServeMetrics())
    stop, failure = threading.Event(), []

    def run() -> None:
        try:
            service.run(stop)
        except BaseException as exc:
            failure.append(exc)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while service.fresh is None and not failure:
            assert time.monotonic() < deadline, "the service did not load its cache"
            time.sleep(0.05)
        yield service
    finally:
        stop.set()
        thread.join(60)
    assert not failure, failure


@pytest.fixture
def catalogue(sqlite_store: Store) -> list[uuid.UUID]:
    return build_catalogue(sqlite_store, 700)


def test_answers_equal_the_engine_and_bad_messages_get_an_error(
    spark: SparkSession, sqlite_store: Store, catalogue: list[uuid.UUID], broker: str, unique: str
) -> None:
    kafka = kafka_for(broker, unique)
    requests = mixed_requests(24, catalogue)
    messages = search_messages(requests)
    short = SearchMessage.of(uuid.uuid4(), MODEL.name, SearchRequest(np.ones(5, np.float32) / 5**0.5))
    other = SearchMessage.of(uuid.uuid4(), "resnet50_pool", SearchRequest(np.ones(DIM, np.float32)))
    garbage_id = uuid.uuid4()
    bad = [(short.key(), short.value()), (other.key(), other.value()), (str(garbage_id).encode(), b"{no")]
    answers = Answers(kafka)
    with running(spark, sqlite_store, kafka, serve_block_rows=500) as service:
        assert service.metrics.totals.vectors == sqlite_store.count_features(MODEL)
        assert service.metrics.totals.blocks > service.metrics.totals.partitions  # several per partition
        send(kafka, [*bad[:2], (b"no id", b"{}"), *[(m.key(), m.value()) for m in messages], bad[2]])
        answers.wait_for([m.query_id for m in messages] + [short.query_id, other.query_id, garbage_id], 300)
    index = engine_index(sqlite_store)
    for m, request in zip(messages, requests, strict=True):
        [notice] = answers.notices[m.query_id]
        rows = sqlite_store.read_query_results(m.query_id)
        assert notice.error is None and notice.results == len(rows)
        check_rows(rows, expected(index, sqlite_store, request))
        if request.in_stock_only:
            assert all(r.inventory for r in rows)
        assert not {r.listing_id for r in rows} & request.exclude
    assert service.metrics.totals.queries == len(messages)
    assert service.metrics.totals.batches < len(messages)  # waiting queries shared passes
    assert f"must have {DIM} values" in (answers.notices[short.query_id][0].error or "")
    assert "not served here" in (answers.notices[other.query_id][0].error or "")
    assert "not a search message" in (answers.notices[garbage_id][0].error or "")
    assert service.metrics.totals.errors == 4  # the one without a query id is only logged
    answers.close()


def test_new_and_removed_vectors_reach_the_answers(
    spark: SparkSession, sqlite_store: Store, catalogue: list[uuid.UUID], broker: str, unique: str
) -> None:
    kafka = kafka_for(broker, unique)
    answers = Answers(kafka)
    rng = np.random.default_rng(5)

    def ask(
        vector: np.ndarray, k: int = 3, aggregation: str = "max", compare: bool = True
    ) -> list[ResultRow]:
        """The service's answer; ``compare``: checked against the engine loaded from the store now."""
        request = SearchRequest(vector.astype(np.float32), ScoreOptions(k=k, aggregation=aggregation))  # type: ignore[arg-type]
        [m] = search_messages([request])
        send(kafka, [(m.key(), m.value())])
        answers.wait_for([m.query_id], 120)
        rows = sqlite_store.read_query_results(m.query_id)
        if compare:
            check_rows(rows, expected(engine_index(sqlite_store), sqlite_store, request))
        return rows

    def listings(rows: list[ResultRow]) -> list[uuid.UUID]:
        return [r.listing_id for r in rows]

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 180
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    with running(spark, sqlite_store, kafka) as service:
        new_listing, vector = uuid.uuid4(), l2_normalise(rng.normal(size=DIM))
        add_image(sqlite_store, kafka, new_listing, vector)
        until(lambda: listings(ask(vector))[0] == new_listing, "a new listing to be found")
        # a new image of a cached listing: the listing is scored whole, every aggregation
        old = catalogue[3]
        add_image(sqlite_store, kafka, old, l2_normalise(rng.normal(size=DIM)))
        until(lambda: service.fresh is not None and service.fresh.rows > 1, "the image to be followed")
        for aggregation in ("max", "mean_top_n", "count_above"):
            ask(l2_normalise(rng.normal(size=DIM)), k=10, aggregation=aggregation)
        # removals leave the answers once announced, before a worker removes them from the store
        send_removal(kafka, DeleteMessage(new_listing))
        until(lambda: new_listing not in listings(ask(vector, compare=False)), "a removed listing to leave")
        sqlite_store.delete_listing(new_listing)
        ask(vector)
        image = sqlite_store.listing_images(catalogue[5])[0].image_id
        probe = sqlite_store.listing_features(catalogue[5], MODEL)
        probe_vector = probe.vectors[[as_uuid(i) for i in probe.image_ids].index(image)]
        send_removal(kafka, DeleteMessage(catalogue[5], image))
        until(
            lambda: all(image not in dict(r.matches) for r in ask(probe_vector, 10, compare=False)),
            "a removed image to leave",
        )
        sqlite_store.delete_images(catalogue[5], [image])
        ask(probe_vector, k=10)
        delays = freshness_delays(sqlite_store, kafka, answers, 5)
    log.info("store write to answer: p50 %.3fs, p99 %.3fs", percentile(delays, 50), percentile(delays, 99))
    answers.close()


def test_compaction_reloads_the_cache_and_keeps_the_answers(
    spark: SparkSession, sqlite_store: Store, catalogue: list[uuid.UUID], broker: str, unique: str
) -> None:
    kafka = kafka_for(broker, unique)
    answers = Answers(kafka)
    rng = np.random.default_rng(6)
    with running(spark, sqlite_store, kafka, serve_fresh_max_rows=2) as service:
        added = [(uuid.uuid4(), l2_normalise(rng.normal(size=DIM))) for _ in range(4)]
        for listing, vector in added:
            add_image(sqlite_store, kafka, listing, vector)
        deadline = time.monotonic() + 300
        while service.metrics.totals.reloads == 0 or service.fresh is None or len(service.fresh):
            assert time.monotonic() < deadline, "no compaction"
            [m] = search_messages([SearchRequest(added[0][1].astype(np.float32), ScoreOptions(k=1))])
            send(kafka, [(m.key(), m.value())])
            answers.wait_for([m.query_id], 120)
            time.sleep(0.2)
        assert service.cache is not None and service.cache.generation >= 1
        assert service.metrics.totals.vectors == sqlite_store.count_features(MODEL)
        for listing, vector in added:
            [m] = search_messages([SearchRequest(vector.astype(np.float32), ScoreOptions(k=1))])
            send(kafka, [(m.key(), m.value())])
            answers.wait_for([m.query_id], 120)
            assert sqlite_store.read_query_results(m.query_id)[0].listing_id == listing
    answers.close()


def send_removal(kafka: KafkaSettings, removal: DeleteMessage) -> None:
    from messaging.producer import KafkaProducer

    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        producer.send(kafka.images_topic, removal.key(), b"", removal.headers())


def serve_env(kafka: KafkaSettings, store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    return {
        **env,
        "LOOKALIKE_STORE": store_url,
        "LOOKALIKE_MODEL_NAME": MODEL.name,
        "LOOKALIKE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "LOOKALIKE_KAFKA_IMAGES_TOPIC": kafka.images_topic,
        "LOOKALIKE_KAFKA_QUERIES_TOPIC": kafka.queries_topic,
        "LOOKALIKE_KAFKA_ANSWERS_TOPIC": kafka.answers_topic,
        "LOOKALIKE_KAFKA_QUERIES_GROUP": kafka.queries_group,
        "LOOKALIKE_SPARK_MASTER": "local[2]",
        "LOOKALIKE_SPARK_SERVE_METRICS_PORT": "0",
        "LOOKALIKE_SPARK_SERVE_MAX_BATCH": "4",  # small batches: the kill lands between them
    }


@contextmanager
def serve_process(env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``lookalike spark-serve`` in its own process group (its Spark JVM with it), killed on the
    way out if still running."""
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "spark-serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(2400)  # two Spark starts: minutes each on a loaded machine
def test_sigkill_mid_stream_then_restart_answers_each_query_once(
    sqlite_store: Store, catalogue: list[uuid.UUID], broker: str, unique: str, tmp_path: Path
) -> None:
    kafka = kafka_for(broker, unique)
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.queries_topic], kafka.partitions)
    requests = mixed_requests(40, catalogue, seed=3)
    messages = search_messages(requests)
    env, log_file = serve_env(kafka, sqlite_store.url), tmp_path / "serve.log"
    answers = Answers(kafka)
    with serve_process(env, log_file) as first:
        sender = threading.Thread(target=send, args=(kafka, [(m.key(), m.value()) for m in messages], 0.1))
        sender.start()
        answers.wait_for([messages[0].query_id], 600, alive=lambda: first.poll() is None)
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        sender.join()
    answered_at_kill = len(answers.notices)
    assert answered_at_kill < len(messages), "the service was not killed mid-stream"
    with serve_process(env, log_file) as second:
        answers.wait_for([m.query_id for m in messages], 900, alive=lambda: second.poll() is None)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    index = engine_index(sqlite_store)
    for m, request in zip(messages, requests, strict=True):
        rows = sqlite_store.read_query_results(m.query_id)
        check_rows(rows, expected(index, sqlite_store, request))  # each listing once: rows not doubled
        assert all(n.results == len(rows) for n in answers.notices[m.query_id])
    answers.close()


def test_sqlite_rewriting_a_query_is_idempotent(sqlite_store: Store, catalogue: list[uuid.UUID]) -> None:
    qid = uuid.uuid4()
    rows = [
        ResultRow(0.5, catalogue[0], "a", 1, ((uuid.uuid4(), 0.5),)),
        ResultRow(0.4, catalogue[1], "b", None, ()),
    ]
    sqlite_store.write_query_results(qid, rows)
    sqlite_store.write_query_results(qid, rows)
    assert len(open_store(sqlite_store.url).read_query_results(qid)) == 2
