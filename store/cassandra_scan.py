"""Token-range scans of the Murmur3 ring: shard bounds and an ordered parallel reader.

A range is ``(lo, hi]`` (CQL ``token(k) > lo AND token(k) <= hi``), as the Spark
connector reads it. Shard bounds run from ``MIN_TOKEN`` to ``MAX_TOKEN``; ``MIN_TOKEN``
itself is never a partition's token (Murmur3Partitioner maps it to ``MAX_TOKEN``, and so
does the driver's ``Murmur3Token.hash_fn``), so the ranges hold every partition exactly once.
A partition has one token, so a listing never spans two ranges.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1
_SPAN = MAX_TOKEN - MIN_TOKEN

T = TypeVar("T")
TokenRange = tuple[int, int]


def shard_ranges(shard: int, shards: int, splits: int = 1) -> list[TokenRange]:
    """Shard ``shard`` of ``shards`` as ``splits`` contiguous ``(lo, hi]`` ranges, in ring order."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    lo = MIN_TOKEN + shard * _SPAN // shards
    hi = MIN_TOKEN + (shard + 1) * _SPAN // shards
    bounds = [lo + j * (hi - lo) // splits for j in range(splits)] + [hi]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def in_range(token: int, token_range: TokenRange) -> bool:
    lo, hi = token_range
    return lo < token <= hi


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def ordered_parallel(
    ranges: list[TokenRange],
    read_range: Callable[[TokenRange], Iterable[T]],
    parallelism: int,
    prefetch: int = 1,
) -> Generator[T, None, None]:
    """Yield the pages of every range, range after range in list order, while up to
    ``parallelism`` ranges are read at once. Memory is bounded: a reader blocks once
    ``prefetch`` pages of its range wait to be consumed. Closing the iterator early stops
    the readers; a reader's error is raised here, in the consumer."""
    if not ranges:
        return
    stop = threading.Event()
    queues: list[queue.Queue[object]] = [queue.Queue(maxsize=prefetch) for _ in ranges]

    def put(q: queue.Queue[object], item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work(index: int) -> None:
        q = queues[index]
        try:
            for page in read_range(ranges[index]):
                if not put(q, page):
                    return
            put(q, _DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            put(q, _Failed(error))

    # The pool starts ranges in list order, and the consumer drains them in list order,
    # so the range being consumed always has a running reader: no deadlock.
    pool = ThreadPoolExecutor(max_workers=min(parallelism, len(ranges)), thread_name_prefix="scan")
    try:
        for index in range(len(ranges)):
            pool.submit(work, index)
        for q in queues:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    raise item.error
                yield cast(T, item)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
