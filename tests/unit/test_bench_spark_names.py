"""The Spark benchmarks' result files are named by the master they ran on."""

from __future__ import annotations

import pytest

from bench.spark_serve import slug


@pytest.mark.parametrize(
    ("master", "name"),
    [
        ("local[2]", "local-2"),
        ("local[*]", "local"),
        ("spark://127.0.0.1:40123", "standalone"),  # the cluster's port changes from run to run
        ("k8s://https://api.example:6443", "k8s-https-api-example-6443"),
    ],
)
def test_a_result_file_is_named_by_its_master(master: str, name: str) -> None:
    assert slug(master) == name
