"""The extract pipeline: the model never waits for decoding, and writes overlap inference.

    submit(batch) -> decode pool (threads) -> prefetch queue (bounded) -> infer thread
                  -> write queue (bounded) -> writer thread: store + dead letters -> completed()

The consumer loop submits Kafka batches and commits only the offsets of ``completed()``
batches: a batch completes once the store and the dead-letter topic acknowledged it, in
submission order. The bounded queues are the backpressure: ``submit`` blocks while the model
is ``prefetch_batches`` behind. The first failure stops the pipeline; it is raised from
``submit``, ``drain`` and ``completed`` (once the batches stored before it were handed out).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch

from extract.metrics import ExtractMetrics
from extract.model import FeatureModel, PendingVectors
from extract.preprocess import decode_jpegs_on_device, stack_uint8
from extract.steps import (
    DeadLetters,
    Decoded,
    DecodeOptions,
    Encoded,
    Outcome,
    Rejected,
    decode_message,
    extracted,
    kept_pixels,
)
from extract.writer import StoreWriter
from messaging.consumer import Message
from schemas.messages import DeleteMessage

log = logging.getLogger(__name__)
T = TypeVar("T")
_TICK_S = 0.1  # how often blocked stages look for a failure or close()


class PipelineFailed(RuntimeError):
    """A stage failed (the store gave up, the dead-letter topic refused); nothing after the
    failed batch was committed, so it is all redelivered."""


class _Stopped(Exception):
    """Internal: the pipeline is closing or failed; a blocked stage gives up."""


@dataclass
class _Job:
    batch: Sequence[Message]
    futures: list[Future[Outcome]]
    good: list[Decoded | Encoded] = field(default_factory=list)
    good_at: list[int] = field(default_factory=list)  # each good item's position in the batch
    removals: list[tuple[int, DeleteMessage]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    vectors: PendingVectors | None = None
    infer_s: float = 0.0


class ExtractPipeline:
    def __init__(
        self,
        model: FeatureModel,
        writer: StoreWriter,
        dead_letters: DeadLetters,
        opts: DecodeOptions,
        metrics: ExtractMetrics,
        *,
        decode_workers: int = 2,
        prefetch_batches: int = 2,
    ) -> None:
        self.model, self.writer, self.dead_letters = model, writer, dead_letters
        resize, crop = model.input_size  # decode to the size the model expects
        blobs = writer.blobs if writer is not None else None  # None: a model-only test
        read_blob = None if blobs is None else (lambda uri: writer.retry_blob(blobs.get, uri))
        opts = replace(
            opts, resize=resize, crop=crop, model=model.info.name, blobs=blobs, read_blob=read_blob
        )
        self.opts, self.metrics = opts, metrics
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self._prefetch: queue.Queue[_Job] = queue.Queue(prefetch_batches)
        self._writes: queue.Queue[_Job] = queue.Queue(2)
        self._cond = threading.Condition()
        self._done: list[Sequence[Message]] = []
        self._in_flight = 0
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._guarded(self._infer_loop), name="infer", daemon=True),
            threading.Thread(target=self._guarded(self._write_loop), name="write", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- the consumer loop's side -----------------------------------------------------------
    def submit(self, batch: Sequence[Message]) -> None:
        """Start decoding ``batch``; blocks while the model is ``prefetch_batches`` behind."""
        self._raise_if_failed()
        futures = [self._pool.submit(self._decode_timed, m) for m in batch]
        with self._cond:
            self._in_flight += len(batch)
        try:
            self._put(self._prefetch, _Job(batch, futures))
        except _Stopped:
            self._raise_if_failed()
            raise
        self.metrics.queue_depth.labels("prefetch").set(self._prefetch.qsize())

    def completed(self) -> list[Sequence[Message]]:
        """Batches stored since the last call, oldest first; their offsets may be committed."""
        with self._cond:
            done, self._done = self._done, []
        if not done:
            self._raise_if_failed()
        return done

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait until every submitted batch is stored (or raise the failure)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight and self._error is None:
                if self._closed:
                    raise PipelineFailed("the pipeline was closed with batches in flight")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self._in_flight} messages still in the pipeline after {timeout_s}s")
                self._cond.wait(_TICK_S)
        self._raise_if_failed()

    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def close(self) -> None:
        """Stop the stages and the decode pool. Batches still in flight are dropped, never
        completed: their offsets stay uncommitted (``drain`` first for a graceful stop)."""
        self._closed = True
        for t in self._threads:
            t.join(timeout=60)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- stages -------------------------------------------------------------------------------
    def _decode_timed(self, raw: Message) -> Outcome:
        started = time.perf_counter()
        try:
            return decode_message(raw, self.opts)
        finally:
            self.metrics.stage("decode", time.perf_counter() - started)

    def _infer_loop(self) -> None:
        while True:
            job = self._get(self._prefetch)
            started = time.perf_counter()
            outcomes = [f.result() for f in job.futures]
            self.metrics.stage("wait", time.perf_counter() - started)
            started = time.perf_counter()
            self._infer(job, outcomes)
            job.infer_s = time.perf_counter() - started
            self._put(self._writes, job)
            self.metrics.queue_depth.labels("write").set(self._writes.qsize())

    def _infer(self, job: _Job, outcomes: list[Outcome]) -> None:
        encoded = [o for o in outcomes if isinstance(o, Encoded)]
        on_device = self._decode_on_device(encoded) if encoded else None
        if on_device is None and encoded:  # nvJPEG refused the batch: Pillow, one by one
            cpu = replace(self.opts, jpeg_on_device=False)
            again = [r for r, o in zip(job.batch, outcomes, strict=True) if isinstance(o, Encoded)]
            redone = iter(self._pool.map(lambda r: decode_message(r, cpu), again))
            outcomes = [next(redone) if isinstance(o, Encoded) else o for o in outcomes]
            encoded = []
        decoded_at = [n for n, o in enumerate(outcomes) if isinstance(o, Decoded)]
        encoded_at = [n for n, o in enumerate(outcomes) if isinstance(o, Encoded)]
        decoded = [o for o in outcomes if isinstance(o, Decoded)]
        job.rejected = [o for o in outcomes if isinstance(o, Rejected)]
        job.removals = [(n, o) for n, o in enumerate(outcomes) if isinstance(o, DeleteMessage)]
        job.good, job.good_at = [*decoded, *encoded], [*decoded_at, *encoded_at]
        parts = [stack_uint8([d.pixels for d in decoded], pin=self.model.cuda)] if decoded else []
        if on_device is not None:
            parts.append(on_device)
        if parts:
            on = self.model.device
            pixels = parts[0] if len(parts) == 1 else torch.cat([p.to(on, non_blocking=True) for p in parts])
            job.vectors = self.model.embed_async(pixels)

    def _decode_on_device(self, encoded: list[Encoded]) -> torch.Tensor | None:
        try:
            return decode_jpegs_on_device(
                [e.data for e in encoded], self.model.device, *self.model.input_size
            )
        except RuntimeError as exc:
            log.warning("GPU JPEG decode failed for a batch (%s); decoding it with Pillow", exc)
            return None

    def _write_loop(self) -> None:
        while True:
            job = self._get(self._writes)
            started = time.perf_counter()
            vectors = job.vectors.result() if job.vectors else np.zeros((0, self.model.info.dim), np.float32)
            self.metrics.stage("infer", job.infer_s + time.perf_counter() - started)
            rows = [extracted(g, v, self.model.info.name) for g, v in zip(job.good, vectors, strict=True)]
            started = time.perf_counter()
            pixels = {g.message.image_id: p for g in job.good if (p := kept_pixels(g, self.writer.blobs))}
            backfill = frozenset(g.message.image_id for g in job.good if g.message.model)
            self.writer.apply(list(zip(job.good_at, rows, strict=True)), job.removals, pixels, backfill)
            self.metrics.stage("write", time.perf_counter() - started)
            started = time.perf_counter()
            self.dead_letters.send(job.rejected)
            self.metrics.stage("dlq", time.perf_counter() - started)
            for r in job.rejected:
                self.metrics.dead_lettered(r.stage)
            self.metrics.stored(len(rows), len(job.removals))
            with self._cond:
                self._done.append(job.batch)
                self._in_flight -= len(job.batch)
                self._cond.notify_all()

    # -- plumbing -----------------------------------------------------------------------------
    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the consumer loop, which stops without committing
                log.error("extract pipeline stopped: %s", exc, exc_info=True)
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()

        return run

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise PipelineFailed(f"extract pipeline failed: {self._error}") from self._error

    def _put(self, q: queue.Queue[T], item: T) -> None:
        while True:
            if self._error is not None or self._closed:
                raise _Stopped
            try:
                q.put(item, timeout=_TICK_S)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[T]) -> T:
        while True:
            if self._error is not None or self._closed:
                raise _Stopped
            try:
                return q.get(timeout=_TICK_S)
            except queue.Empty:
                continue
