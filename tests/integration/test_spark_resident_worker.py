"""Resident blocks in a real Spark task: the Python worker that maps them freezes what it holds
out of the garbage collector's walks (pyspark's daemon collects after every task); the driver
is left as it is."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from search.spark import resident
from search.spark.blocks import Block
from search.spark.resident import Resident

pytestmark = pytest.mark.integration


def _keep(partition: int, _: Iterable[int]) -> Iterator[Resident]:
    ids = np.array([b"%016d" % (partition * 10 + i) for i in range(3)], dtype="S16")
    block = Block(ids, np.arange(3, dtype=np.int64), ids, np.ones((3, 4), dtype=np.float16))
    yield resident.keep([block], resident.folder_for("test-worker-freeze", 0, partition), None)


def _frozen_after_mapping(parts: Iterable[Resident]) -> Iterator[tuple[int, int]]:
    rows = sum(b.rows for p in parts for b in resident.blocks(p))
    yield rows, gc.get_freeze_count()


def test_a_task_that_maps_resident_blocks_freezes_its_worker(spark) -> None:  # type: ignore[no-untyped-def]
    sc = spark.sparkContext
    kept = sc.parallelize(range(2), 2).mapPartitionsWithIndex(_keep).cache()
    try:
        assert kept.map(lambda r: r.rows).collect() == [3, 3]
        driver_before = gc.get_freeze_count()
        seen = kept.mapPartitions(_frozen_after_mapping).collect()
        assert [rows for rows, _ in seen] == [3, 3]
        assert all(frozen > 0 for _, frozen in seen), seen
        assert gc.get_freeze_count() == driver_before  # the driver's collector is untouched
    finally:
        kept.unpersist()
