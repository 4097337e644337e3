"""The demo on ``LOOKALIKE_SEARCH_ENGINE=spark``: the Spark search service (``lookalike
spark-serve``, on the demo's broker and store, ``local[*]`` unless configured) runs beside the
API as a child process, and the demo's own search goes through it, as every search of the API
does then. Its log goes to ``<data_dir>/spark-serve.log``."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from config.settings import Settings
from extract.model import FeatureModel
from schemas.records import QueryAnswer
from search.scoring import ScoreOptions
from search.service import SearchService
from search.spark.client import SparkSearchClient, wait
from search.spark.remote import SparkSearch
from search.store_lookup import StoreLookup
from store import Store

log = logging.getLogger(__name__)
FIRST_ANSWER_S = 600.0  # the first query waits for the service's start (Spark, the vectors' cache)
STOP_S = 30.0


class ServiceDied(RuntimeError):
    """The Spark search service exited; the message ends with its log's last lines."""


def spark_env(settings: Settings, model: str) -> dict[str, str]:
    """The environment of ``lookalike spark-serve``: this one, with the demo's broker, store and
    model."""
    return {
        **os.environ,
        "LOOKALIKE_MODEL_NAME": model,
        "LOOKALIKE_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "LOOKALIKE_STORE": settings.core.store_url(),
        "LOOKALIKE_DATA_DIR": str(settings.core.data_dir),
        "LOOKALIKE_SPARK_MASTER": settings.spark.master,
        "LOOKALIKE_KAFKA_QUERIES_TOPIC": settings.kafka.queries_topic,
        "LOOKALIKE_KAFKA_ANSWERS_TOPIC": settings.kafka.answers_topic,
    }


@contextlib.contextmanager
def spark_serve(settings: Settings, model: str) -> Iterator[subprocess.Popen[bytes]]:
    """``lookalike spark-serve`` as a child process until the block ends (SIGTERM, then SIGKILL
    after ``STOP_S``)."""
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        command = [sys.executable, "-m", "lookalike.cli", "spark-serve"]
        proc = subprocess.Popen(command, env=spark_env(settings, model), stdout=out, stderr=subprocess.STDOUT)
    log.info(
        "Spark search service started (pid %d, master %s); its log: %s", proc.pid, settings.spark.master, path
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            log.warning("the Spark search service did not stop within %.0fs: killed", STOP_S)
            proc.kill()
            proc.wait()


def log_path(settings: Settings) -> Path:
    return settings.core.data_dir / "spark-serve.log"


def remote_search(settings: Settings, store: Store, model: FeatureModel) -> SparkSearch:
    """Searches through the service: vectors looked up in the store, uploads embedded by
    ``model`` (the one the demo loaded), nothing held in memory."""
    service = SearchService(store, StoreLookup(store, model.info), lambda: model, settings.model.max_pixels)
    return SparkSearch(service, SparkSearchClient(settings.kafka), settings.search.spark_timeout_s)


def ask(
    remote: SparkSearch,
    proc: subprocess.Popen[bytes],
    vector: npt.NDArray[np.float32],
    opts: ScoreOptions,
    log_file: Path,
) -> QueryAnswer:
    """The demo's query through the service, waiting for its start (ServiceDied if it exits)."""
    message = remote.message_of(vector, opts)
    future = remote.send(message)
    deadline = time.monotonic() + FIRST_ANSWER_S
    while (notice := wait(future, 1.0)) is None:
        if proc.poll() is not None:
            raise ServiceDied(f"the Spark search service exited ({proc.returncode}): {tail(log_file)}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the Spark search service gave no answer in {FIRST_ANSWER_S:.0f}s ({log_file})"
            )
    return remote.answer(notice)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def served_search(
    settings: Settings,
    store: Store,
    model: FeatureModel,
    vector: npt.NDArray[np.float32],
    opts: ScoreOptions,
    services: contextlib.ExitStack | None,
) -> tuple[SparkSearch, QueryAnswer]:
    """Engine ``spark``: the Spark search service started beside the demo (until ``services``
    closes), and the demo's query answered by it."""
    if services is None:
        raise ValueError("the spark engine's demo needs an exit stack for its service")
    remote = remote_search(settings, store, model)
    services.callback(remote.client.close)
    proc = services.enter_context(spark_serve(settings, model.info.name))
    log.info("asking the Spark search service (its first answer waits for its start)")
    return remote, ask(remote, proc, vector, opts, log_path(settings))
