"""Token-range scans of the Murmur3 ring: shard bounds and an ordered parallel reader.

A range is ``(lo, hi]`` (CQL ``token(k) > lo AND token(k) <= hi``), as the Spark
connector reads it. Shard bounds run from ``MIN_TOKEN`` to ``MAX_TOKEN``; ``MIN_TOKEN``
itself is never a partition's token (Murmur3Partitioner maps it to ``MAX_TOKEN``, and so
does the driver's ``Murmur3Token.hash_fn``), so the ranges hold every partition exactly once.
A partition has one token, so a listing never spans two ranges.

:func:`ring_page` pages through a table's partitions in ring order (keyset paging on the token,
as a browse of the catalogue does).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from cassandra.metadata import Murmur3Token

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


def token_of(key: bytes) -> int:
    """The Murmur3 token of a partition key's serialised bytes (a ``uuid`` key: its 16 bytes)."""
    return int(Murmur3Token.hash_fn(key))


def _ring_key(row: Sequence[Any]) -> tuple[int, bytes]:
    return int(row[0]), bytes(row[1].bytes)


def ring_page(
    read: Callable[[int, int], Sequence[Sequence[Any]]], limit: int, after: tuple[int, bytes] | None
) -> list[Sequence[Any]]:
    """The first ``limit`` partitions after ``after`` = (token, key bytes) (None: from the
    start), in ring order: Cassandra's order of partitions, by token, then by key bytes where
    two keys share a token. The partition ``after`` names need not exist any more.

    ``read(token, n)`` gives at most ``n`` rows ``(token, uuid key, ...)`` whose token is at
    least ``token``, in ring order (``WHERE token(k) >= ? LIMIT ?``). CQL bounds only the
    token, so the rows of the cursor's own token up to the cursor itself are read again and
    dropped; should they fill a whole read (keys sharing one token), the next read is doubled."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cursor = (MIN_TOKEN, b"") if after is None else after
    found: list[Sequence[Any]] = []
    ask = limit + 1  # one more: the cursor's own row, when it still exists
    while len(found) < limit:
        rows = read(cursor[0], ask)
        found.extend(row for row in rows if _ring_key(row) > cursor)
        if len(rows) < ask:
            break  # the end of the ring
        last = _ring_key(rows[-1])
        ask = ask * 2 if last <= cursor else limit - len(found) + 1
        cursor = max(cursor, last)
    return found[:limit]


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
