"""The demo as a new user runs it: the table, a quick second run, then the API answering curl."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from messaging.broker import free_port

pytestmark = pytest.mark.e2e
LOOKALIKE = str(Path(sys.executable).parent / "lookalike")


def _post_image(url: str, path: Path) -> dict:  # type: ignore[type-arg]
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)  # type: ignore[no-any-return]


def _wait_for(url: str, proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def test_demo_prints_the_table_then_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LOOKALIKE_DATA_DIR": str(tmp_path),
        "LOOKALIKE_API_PORT": str(port),
        "COLUMNS": "200",
    }
    env.pop("LOOKALIKE_STORE", None)
    env.pop("LOOKALIKE_KAFKA_BOOTSTRAP", None)
    first = subprocess.run(
        [LOOKALIKE, "demo", "--no-serve"], env=env, capture_output=True, text=True, timeout=900
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "top listing 'coffee' is the one the query photo came from" in first.stdout
    assert "agrees with Spark" in first.stdout
    # the pretrained embedded default, its weights from the installed package, never random
    assert "model: efficientnet_lite0 (1280-d" in first.stdout and "sha256" in first.stdout
    assert "RANDOM" not in first.stdout + first.stderr

    server = subprocess.Popen(
        [LOOKALIKE, "demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", server, 600)
        answer = _post_image(
            f"http://127.0.0.1:{port}/v1/search/image", tmp_path / "queries" / "coffee-held-out.jpg"
        )
        assert answer["results"][0]["listing_name"] == "coffee"
        top, second = (r["score"] for r in answer["results"][:2])
        assert top - second > 0.3, answer  # real similarity: unrelated listings sit clearly below
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/search/{answer['query_id']}") as r:
            assert [x["listing_id"] for x in json.load(r)["results"]] == [
                x["listing_id"] for x in answer["results"]
            ]
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out
    redone = re.search(r"ingest: (\d+) images produced, (\d+) already stored", " ".join(out.split()))
    assert redone is not None and redone.group(1) == "0" and int(redone.group(2)) > 80, out  # nothing redone


def test_demo_through_the_spark_search_service(tmp_path: Path) -> None:
    """``LOOKALIKE_SEARCH_ENGINE=spark make demo``: spark-serve beside the API on the embedded
    broker, the demo's query answered by it and checked against the in-memory engine, the API
    answering through it (200, or 202 and the answer read back from its Location)."""
    port = free_port()
    env = {
        **os.environ,
        "LOOKALIKE_DATA_DIR": str(tmp_path),
        "LOOKALIKE_API_PORT": str(port),
        "LOOKALIKE_SEARCH_ENGINE": "spark",
        "LOOKALIKE_SPARK_SERVE_METRICS_PORT": "0",
        "COLUMNS": "200",
    }
    env.pop("LOOKALIKE_STORE", None)
    env.pop("LOOKALIKE_KAFKA_BOOTSTRAP", None)
    server = subprocess.Popen(
        [LOOKALIKE, "demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", server, 900)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            assert json.load(r)["checks"]["engine"] == "spark: answers reader following lookalike.answers"
        answer = _post_image(
            f"http://127.0.0.1:{port}/v1/search/image", tmp_path / "queries" / "coffee-held-out.jpg"
        )
        if "status" in answer:  # 202: past the API's wait, read back from its Location
            answer = _read_pending(f"http://127.0.0.1:{port}/v1/search/{answer['query_id']}", 300)
        assert answer["results"][0]["listing_name"] == "coffee"
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=120)
    assert server.returncode == 0, out
    text = " ".join(out.split())
    assert "(the Spark search service, read back from query_results)" in text, out
    assert "agrees with Spark; top listing 'coffee' is the one the query photo came from" in text, out
    started = re.search(r"Spark search service started \(pid (\d+)", text)
    assert started is not None, out
    with pytest.raises(ProcessLookupError):  # stopped with the demo
        os.kill(int(started.group(1)), 0)


def _read_pending(url: str, timeout_s: float) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or "pending" not in exc.read().decode() or time.monotonic() > deadline:
                raise
        time.sleep(0.5)
