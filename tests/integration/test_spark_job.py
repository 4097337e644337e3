"""The Spark job gives the in-memory engine's answer, for every aggregation and stock filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from config.settings import SearchSettings
from lookalike import spark_search
from schemas.codec import l2_normalise
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel, as_uuid
from search.engine import UnknownId
from search.loader import load_index
from search.scoring import ScoreOptions
from search.service import SearchService
from search.spark import queries
from search.spark.job import load_features, score_queries
from store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration
DIM = 24
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")


@pytest.fixture
def catalogue(sqlite_store):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    rows, stock = [], []
    for n in range(40):
        lid = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | n)
        for _ in range(int(rng.integers(1, 6))):
            image = ImageRecord(lid, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1)
            rows.append(Extracted(image, f"listing-{n}", MODEL.name, l2_normalise(rng.normal(size=DIM))))
        stock.append(StockLevel(lid, 0 if n % 3 == 0 else n, uuid.uuid4()))
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)
    sqlite_store.put_stock(stock)
    return rng.normal(size=(4, DIM)).astype(np.float32)


@pytest.mark.parametrize("aggregation", ["max", "mean_top_n", "count_above"])
@pytest.mark.parametrize("in_stock_only", [False, True])
def test_spark_equals_engine(spark, sqlite_store, catalogue, aggregation: str, in_stock_only: bool) -> None:  # type: ignore[no-untyped-def]
    opts = ScoreOptions(k=8, aggregation=aggregation, threshold=0.1)  # type: ignore[arg-type]
    features = load_features(spark, sqlite_store.url, MODEL, shards=5)
    search = SearchSettings()
    answers = score_queries(
        spark, features, sqlite_store.url, MODEL, catalogue, opts, search.dtype, in_stock_only
    )
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, search))
    assert len(answers) == len(catalogue)
    for answer, q in zip(answers, l2_normalise(catalogue), strict=True):
        expected = service.search_vector(q, opts, in_stock_only)
        assert [r.listing_id for r in answer.results] == [r.listing_id for r in expected.results]
        np.testing.assert_allclose(
            [r.score for r in answer.results], [r.score for r in expected.results], rtol=1e-5
        )
        assert [r.inventory for r in answer.results] == [r.inventory for r in expected.results]
        assert [[m.image_id for m in r.images] for r in answer.results] == [
            [m.image_id for m in r.images] for r in expected.results
        ]
        if in_stock_only:
            assert all(r.inventory and r.inventory > 0 for r in answer.results)
        stored = sqlite_store.read_query_results(answer.query_id)
        assert [r.listing_id for r in stored] == [r.listing_id for r in answer.results]
        assert stored[0].listing_name.startswith("listing-")


def test_wrong_dimension_is_refused(spark, sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    features = load_features(spark, sqlite_store.url, MODEL, shards=2)
    with pytest.raises(ValueError, match=f"must have {DIM} columns, got 5"):
        score_queries(
            spark, features, sqlite_store.url, MODEL, np.ones((1, 5), np.float32), ScoreOptions(), "float16"
        )


def test_queries_from_stored_images_and_a_file(spark, sqlite_store, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    search = SearchSettings()
    index = load_index(sqlite_store, MODEL, search)
    images = [as_uuid(i) for i in index.image_id_array()[:3]]
    q = queries.from_images(sqlite_store, MODEL, images)
    np.testing.assert_array_equal(q, [index.image_vector(i)[1] for i in images])
    np.save(tmp_path / "q.npy", catalogue)
    np.testing.assert_allclose(
        queries.from_file(tmp_path / "q.npy", MODEL), l2_normalise(catalogue), rtol=1e-6
    )
    with pytest.raises(UnknownId, match="is not in the store"):
        queries.from_images(sqlite_store, MODEL, [uuid.uuid4()])
    features = load_features(spark, sqlite_store.url, MODEL, shards=3)
    answers = score_queries(spark, features, sqlite_store.url, MODEL, q, ScoreOptions(k=5), search.dtype)
    service = SearchService(sqlite_store, index)
    for answer, vector in zip(answers, q, strict=True):
        expected = service.search_vector(vector, ScoreOptions(k=5))
        assert [r.listing_id for r in answer.results] == [r.listing_id for r in expected.results]


def test_float32_in_memory_dtype_matches_the_engine(spark, sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    opts = ScoreOptions(k=6, aggregation="mean_top_n")
    features = load_features(spark, sqlite_store.url, MODEL, shards=4)
    answers = score_queries(spark, features, sqlite_store.url, MODEL, catalogue, opts, dtype="float32")
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings(dtype="float32")))
    for answer, q in zip(answers, l2_normalise(catalogue), strict=True):
        expected = service.search_vector(q, opts)
        assert [r.listing_id for r in answer.results] == [r.listing_id for r in expected.results]
        np.testing.assert_allclose(
            [r.score for r in answer.results], [r.score for r in expected.results], rtol=1e-5
        )


def test_k_out_of_range_is_refused(
    sqlite_store: SQLiteStore, catalogue: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """k is checked where requests enter: the job's command line."""
    np.save(tmp_path / "q.npy", catalogue[:1])
    with pytest.raises(SystemExit) as exited:
        spark_search.main(["--vectors", str(tmp_path / "q.npy"), "--k", "1001"])
    assert (
        exited.value.code == 2
        and "argument --k: k must be between 1 and 1000, got 1001" in capsys.readouterr().err
    )


def test_the_job_runs_from_the_command_line(sqlite_store, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "q.npy", catalogue[:2])
    env = {
        **os.environ,
        "LOOKALIKE_STORE": sqlite_store.url,
        "LOOKALIKE_SPARK_MASTER": "local[1]",
        "LOOKALIKE_SEARCH_FOLLOW": "off",
        "LOOKALIKE_MODEL_NAME": MODEL.name,
    }
    args = [sys.executable, "-m", "lookalike.spark_search", "--vectors", str(tmp_path / "q.npy"), "--k", "4"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    for answer, q in zip(answers, l2_normalise(catalogue[:2]), strict=True):
        expected = service.search_vector(q, ScoreOptions(k=4))
        assert [r["listing_id"] for r in answer["results"]] == [str(r.listing_id) for r in expected.results]
        assert len(sqlite_store.read_query_results(uuid.UUID(answer["query_id"]))) == 4
