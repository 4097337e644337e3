"""The extract pipeline without Kafka: ordering, overlap of its stages, backpressure,
dead letters, failures, and the batched-decode path (run on the CPU here)."""

from __future__ import annotations

import io
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from extract import pipeline as pipeline_mod
from extract import steps as steps_mod
from extract.metrics import ExtractMetrics
from extract.model import FeatureModel
from extract.pipeline import ExtractPipeline, PipelineFailed
from extract.steps import DeadLetters, DecodeOptions, decode_message
from extract.writer import StoreWriter
from schemas.messages import DeleteMessage, Headers, ImageMessage
from schemas.records import Extracted
from store import StoreError
from store.sqlite import SQLiteStore
from tests.conftest import jpeg_bytes, tiny_model

WAIT_S = 20  # generous: only reached when the behaviour under test is missing


class FakeMessage:
    """What the pipeline reads from a confluent-kafka Message."""

    def __init__(self, value: bytes, headers: list[tuple[str, bytes]], offset: int) -> None:
        self._value, self._headers, self._offset = value, headers, offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def key(self) -> bytes:
        return b"key"

    def topic(self) -> str:
        return "images"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


class FakeProducer:
    max_message_bytes = 1_000_000

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []
        self.flushes = 0

    def send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, Any]]) -> None:
        self.sent.append((value, dict(headers)))

    def send_and_wait(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, Any]]) -> None:
        self.send(topic, key, value, headers)

    def flush(self) -> int:
        self.flushes += 1
        return len(self.sent)


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed))).save(buf, format="PNG")
    return buf.getvalue()


def image_message(
    offset: int,
    payload: bytes,
    content_type: str = "image/jpeg",
    listing: uuid.UUID | None = None,
    image: uuid.UUID | None = None,
) -> FakeMessage:
    m = ImageMessage(listing or uuid.uuid4(), image or uuid.uuid4(), "listing", content_type, "test", payload)
    return FakeMessage(m.payload, _headers(m.headers()), offset)


def removal_message(offset: int, listing: uuid.UUID, image: uuid.UUID | None = None) -> FakeMessage:
    return FakeMessage(b"", _headers(DeleteMessage(listing, image).headers()), offset)


def _headers(headers: Headers) -> list[tuple[str, bytes]]:
    return [(k, v if isinstance(v, bytes) else b"") for k, v in headers]


def batches(n: int, size: int = 4) -> list[list[FakeMessage]]:
    return [[image_message(b * size + i, jpeg_bytes(b * size + i)) for i in range(size)] for b in range(n)]


class Harness:
    def __init__(self, store: SQLiteStore, model: FeatureModel | None = None, **kw: Any) -> None:
        self.store, self.producer, self.metrics = store, FakeProducer(), ExtractMetrics()
        self.model = model or tiny_model()
        store.put_model(self.model.info)
        opts = DecodeOptions(max_pixels=1_000_000, jpeg_on_device=kw.pop("jpeg_on_device", False))
        self.pipeline = ExtractPipeline(
            self.model,
            StoreWriter(kw.pop("writer_store", store), "float16", give_up_after_s=0),
            DeadLetters(self.producer, "dlq"),  # type: ignore[arg-type]
            opts,
            self.metrics,
            **kw,
        )

    def run(self, work: Sequence[Sequence[FakeMessage]]) -> list[Sequence[Any]]:
        for b in work:
            self.pipeline.submit(b)  # type: ignore[arg-type]
        self.pipeline.drain()
        return self.pipeline.completed()


@pytest.fixture
def harness(sqlite_store: SQLiteStore) -> Iterator[Harness]:
    h = Harness(sqlite_store)
    yield h
    h.pipeline.close()


def test_batches_complete_in_order_and_bad_messages_are_dead_lettered(harness: Harness) -> None:
    work = batches(3)
    work[1][2] = image_message(99, b"GIF89a but not really")
    assert harness.run(work) == work
    assert harness.store.count("features") == 11
    assert harness.pipeline.in_flight() == 0
    [(value, headers)] = harness.producer.sent
    assert value == b"GIF89a but not really"
    assert headers["error_stage"] == b"decode" and b"not a decodable image" in headers["error"]
    assert headers["source_offset"] == b"99"
    totals = harness.metrics.totals
    assert (totals.images, totals.dead_letters, totals.batches) == (11, 1, 3)
    assert all(totals.seconds[s] > 0 for s in ("decode", "infer", "write"))


class GatedNet(torch.nn.Module):
    """The tiny CNN, but its first call waits for ``gate`` (and records whether it opened)."""

    def __init__(self, inner: torch.nn.Module, gate: threading.Event) -> None:
        super().__init__()
        self.inner, self.gate = inner, gate
        self.calls = 0
        self.gate_opened: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.gate_opened.append(self.gate.wait(WAIT_S))
        out: torch.Tensor = self.inner(x)
        return out


def gated_model(gate: threading.Event) -> tuple[FeatureModel, GatedNet]:
    model = tiny_model()
    net = GatedNet(model.net, gate)
    model.net = net
    return model, net


def test_decoding_runs_ahead_of_inference(sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the model holds batch 1, batch 2 is decoded (the prefetch)."""
    decoded, second_batch_decoded = [0], threading.Event()
    lock = threading.Lock()

    def counting_decode(raw: Any, opts: DecodeOptions) -> Any:
        out = decode_message(raw, opts)
        with lock:
            decoded[0] += 1
            if decoded[0] >= 8:
                second_batch_decoded.set()
        return out

    monkeypatch.setattr(pipeline_mod, "decode_message", counting_decode)
    model, net = gated_model(second_batch_decoded)
    h = Harness(sqlite_store, model)
    try:
        h.run(batches(2))
    finally:
        h.pipeline.close()
    assert net.gate_opened == [True], "batch 2 was not decoded while batch 1 was in the model"


class SlowFirstWrite:
    """A store whose first batch write waits for ``gate``, recording whether it opened."""

    def __init__(self, store: SQLiteStore, gate: threading.Event) -> None:
        self.store, self.gate = store, gate
        self.gate_opened: list[bool] = []

    def write_extracted(self, batch: Sequence[Extracted], dtype: str) -> None:
        if not self.gate_opened:
            self.gate_opened.append(self.gate.wait(WAIT_S))
        self.store.write_extracted(batch, dtype)


def test_store_writes_overlap_the_next_batchs_inference(sqlite_store: SQLiteStore) -> None:
    second_inference = threading.Event()
    model = tiny_model()
    inner = model.net

    class Counting(torch.nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            if Counting.calls == 2:
                second_inference.set()
            out: torch.Tensor = inner(x)
            return out

    model.net = Counting()
    slow = SlowFirstWrite(sqlite_store, second_inference)
    h = Harness(sqlite_store, model, writer_store=slow)
    try:
        assert len(h.run(batches(2))) == 2
    finally:
        h.pipeline.close()
    assert slow.gate_opened == [True], "batch 2 was not inferred while batch 1 was being written"


def test_prefetch_is_bounded(sqlite_store: SQLiteStore) -> None:
    """With the model stuck, submit blocks after the model's batch plus ``prefetch_batches``."""
    release = threading.Event()
    model, _net = gated_model(release)
    h = Harness(sqlite_store, model, prefetch_batches=1)
    submitted = [0]

    def submit_all() -> None:
        for b in batches(4):
            h.pipeline.submit(b)  # type: ignore[arg-type]
            submitted[0] += 1

    t = threading.Thread(target=submit_all)
    t.start()
    t.join(1.0)
    try:
        assert t.is_alive() and submitted[0] < 4, "submit did not block while the model was stuck"
    finally:
        release.set()
        t.join(WAIT_S)
        h.pipeline.drain()
        h.pipeline.close()
    assert submitted[0] == 4 and sqlite_store.count("features") == 16


class FailingStore:
    def __init__(self, store: SQLiteStore, fail_on: int) -> None:
        self.store, self.fail_on, self.calls = store, fail_on, 0

    def write_extracted(self, batch: Sequence[Extracted], dtype: str) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise StoreError("disk on fire")
        self.store.write_extracted(batch, dtype)


def test_a_store_failure_stops_the_pipeline_after_the_stored_batches(sqlite_store: SQLiteStore) -> None:
    h = Harness(sqlite_store, writer_store=FailingStore(sqlite_store, fail_on=2))
    work = batches(3)
    try:
        for b in work:
            try:
                h.pipeline.submit(b)  # type: ignore[arg-type]
            except PipelineFailed:
                break
        with pytest.raises(PipelineFailed, match="disk on fire"):
            h.pipeline.drain()
        completed: list[Any] = h.pipeline.completed()
        assert completed == [work[0]]  # stored before the failure: may be committed
        with pytest.raises(PipelineFailed):
            h.pipeline.completed()
    finally:
        h.pipeline.close()
    assert sqlite_store.count("features") == 4


def test_unexpected_decoder_errors_are_dead_lettered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: bytes, max_pixels: int) -> Image.Image:
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(steps_mod, "decode", broken)
    assert len(harness.run(batches(1))) == 1
    assert len(harness.producer.sent) == 4
    assert all(b"error: unpack" in h["error"] for _, h in harness.producer.sent)
    assert harness.store.count("features") == 0


def test_batched_jpeg_decoding_path_with_pillow_for_the_rest(sqlite_store: SQLiteStore) -> None:
    """The GPU path (JPEGs left encoded, decoded in one batch by torchvision) run on the CPU;
    PNGs in the same batch go through Pillow; vectors agree with the Pillow-only path."""
    work = [[image_message(0, jpeg_bytes(0, (320, 240))), image_message(1, png_bytes(1), "image/png")]]
    h = Harness(sqlite_store, jpeg_on_device=True)
    try:
        assert h.run(work) == work
    finally:
        h.pipeline.close()
    opts = DecodeOptions(max_pixels=1_000_000, jpeg_on_device=True)
    kinds = [type(decode_message(m, opts)).__name__ for m in work[0]]  # type: ignore[arg-type]
    assert kinds == ["Encoded", "Decoded"]
    batch = sqlite_store.listing_features(_listing(work[0][0]), h.model.info)
    pillow = h.model.embed_images([Image.open(io.BytesIO(jpeg_bytes(0, (320, 240)))).convert("RGB")])
    assert float(batch.vectors[0] @ pillow[0]) > 0.99


def _listing(m: FakeMessage) -> uuid.UUID:
    return uuid.UUID(dict(m.headers())["listing_id"].decode())


def test_a_failing_batched_decode_falls_back_to_pillow(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kw: Any) -> torch.Tensor:
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(pipeline_mod, "decode_jpegs_on_device", refuse)
    h, work = Harness(sqlite_store, jpeg_on_device=True), batches(1)
    try:
        h.run(work)
    finally:
        h.pipeline.close()
    assert sqlite_store.count("features") == 4 and h.producer.sent == []
    vectors = sqlite_store.listing_features(_listing(work[0][0]), h.model.info).vectors
    assert np.all(np.isfinite(vectors))


def test_removals_apply_in_stream_order_with_the_uploads(harness: Harness, sqlite_store: SQLiteStore) -> None:
    listing, other = uuid.uuid4(), uuid.uuid4()
    a, b, c, d, e = (uuid.uuid4() for _ in range(5))
    harness.run([[image_message(0, jpeg_bytes(0), listing=listing, image=c)]])
    harness.run(
        [
            [
                image_message(1, jpeg_bytes(1), listing=listing, image=a),
                image_message(2, jpeg_bytes(2), listing=listing, image=b),
                removal_message(3, listing, a),  # after its upload: a is gone
                removal_message(4, listing, c),  # stored by an earlier batch: gone...
                image_message(5, jpeg_bytes(5), listing=listing, image=c),  # ...and uploaded again
            ],
            [
                image_message(6, jpeg_bytes(6), listing=other, image=d),
                removal_message(7, other),  # the whole listing, with d
                image_message(8, jpeg_bytes(8), listing=other, image=e),  # a new start
            ],
        ]
    )
    held = {i.image_id for lid in (listing, other) for i in sqlite_store.listing_images(lid)}
    assert held == {b, c, e}
    assert sqlite_store.existing_images([a, b, c, d, e], harness.model.info.name) == {b, c, e}
    assert harness.metrics.totals.removals == 3
    assert harness.producer.sent == []  # removals are not dead letters
