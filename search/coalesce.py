"""Coalescing: work that arrives while a pass is running waits for the next pass and is done
together with everything else waiting, in one call (for searches, one read of the matrix by
the kernel; for uploads, one forward pass of the CNN).

A :class:`Coalescer` has one pass thread (started by the first item, ended after a minute
idle). The thread sleeps while nothing waits; an item submitted then starts a pass at once (a
lone item is never delayed: there is no fixed wait to gather a batch). Whatever arrives while
that pass runs forms the next batch, up to ``max_batch`` items in the order they came. Each
item gets a :class:`concurrent.futures.Future`: a blocking caller waits on ``result()``, an
async one awaits ``asyncio.wrap_future``. An item whose future was cancelled before its pass
is dropped unscored.

``submit`` may be given a limit on the items waiting: past it the item is refused with
:class:`Overloaded` (the API answers 503 with ``Retry-After``) instead of queued, so latency
cannot grow without end under overload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)
IDLE_S = 60.0  # a pass thread idle this long ends (a service that is not searched holds none)
T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """More items wait for a pass than the caller allows: refused, not queued."""

    def __init__(self, stage: str, waiting: int, limit: int) -> None:
        super().__init__(
            f"{waiting} {stage} requests already wait for the next pass (the limit is {limit}); retry shortly"
        )
        self.stage, self.waiting, self.limit = stage, waiting, limit


class PassObserver(Protocol):
    """Told about every pass (e.g. the API's Prometheus metrics)."""

    def observe_pass(self, stage: str, size: int, waits: Sequence[float], seconds: float) -> None:
        """``size`` items done in one pass of ``seconds``; ``waits``: how long each waited for it."""
        ...


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: Future[R] = field(default_factory=Future)
    since: float = field(default_factory=time.perf_counter)


class Coalescer(Generic[T, R]):
    """Runs ``run`` over batches of submitted items, one pass at a time on its own thread.
    ``run`` returns one outcome per item, in order: a result, or the exception that item gets
    (its neighbours are unaffected); if ``run`` raises, every item of the batch gets that."""

    def __init__(
        self,
        stage: str,
        run: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch: int | Callable[[], int],
    ) -> None:
        self.stage = stage
        self._run = run
        self._max_batch = max_batch
        self.observers: list[PassObserver] = []
        self._queue: deque[_Waiting[T, R]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.passes = 0  # passes run so far

    @property
    def waiting(self) -> int:
        """Items waiting for a pass (not counting those in the pass running now)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether the pass thread is alive (it ends after ``IDLE_S`` idle)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def max_batch(self) -> int:
        """Items per pass at most (1 if the callable giving it fails)."""
        try:
            limit = self._max_batch() if callable(self._max_batch) else self._max_batch
        except Exception:
            log.exception("the %s batch limit could not be read: one item a pass", self.stage)
            return 1
        return max(1, limit)

    def submit(self, item: T, limit: int | None = None) -> Future[R]:
        """Queue ``item`` for the next pass. With ``limit``, refuse it (:class:`Overloaded`)
        when that many items already wait."""
        waiting: _Waiting[T, R] = _Waiting(item)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.stage} passes are stopped")
            if limit is not None and len(self._queue) >= limit:
                raise Overloaded(self.stage, len(self._queue), limit)
            self._queue.append(waiting)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"lookalike-{self.stage}-pass", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return waiting.future

    def close(self, timeout_s: float | None = None) -> None:
        """Take no more items; the pass thread finishes what waits, then ends."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _take(self) -> list[_Waiting[T, R]] | None:
        """The next batch: the items waiting (at most ``max_batch``, oldest first) whose
        futures were not cancelled; None once closed and empty, or after ``IDLE_S`` idle."""
        size = self.max_batch  # read outside the lock: it may be a callable
        with self._cond:
            while not self._queue:
                idle = not self._closed and not self._cond.wait(IDLE_S) and not self._queue
                if self._closed or idle:
                    self._thread = None  # the next submit (if open) starts another
                    return None
            batch: list[_Waiting[T, R]] = []
            while self._queue and len(batch) < size:
                waiting = self._queue.popleft()
                if waiting.future.set_running_or_notify_cancel():
                    batch.append(waiting)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._pass(batch)

    def _pass(self, batch: list[_Waiting[T, R]]) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._run([w.item for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"a {self.stage} pass gave {len(outcomes)} outcomes for {len(batch)} items"
                )
        except BaseException as exc:  # every item of the batch is told, none is left hanging
            log.debug("a %s pass of %d failed: %s", self.stage, len(batch), exc)
            outcomes = [exc] * len(batch)
        seconds = time.perf_counter() - started
        self.passes += 1
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)
        waits = [started - w.since for w in batch]
        for observer in self.observers:
            try:
                observer.observe_pass(self.stage, len(batch), waits, seconds)
            except Exception:  # a broken observer must not stop the passes
                log.exception("the %s pass observer %r failed", self.stage, observer)
