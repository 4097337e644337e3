"""bench.spark_floor on a real local[2] session, at a tiny size: every figure measured, and the
derived ones consistent with the measured ones."""

from __future__ import annotations

import pytest

from bench import spark_floor

pytestmark = pytest.mark.integration


def test_the_floor_is_measured_on_real_spark(spark) -> None:  # type: ignore[no-untyped-def]
    found = spark_floor.measure(spark, rows=4000, dim=32)
    assert not spark.sparkContext._jsc.sc().isStopped()  # the suite's shared session is left running
    assert found["partitions"] == 2 and found["rows"] == 4000 and found["cores"] == 2
    assert found["cache_gb"] == pytest.approx(4000 * 32 * 2 / 1e9, rel=1e-2)
    measured = (
        "trivial_job_ms",
        "pass_reading_cache_ms",
        "pass_and_shuffle_ms",
        "pass_over_resident_ms",
        "pass_scoring_1_ms",
        "pass_scoring_64_ms",
    )
    for key in (*measured, "move_gb_per_s_per_core", "scan_gb_per_s_per_core"):
        assert found[key] > 0, key
    assert found["resident_over_cache"] == pytest.approx(
        found["pass_scoring_1_ms"] / found["pass_reading_cache_ms"], rel=1e-3
    )
    assert found["shuffle_stage_ms"] == pytest.approx(
        found["pass_and_shuffle_ms"] - found["pass_reading_cache_ms"], abs=0.2
    )
    assert found["query_core_ms_at_64"] == pytest.approx(
        max(found["pass_scoring_64_ms"] - found["pass_scoring_1_ms"], 0) / 63 * 2, rel=1e-3, abs=1e-3
    )
