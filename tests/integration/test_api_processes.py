"""``lookalike serve`` with LOOKALIKE_API_PROCESSES=2, for real (processes, a port, SQLite):
both processes serve one snapshot's vectors through a shared mapping (each worker's smaps shows
the file's pages as shared), and an image stored or deleted afterwards becomes visible or
invisible in BOTH processes through each one's own follower: the store scan, and the stream
follower on the real (embedded) broker for an upload and a removal made through the API. A
worker that dies stops the other and the server exits non-zero.

Which process answers is the kernel's choice (SO_REUSEPORT): each check opens a new
connection, asks ``/readyz`` which worker it is and searches on the same connection, until
every worker has given the expected answer (no timing assertions, a generous deadline)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from config.settings import KafkaSettings
from messaging.admin import ensure_topics
from schemas.records import Extracted, ImageRecord
from store.sqlite import SQLiteStore
from tests.conftest import jpeg_bytes
from tests.unit.test_engine import MODEL

pytestmark = pytest.mark.integration
PROCESSES = 2
DEADLINE_S = 120.0
KEY = {"X-API-Key": "k"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _store_image(store: SQLiteStore, listing: uuid.UUID, image: uuid.UUID, seed: int) -> None:
    vector = np.random.default_rng(seed).normal(size=MODEL.dim).astype(np.float32)
    record = ImageRecord(listing, image, "file:///x.jpg", "image/jpeg", 1, 1, 1)
    store.write_extracted(
        [Extracted(record, f"listing {listing}", MODEL.name, vector / np.linalg.norm(vector))], "float16"
    )


Served = tuple[str, SQLiteStore, "subprocess.Popen[bytes]"]


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[Served]:
    """``lookalike serve`` with two processes over a store of 20 vectors, stopped by SIGTERM
    at the end (it must exit 0) unless the test stopped it."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    store.put_model(MODEL)
    for n in range(20):
        _store_image(store, uuid.uuid4(), uuid.uuid4(), n)
    port = _free_port()
    env = {
        **os.environ,
        "LOOKALIKE_DATA_DIR": str(tmp_path),
        "LOOKALIKE_STORE": f"sqlite:///{tmp_path / 'lookalike.db'}",
        "LOOKALIKE_BLOBS_URL": (tmp_path / "blobs").as_uri(),
        "LOOKALIKE_MODEL_NAME": MODEL.name,
        "LOOKALIKE_KAFKA_BOOTSTRAP": "",
        "LOOKALIKE_API_PROCESSES": str(PROCESSES),
        "LOOKALIKE_API_PORT": str(port),
        "LOOKALIKE_SEARCH_THREADS": "1",
        **env,
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, proc, log_path)
            yield base, store, proc
        finally:
            stopped_by_test = proc.poll() is not None
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            store.close()
        assert stopped_by_test or code == 0, log_path.read_text()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready: {log.read_text()}")


def _in_every_worker(base: str, check: Callable[[httpx.Response], bool], image: uuid.UUID) -> dict[str, int]:
    """Search for ``image`` on new connections until every worker answered as ``check``
    wants; returns the pids of the workers seen."""
    satisfied: dict[str, int] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(satisfied) < PROCESSES:
        assert time.monotonic() < deadline, f"only {sorted(satisfied)} answered as expected"
        with httpx.Client(base_url=base, timeout=10) as client:  # one connection: one worker
            process = client.get("/readyz").json()["checks"]["process"]
            if check(client.post("/v1/search", json={"image_id": str(image)})):
                satisfied[process.split(",")[0]] = int(process.rsplit("pid ", 1)[1])
    return satisfied


def test_two_processes_share_the_vectors_and_both_follow_the_store(tmp_path: Path) -> None:
    with serving(tmp_path, LOOKALIKE_SEARCH_FOLLOW="scan") as (base, store, proc):
        listing, image = uuid.uuid4(), uuid.uuid4()
        _store_image(store, listing, image, 99)  # after the snapshot: each follower must find it
        workers = _in_every_worker(base, lambda r: r.status_code == 200, image)
        assert sorted(workers) == [f"worker {i + 1} of {PROCESSES}" for i in range(PROCESSES)]
        store.delete_images(listing, [image])
        _in_every_worker(base, lambda r: r.status_code == 404 and "has no vector" in r.text, image)

        (snapshot,) = tmp_path.glob("lookalike.db-*/snapshots/*")
        vectors = (snapshot / "vectors.npy").resolve()
        for pid in workers.values():  # the map's pages are shared: in the page cache once
            shared, private = _mapping(pid, vectors)
            assert shared > 0 and private == 0, (pid, shared, private)

        os.kill(workers["worker 1 of 2"], signal.SIGKILL)  # a worker that dies stops the server
        assert proc.wait(timeout=60) != 0
        assert not Path(f"/proc/{workers['worker 2 of 2']}").exists()  # the other one stopped too


def test_an_upload_and_a_removal_reach_both_processes_through_the_broker(
    tmp_path: Path, broker: str, unique: str
) -> None:
    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}", alerts_topic=f"alerts-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.alerts_topic], 1)
    env = {
        "LOOKALIKE_KAFKA_BOOTSTRAP": broker,
        "LOOKALIKE_KAFKA_IMAGES_TOPIC": kafka.images_topic,
        "LOOKALIKE_KAFKA_ALERTS_TOPIC": kafka.alerts_topic,
        "LOOKALIKE_SEARCH_FOLLOW": "stream",
        "LOOKALIKE_API_KEYS": "k",
    }
    with serving(tmp_path, **env) as (base, store, _):
        files = {"image": ("a.jpg", jpeg_bytes(5), "image/jpeg")}
        accepted = httpx.post(
            f"{base}/v1/images", files=files, data={"listing": "new"}, headers=KEY, timeout=60
        )
        assert accepted.status_code == 202, accepted.text
        listing, image = (uuid.UUID(accepted.json()[key]) for key in ("listing_id", "image_id"))
        _store_image(store, listing, image, 7)  # what an extract worker does with the upload
        _in_every_worker(base, lambda r: r.status_code == 200, image)
        removed = httpx.delete(f"{base}/v1/images/{image}", headers=KEY, timeout=60)
        assert removed.status_code == 202, removed.text  # gone at once from one; from the other by the topic
        _in_every_worker(base, lambda r: r.status_code == 404, image)


def _mapping(pid: int, path: Path) -> tuple[int, int]:
    """(Shared_Clean + Shared_Dirty, Private_Clean + Private_Dirty) kB of ``path``'s mappings."""
    shared = private = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header
                inside = fields[-1] == str(path)
            elif inside and fields[0] in ("Shared_Clean:", "Shared_Dirty:"):
                shared += int(fields[1])
            elif inside and fields[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(fields[1])
    return shared, private


def test_on_the_spark_engine_no_process_loads_the_vectors(tmp_path: Path, broker: str, unique: str) -> None:
    """With LOOKALIKE_SEARCH_ENGINE=spark the API holds no vectors: the processes start without
    a snapshot, and each sends its searches to the Spark search service (none runs here, so
    each answers 202 with the query's Location after the wait)."""
    queries, answers = f"queries-{unique}", f"answers-{unique}"
    ensure_topics({"bootstrap.servers": broker}, [queries, answers], 1)
    env = {
        "LOOKALIKE_KAFKA_BOOTSTRAP": broker,
        "LOOKALIKE_SEARCH_ENGINE": "spark",
        "LOOKALIKE_KAFKA_QUERIES_TOPIC": queries,
        "LOOKALIKE_KAFKA_ANSWERS_TOPIC": answers,
        "LOOKALIKE_SEARCH_SPARK_TIMEOUT_S": "0.5",
    }
    with serving(tmp_path, **env) as (base, store, _):
        image = uuid.uuid4()
        _store_image(store, uuid.uuid4(), image, 3)
        workers = _in_every_worker(
            base, lambda r: r.status_code == 202 and r.headers["location"].startswith("/v1/search/"), image
        )
        assert sorted(workers) == [f"worker {i + 1} of {PROCESSES}" for i in range(PROCESSES)]
        assert not list(tmp_path.glob("lookalike.db-*/snapshots/*"))
