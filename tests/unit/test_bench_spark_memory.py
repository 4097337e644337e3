"""The Spark floor benchmark sizes the driver for its ``local[*]`` cache of blocks persisted in the
JVM (bench/spark_floor.py): at 1 000 000 rows the 2g default failed."""

from __future__ import annotations

import pytest

from bench.spark_floor import driver_memory


def test_a_local_driver_gets_room_for_twice_its_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_SPARK_DRIVER_MEMORY", raising=False)
    assert driver_memory("local[2]", 1_000_000, 1280) == "7g"  # a 2.56 GB cache: 5.12 -> 6, + 1
    assert driver_memory("local[*]", 1_000_000, 4096) == "18g"
    assert driver_memory("local[2]", 100_000, 1280) == "2g"  # never under the default


def test_a_cluster_or_a_set_memory_is_left_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_SPARK_DRIVER_MEMORY", raising=False)
    assert driver_memory("spark://127.0.0.1:7077", 1_000_000, 1280) is None
    monkeypatch.setenv("LOOKALIKE_SPARK_DRIVER_MEMORY", "4g")
    assert driver_memory("local[2]", 1_000_000, 1280) is None
