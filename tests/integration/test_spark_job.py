"""The Spark job gives the in-memory engine's answer, for every aggregation and stock filter."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from schemas.codec import l2_normalise
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel
from search.engine import load_index
from search.scoring import ScoreOptions
from search.service import SearchService
from search.spark.job import load_features, score_queries

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
    answers = score_queries(spark, features, sqlite_store.url, MODEL, catalogue, opts, in_stock_only)
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL))
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
        score_queries(spark, features, sqlite_store.url, MODEL, np.ones((1, 5), np.float32), ScoreOptions())
