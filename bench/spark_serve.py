"""The Spark search service (``lookalike spark-serve``) under load, as its clients see it.

    python -m bench.spark_serve [--rows 100000] [--dim 1280] [--master local[2]] [--save]

Builds a synthetic catalogue (``bench.search_data``) in a SQLite store, starts an embedded broker
(or uses ``LOOKALIKE_KAFKA_BOOTSTRAP``) and ``lookalike spark-serve`` on them, then sends
:class:`SearchMessage` s on ``lookalike.queries`` and waits for each query's
:class:`AnswerNotice` on ``lookalike.answers`` (the wire the API uses). It prints one JSON
object per run:

* ``one_client``: p50/p99 of one client asking one query at a time;
* ``clients.N`` (8, 32, 128 closed-loop clients): answers per second, that over one client's,
  p99, and ``mean_batch``, the queries scored per pass (from the service's metrics);
* ``batch_64_pass_over_kernel``: 64 queries sent at once, until the last answer, over the
  in-memory engine scoring the same 64 as one batch on the same vectors;
* ``freshness``: from a new vector's store write (announced on the images topic, as a worker
  does) to the service answering with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import Producer

from bench import api_data, search_data
from config.settings import KafkaSettings, SearchSettings
from messaging.admin import ensure_topics
from messaging.broker import EmbeddedBroker
from messaging.tail import TopicTail
from schemas.codec import l2_normalise
from schemas.messages import ImageMessage
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel, as_uuid
from search.loader import load_index
from search.scoring import ScoreOptions, SearchRequest
from search.spark.messages import ANSWERS_TOPIC, QUERIES_TOPIC, AnswerNotice, SearchMessage
from store import Store, open_store

RESULTS = Path(__file__).with_name("results")
CLIENTS = (8, 32, 128)
IMAGES_TOPIC = "lookalike.images"
F32 = npt.NDArray[np.float32]
DEFAULT = ScoreOptions()


def _pct(seconds: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 2)


def fill_store(store: Store, data: search_data.Data, model: ModelInfo, batch: int = 2000) -> None:
    """The catalogue's vectors (as the extract workers write them) and a stock level per listing."""
    store.put_model(model)
    rows = len(data.vectors)
    for s in range(0, rows, batch):
        out = []
        for r in range(s, min(rows, s + batch)):
            lid, iid = as_uuid(data.listing_ids[r]), as_uuid(data.image_ids[r])
            record = ImageRecord(lid, iid, "bench://", "image/jpeg", 1, 1, 1)
            out.append(Extracted(record, str(lid)[:8], model.name, data.vectors[r].astype(np.float32)))
        store.write_extracted(out, model.dtype)
    listings = np.unique(data.listing_ids)
    store.put_stock([StockLevel(as_uuid(x), i % 7, uuid.uuid4()) for i, x in enumerate(listings)])


class Answers:
    """One reader of ``lookalike.answers`` for every client (a tail from now, no consumer group):
    a query's waiter wakes on its notice."""

    def __init__(self, bootstrap: str) -> None:
        conf = KafkaSettings(bootstrap=bootstrap).search_client_config()  # as the API reads them
        self._tail = TopicTail(conf, ANSWERS_TOPIC, int(time.time() * 1000) - 1000)
        self._waiting: dict[uuid.UUID, tuple[threading.Event, list[AnswerNotice]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answers", daemon=True)
        self._thread.start()

    def expect(self, query_id: uuid.UUID) -> tuple[threading.Event, list[AnswerNotice]]:
        slot: tuple[threading.Event, list[AnswerNotice]] = (threading.Event(), [])
        with self._lock:
            self._waiting[query_id] = slot
        return slot

    def ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the reader follows the topic's partitions."""
        deadline = time.monotonic() + timeout_s
        while not self._tail.status.startswith("following"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"answers: {self._tail.status} after {timeout_s:.0f} s")
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _, value in self._tail.read(1000, 0.05):
                try:
                    notice = AnswerNotice.parse(value)
                except ValueError:
                    continue
                with self._lock:
                    slot = self._waiting.pop(notice.query_id, None)
                if slot is not None:
                    slot[1].append(notice)
                    slot[0].set()
            if not self._tail.status.startswith("following"):
                time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._tail.close()


class Client:
    """Sends queries and waits for their notices; shared by the client threads."""

    def __init__(self, bootstrap: str, model: ModelInfo, answers: Answers, timeout_s: float = 120.0) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.model, self.answers, self.timeout_s = model, answers, timeout_s

    def send(self, vector: F32, opts: ScoreOptions) -> tuple[uuid.UUID, threading.Event, list[AnswerNotice]]:
        query_id = uuid.uuid4()
        event, notices = self.answers.expect(query_id)
        message = SearchMessage.of(query_id, self.model.name, SearchRequest(vector, opts), time.time())
        self._producer.produce(QUERIES_TOPIC, message.value(), message.key())
        self._producer.flush()
        return query_id, event, notices

    def ask(self, vector: F32, opts: ScoreOptions = DEFAULT) -> tuple[float, AnswerNotice]:
        """One query, until its notice: the seconds it took and the notice."""
        started = time.perf_counter()
        query_id, event, notices = self.send(vector, opts)
        if not event.wait(self.timeout_s):
            raise TimeoutError(f"query {query_id}: no answer notice in {self.timeout_s:.0f} s")
        if notices[0].error:
            raise RuntimeError(f"query {query_id}: {notices[0].error}")
        return time.perf_counter() - started, notices[0]


def batch_metric(metrics_url: str) -> tuple[float, float] | None:
    """(sum, count) of the service's queries-per-pass histogram, if it exports one."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as reply:
            return batch_sum_count(reply.read().decode())
    except OSError:
        return None


def batch_sum_count(text: str) -> tuple[float, float] | None:
    """(sum, count) of the first histogram or summary with ``batch`` in its name, Prometheus text."""
    sums = dict(re.findall(r"^(\w*batch\w*)_sum(?:\{[^}]*\})? (\S+)$", text, re.M))
    counts = dict(re.findall(r"^(\w*batch\w*)_count(?:\{[^}]*\})? (\S+)$", text, re.M))
    for name in sorted(sums):
        if name in counts:
            return float(sums[name]), float(counts[name])
    return None


def mean_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def closed_loop(client: Client, queries: F32, clients: int, per_client: int) -> dict[str, float]:
    """``clients`` threads, each asking ``per_client`` queries one after the other."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        mine = []
        try:
            for i in range(per_client):
                mine.append(client.ask(queries[(c * per_client + i) % len(queries)])[0])
        except BaseException as exc:  # reported below, after every thread ends
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
    }


def burst(client: Client, queries: F32) -> float:
    """Every query sent at once: seconds until the last answer."""
    started = time.perf_counter()
    sent = [client.send(q, ScoreOptions()) for q in queries]
    for query_id, event, _ in sent:
        if not event.wait(client.timeout_s):
            raise TimeoutError(f"query {query_id}: no answer notice in {client.timeout_s:.0f} s")
    return time.perf_counter() - started


def kernel_batch_s(store: Store, model: ModelInfo, queries: F32, runs: int = 5) -> float:
    """The in-memory engine scoring ``queries`` as one batch (best of ``runs``)."""
    index = load_index(store, model, SearchSettings(follow="off"))
    index.search_many(queries, ScoreOptions())
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        index.search_many(queries, ScoreOptions())
        best = min(best, time.perf_counter() - started)
    return best


def freshness(client: Client, store: Store, bootstrap: str, samples: int, seed: int = 5) -> list[float]:
    """A new listing's vector written and announced as a worker does, then asked for until the
    service's answer has it first: seconds from the write to that answer."""
    rng = np.random.default_rng(seed)
    producer = Producer({"bootstrap.servers": bootstrap})
    model, out = client.model, []
    for i in range(samples):
        listing, image = uuid.uuid4(), uuid.uuid4()
        msg = ImageMessage(listing, image, f"fresh-{i}", "image/jpeg", "bench://", b"pixels")
        producer.produce(IMAGES_TOPIC, msg.payload, msg.key(), headers=msg.headers())
        producer.flush()
        vector = l2_normalise(rng.standard_normal(model.dim).astype(np.float32))
        record = ImageRecord(listing, image, "bench://", "image/jpeg", 1, 1, 1)
        started = time.perf_counter()
        store.write_extracted([Extracted(record, f"fresh-{i}", model.name, vector)], model.dtype)
        while time.perf_counter() - started < client.timeout_s:
            _, notice = client.ask(vector, ScoreOptions(k=1))
            rows = store.read_query_results(notice.query_id)
            if rows and rows[0].listing_id == listing:
                out.append(time.perf_counter() - started)
                break
        else:
            raise TimeoutError(f"listing {listing} not answered {client.timeout_s:.0f} s after its write")
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``lookalike spark-serve`` with ``env``; stopped with SIGTERM (then SIGKILL) at the end."""
    command = [sys.executable, "-m", "lookalike.cli", "spark-serve"]
    probe = subprocess.run([*command, "--help"], env=env, capture_output=True, timeout=120, check=False)
    if probe.returncode != 0 or b"Usage" not in probe.stdout + probe.stderr:
        said = (probe.stdout + probe.stderr).decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"`lookalike spark-serve --help` failed with these settings:\n{said}")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of the service's log (it goes with the benchmark's temporary folder)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def wait_until_serving(
    client: Client, query: F32, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> float:
    """Ask until the first answer comes (the service loads the vectors first): seconds taken."""
    started = time.perf_counter()
    client.timeout_s, wanted = 10.0, client.timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"lookalike spark-serve exited with {process.returncode}; its log ends:\n{log_tail(log)}"
                )
            try:
                client.ask(query)
                return time.perf_counter() - started
            except TimeoutError:
                if time.perf_counter() - started > timeout_s:
                    raise
    finally:
        client.timeout_s = wanted


def run(
    rows: int, dim: int, master: str, one_client_n: int, per_client: int, fresh: int, work: Path
) -> dict[str, Any]:
    data = search_data.make(rows, dim)
    queries = search_data.queries(data, 512)
    model, model_env = api_data.model_for(dim)  # a model name the settings accept, of this dimension
    store = open_store(f"sqlite:///{work / 'serve.db'}")
    store.apply_schema()
    fill_store(store, data, model)
    with ExitStack() as stack:
        bootstrap = (
            os.environ.get("LOOKALIKE_KAFKA_BOOTSTRAP") or stack.enter_context(EmbeddedBroker()).bootstrap
        )
        ensure_topics({"bootstrap.servers": bootstrap}, [QUERIES_TOPIC, ANSWERS_TOPIC, IMAGES_TOPIC], 2)
        metrics_port = _free_port()
        env = {
            **os.environ,
            "LOOKALIKE_STORE": store.url,
            "LOOKALIKE_KAFKA_BOOTSTRAP": bootstrap,
            "LOOKALIKE_SPARK_MASTER": master,
            **model_env,
            "LOOKALIKE_SPARK_SERVE_METRICS_HOST": "127.0.0.1",
            "LOOKALIKE_SPARK_SERVE_METRICS_PORT": str(metrics_port),
        }
        log = work / "spark-serve.log"
        process = stack.enter_context(serving(env, log))
        answers = Answers(bootstrap)
        stack.callback(answers.close)
        answers.ready()
        client = Client(bootstrap, model, answers)
        started_s = wait_until_serving(client, queries[0], process, log, timeout_s=1800)
        one = [client.ask(queries[i % len(queries)])[0] for i in range(one_client_n)]
        one_rps = len(one) / sum(one)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        by_clients: dict[str, Any] = {}
        for n in CLIENTS:
            before = batch_metric(metrics_url)
            loop = closed_loop(client, queries, n, per_client)
            by_clients[str(n)] = {
                **loop,
                "rps_over_1_client": round(loop["rps"] / one_rps, 2),
                "mean_batch": mean_batch(before, batch_metric(metrics_url)),
            }
        burst_s = min(burst(client, queries[:64]) for _ in range(3))
        kernel_s = kernel_batch_s(store, model, queries[:64])
        fresh_s = freshness(client, store, bootstrap, fresh)
    store.close()
    return {
        "rows": rows,
        "dim": dim,
        "master": master,
        "first_answer_s": round(started_s, 1),
        "one_client": {"p50_ms": _pct(one, 50), "p99_ms": _pct(one, 99), "rps": round(one_rps, 1)},
        "clients": by_clients,
        "batch_64_s": round(burst_s, 3),
        "kernel_64_s": round(kernel_s, 4),
        "batch_64_pass_over_kernel": round(burst_s / kernel_s, 1),
        "freshness": {"samples": len(fresh_s), "p50_ms": _pct(fresh_s, 50), "p99_ms": _pct(fresh_s, 99)},
    }


def slug(master: str) -> str:
    """A master URL as a file-name part: ``local[2]`` -> ``local-2``; a standalone cluster's
    ``spark://host:port`` -> ``standalone`` (its port changes from run to run)."""
    if master.startswith("spark://"):
        return "standalone"
    return re.sub(r"[^a-z0-9]+", "-", master.lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--one-client", type=int, default=50, help="queries asked one at a time")
    parser.add_argument("--per-client", type=int, default=8, help="queries each client asks")
    parser.add_argument("--fresh", type=int, default=20, help="freshness samples")
    parser.add_argument("--save", action="store_true", help="also write bench/results/spark-serve-*.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-spark-serve-") as tmp:
        result = run(
            args.rows, args.dim, args.master, args.one_client, args.per_client, args.fresh, Path(tmp)
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        name = f"spark-serve-{slug(args.master)}-{args.rows // 1000}k-{args.dim}.json"
        (RESULTS / name).write_text(text + "\n")


if __name__ == "__main__":
    main()
