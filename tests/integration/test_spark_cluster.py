"""The Spark job and the Spark search service on a real cluster on one machine (a standalone
master, two workers, each executor in its own JVM): the same answers as on ``local[2]``; a worker
SIGKILLed mid-batch and a driver SIGKILLed mid-batch (or mid-stream, for spark-serve) cost nothing
but time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import KafkaSettings, SearchSettings
from lookalike.spark_cluster import Cluster, descendants
from messaging.admin import ensure_topics
from schemas.codec import l2_normalise
from search.loader import load_index
from search.scoring import ScoreOptions, SearchRequest
from search.service import SearchService
from search.spark import resident
from search.spark.messages import SearchMessage
from store.sqlite import SQLiteStore
from tests.integration.spark_cluster import WORKERS, full_cluster, spark_cluster  # noqa: F401
from tests.integration.spark_serve_helpers import (
    Answers,
    build_catalogue,
    check_rows,
    engine_index,
    expected,
    mixed_requests,
    search_messages,
    send,
)
from tests.integration.test_spark_job import MODEL, catalogue  # noqa: F401
from tests.integration.test_spark_serve import kafka_for, serve_env, serve_process

pytestmark = pytest.mark.integration
K = 8


def _env(store: SQLiteStore, master: str) -> dict[str, str]:
    return {
        **os.environ,
        "LOOKALIKE_STORE": store.url,
        "LOOKALIKE_SPARK_MASTER": master,
        "LOOKALIKE_SPARK_DRIVER_MEMORY": "1g",
        "LOOKALIKE_SPARK_SHARDS": "8",
        "LOOKALIKE_SPARK_CONF": '{"spark.executor.memory": "512m"}',
        "LOOKALIKE_SEARCH_FOLLOW": "off",
        "LOOKALIKE_MODEL_NAME": MODEL.name,
    }


def _batch_job(store: SQLiteStore, master: str, queries: Path) -> list[dict[str, Any]]:
    """``python -m lookalike.spark_search`` against ``master``: its JSON answers."""
    args = [sys.executable, "-m", "lookalike.spark_search", "--vectors", str(queries), "--k", str(K)]
    done = subprocess.run(
        args, env=_env(store, master), capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def _ranked(answers: list[dict[str, Any]]) -> list[list[tuple[str, float]]]:
    return [[(r["listing_id"], round(r["score"], 5)) for r in a["results"]] for a in answers]


def _expected(store: SQLiteStore, queries: np.ndarray) -> list[list[str]]:
    service = SearchService(store, load_index(store, MODEL, SearchSettings()))
    return [
        [str(r.listing_id) for r in service.search_vector(q, ScoreOptions(k=K)).results]
        for q in l2_normalise(queries)
    ]


def _assert_answered_once(store: SQLiteStore, answers: list[dict[str, Any]], queries: np.ndarray) -> None:
    """One answer per query, in order, each the engine's, each stored once under its own id."""
    assert len(answers) == len(queries)
    assert len({a["query_id"] for a in answers}) == len(queries)
    assert [[r["listing_id"] for r in a["results"]] for a in answers] == _expected(store, queries)
    for a in answers:
        stored = store.read_query_results(uuid.UUID(a["query_id"]))
        assert [str(r.listing_id) for r in stored] == [r["listing_id"] for r in a["results"]]


def test_the_batch_job_answers_the_same_on_the_cluster_as_on_local(
    full_cluster: Cluster,  # noqa: F811
    sqlite_store: SQLiteStore,
    catalogue: np.ndarray,  # noqa: F811
    tmp_path: Path,
) -> None:
    np.save(tmp_path / "q.npy", catalogue)
    on_cluster = _batch_job(sqlite_store, full_cluster.master_url, tmp_path / "q.npy")
    on_local = _batch_job(sqlite_store, "local[2]", tmp_path / "q.npy")
    assert _ranked(on_cluster) == _ranked(on_local)
    _assert_answered_once(sqlite_store, on_cluster, catalogue)
    apps = full_cluster.state()["completedapps"]
    assert any(app["name"] == "lookalike-search" for app in apps)  # it ran on the cluster, not locally


class GatedDriver:
    """``tests.integration.spark_cluster_driver`` with a gate: its tasks wait in ``folder``."""

    def __init__(self, store: SQLiteStore, master: str, queries: Path, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        args = [sys.executable, "-m", "tests.integration.spark_cluster_driver", store.url, master]
        args += [str(queries), MODEL.name, "--k", str(K), "--gate", str(folder)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_tasks(self) -> list[int]:
        """The Python workers (pids) of the tasks waiting at the gate now."""
        pids = [int(p.name.removeprefix("started-")) for p in self.folder.glob("started-*")]
        return [pid for pid in pids if Path(f"/proc/{pid}").exists()]

    def wait_for_tasks_on(self, cluster: Cluster, workers: int, timeout: float = 240.0) -> list[int]:
        """Waits until tasks run under ``workers`` distinct workers; their tasks' pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()[1][-3000:]
            pids = self.running_tasks()
            if len({id(cluster.worker_of(pid)) for pid in pids if cluster.worker_of(pid)}) >= workers:
                return pids
            time.sleep(0.2)
        raise AssertionError(f"no tasks running on {workers} workers after {timeout:.0f} s")

    def release(self) -> None:
        (self.folder / "release").touch()

    def answers(self) -> list[dict[str, Any]]:
        out, err = self.process.communicate(timeout=300)
        assert self.process.returncode == 0, err[-3000:]
        answers: list[dict[str, Any]] = json.loads(out)
        return answers


def test_a_worker_killed_mid_batch_loses_nothing(
    full_cluster: Cluster,  # noqa: F811
    sqlite_store: SQLiteStore,
    catalogue: np.ndarray,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Tasks are held running on both executors; one worker and its executor JVM are SIGKILLed;
    Spark reruns that executor's tasks (and recomputes its cached blocks) on the other one."""
    np.save(tmp_path / "q.npy", catalogue)
    driver = GatedDriver(sqlite_store, full_cluster.master_url, tmp_path / "q.npy", tmp_path / "gate")
    try:
        pids = driver.wait_for_tasks_on(full_cluster, WORKERS)
        victim = full_cluster.worker_of(pids[0])
        assert victim is not None
        killed = victim.kill()
        assert pids[0] in killed and not victim.alive()
        driver.release()
        answers = driver.answers()
    finally:
        driver.release()
        driver.process.kill()
    _assert_answered_once(sqlite_store, answers, catalogue)
    assert full_cluster.alive_workers() == WORKERS - 1  # the run finished on the survivor alone


def test_a_driver_killed_mid_batch_and_started_again(
    full_cluster: Cluster,  # noqa: F811
    sqlite_store: SQLiteStore,
    catalogue: np.ndarray,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The first driver is SIGKILLed with its tasks running: the master ends its application and
    frees the executors; a new driver gets them and answers every query."""
    np.save(tmp_path / "q.npy", catalogue)
    first = GatedDriver(sqlite_store, full_cluster.master_url, tmp_path / "q.npy", tmp_path / "gate-1")
    try:
        first.wait_for_tasks_on(full_cluster, 1)
        for pid in [*descendants(first.process.pid), first.process.pid]:
            os.kill(pid, signal.SIGKILL)
        first.process.wait()
    finally:
        first.release()  # its orphaned tasks, if any, go on and end
    second = GatedDriver(sqlite_store, full_cluster.master_url, tmp_path / "q.npy", tmp_path / "gate-2")
    second.release()
    _assert_answered_once(sqlite_store, second.answers(), catalogue)
    assert not full_cluster.state()["activeapps"]


@dataclass
class ServeOnCluster:
    """``lookalike spark-serve`` with the cluster's master, and its queries."""

    kafka: KafkaSettings
    requests: list[SearchRequest]
    messages: list[SearchMessage]
    env: dict[str, str]
    answers: Answers

    @classmethod
    def make(
        cls, cluster: Cluster, store: SQLiteStore, broker: str, unique: str, n: int, seed: int
    ) -> ServeOnCluster:
        listings = build_catalogue(store, 300)
        kafka = kafka_for(broker, unique)
        ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.queries_topic], kafka.partitions)
        requests = mixed_requests(n, listings, seed=seed)
        env = {**serve_env(kafka, store.url), "LOOKALIKE_SPARK_MASTER": cluster.master_url}
        env["LOOKALIKE_SPARK_CONF"] = '{"spark.executor.memory": "512m"}'
        return cls(kafka, requests, search_messages(requests), env, Answers(kafka))

    def ask(self, messages: list[SearchMessage], service: subprocess.Popen[bytes]) -> None:
        send(self.kafka, [(m.key(), m.value()) for m in messages])
        self.answers.wait_for([m.query_id for m in messages], 300, alive=lambda: service.poll() is None)

    def check(self, store: SQLiteStore) -> None:
        """Every query's rows are the engine's, and each was answered once."""
        index = engine_index(store)
        for m, request in zip(self.messages, self.requests, strict=True):
            rows = store.read_query_results(m.query_id)
            check_rows(rows, expected(index, store, request))
            assert [n.results for n in self.answers.notices[m.query_id]] == [len(rows)]
        self.answers.close()


def test_spark_serve_on_the_cluster_answers_as_the_engine_across_a_driver_kill(
    full_cluster: Cluster,  # noqa: F811
    sqlite_store: SQLiteStore,
    broker: str,
    unique: str,
    tmp_path: Path,
) -> None:
    """``lookalike spark-serve`` with the cluster's master: the engine's answers (as on local[*]);
    its driver SIGKILLed after the first queries and started again: the master frees the dead
    application's executors, the new driver gets them, and every query is answered."""
    serve = ServeOnCluster.make(full_cluster, sqlite_store, broker, unique, 16, seed=5)
    log_file = tmp_path / "serve.log"
    with serve_process(serve.env, log_file) as first:
        serve.ask(serve.messages[:8], first)
        assert [a["name"] for a in full_cluster.state()["activeapps"]], "spark-serve is not on the cluster"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    with serve_process(serve.env, log_file) as second:
        serve.ask(serve.messages[8:], second)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    serve.check(sqlite_store)


def resident_partitions(cluster: Cluster, worker: int) -> set[str]:
    """The partitions whose vectors a worker's executors keep in its local directory."""
    local = cluster.log_dir / f"worker-{worker}" / "local"
    return {p.name for p in local.rglob(f"{resident.ROOT}/*/part-*") if p.is_dir()}


def test_spark_serve_loses_a_worker_and_its_resident_vectors(
    full_cluster: Cluster,  # noqa: F811
    sqlite_store: SQLiteStore,
    broker: str,
    unique: str,
    tmp_path: Path,
) -> None:
    """The service keeps its vectors in its executors' local directories. The worker holding most
    of them is SIGKILLed with its executor between batches: Spark loads the lost partitions again
    on the survivor (their descriptors' lineage), which then holds every partition, and the
    answers stay the engine's."""
    before = [resident_partitions(full_cluster, w) for w in range(WORKERS)]
    serve = ServeOnCluster.make(full_cluster, sqlite_store, broker, unique, 12, seed=7)
    with serve_process(serve.env, tmp_path / "serve.log") as service:
        serve.ask(serve.messages[:6], service)
        held = [resident_partitions(full_cluster, w) - before[w] for w in range(WORKERS)]
        victim = max(range(WORKERS), key=lambda w: len(held[w]))
        everything = set().union(*held)
        assert held[victim], "no executor wrote resident vectors"
        full_cluster.workers[victim].kill()
        serve.ask(serve.messages[6:], service)
        survivor = 1 - victim
        assert resident_partitions(full_cluster, survivor) - before[survivor] == everything
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
    serve.check(sqlite_store)
