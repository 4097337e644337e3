"""``lookalike extract``: N worker processes on one machine, and a graceful SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import KafkaSettings
from messaging.admin import ensure_topics
from store import open_store
from tests.integration.kafka_helpers import (
    ROOT,
    committed,
    image_ids_by_offset,
    produce_images,
    wait_until,
    worker_env,
    worker_process,
)

pytestmark = pytest.mark.integration


def _kafka(broker: str, unique: str) -> KafkaSettings:
    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", dlq_topic=f"dlq-{unique}", group=f"g-{unique}"
    )
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.dlq_topic], kafka.partitions)
    return kafka


def _env(kafka: KafkaSettings, url: str) -> dict[str, str]:
    return {
        **worker_env(kafka, url),
        "LOOKALIKE_MODEL_NAME": "resnet50_pool",
        "LOOKALIKE_MODEL_ALLOW_RANDOM": "1",
        "LOOKALIKE_MODEL_DEVICE": "cpu",
        "LOOKALIKE_EXTRACT_STATUS_INTERVAL_S": "1",
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lookalike.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = _run(env, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_extract_workers_2_share_the_group_and_drain(broker: str, unique: str, tmp_path: Path) -> None:
    kafka = _kafka(broker, unique)
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    sent = produce_images(kafka, 8)
    proc = _cli(_env(kafka, url), "extract", "--workers", "2", "--drain")
    per_worker = [int(n) for n in re.findall(r"stored (\d+) vectors", proc.stdout)]
    assert len(per_worker) == 2 and sum(per_worker) >= 8, proc.stdout
    assert "started 2 extract workers" in proc.stderr
    store = open_store(url)
    assert store.count("features") == 8
    assert store.existing_images(sent, "resnet50_pool") == set(sent)
    assert store.get_model("resnet50_pool") is not None
    store.close()


def test_removals_from_the_cli_are_applied_by_the_worker(broker: str, unique: str, tmp_path: Path) -> None:
    kafka = _kafka(broker, unique)
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    env = _env(kafka, url)
    sent = produce_images(kafka, 6, listings=3)
    _cli(env, "extract", "--drain")
    store = open_store(url)
    listing_of = {i: store.image_listing(i) for i in sent}
    image, listing = sent[0], listing_of[sent[1]]
    assert listing is not None and listing_of[image] != listing
    removed = _cli(env, "ingest", "remove", "--image-id", str(image))
    assert f"removal of image {image}" in removed.stdout
    _cli(env, "ingest", "remove", "--listing-id", str(listing))
    _cli(env, "extract", "--drain")

    expected = {i for i in sent if i != image and listing_of[i] != listing}
    assert len(expected) == 3
    assert store.existing_images(sent, "resnet50_pool") == expected
    assert store.listing_images(listing) == [] and store.image_record(image) is None
    again = _run(env, "ingest", "remove", "--image-id", str(image))
    assert again.returncode == 2 and "is not stored" in again.stderr
    store.close()


def test_sigterm_finishes_the_batches_in_flight_and_commits(broker: str, unique: str, tmp_path: Path) -> None:
    kafka = _kafka(broker, unique)
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    store = open_store(url)
    store.apply_schema()
    produce_images(kafka, 120)
    log = tmp_path / "worker.log"
    with worker_process(worker_env(kafka, url), "--delay", "0.2", log=log) as worker:
        wait_until(lambda: store.count("features") >= 24, 90, "the worker to store 24 vectors")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    stored = store.count("features")
    assert stored < 120, "the worker finished before the signal"
    by_offset = image_ids_by_offset(kafka, 120)
    done = committed(kafka)
    covered = [iid for (p, off), iid in by_offset.items() if off < done[p]]
    assert len(covered) == stored, "a graceful stop commits exactly what it stored"
    assert store.existing_images(covered, "vgg16_fc7") == set(covered)
    assert "stopping: finishing the batches in flight" in log.read_text()
    store.close()
