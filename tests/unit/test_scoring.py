"""Exact search and aggregation against a brute-force oracle, ties included."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from config.settings import SearchSettings
from schemas.codec import l2_normalise
from schemas.records import FeatureBatch, ModelInfo
from search.engine import UnknownId, VectorIndex
from search.scoring import ScoreOptions

DIM = 16
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float32", "random:test")


def oracle(
    vectors: npt.NDArray[Any],
    listing_of: Sequence[uuid.UUID],
    q: npt.NDArray[Any],
    opts: ScoreOptions,
    exclude: Collection[uuid.UUID] = (),
) -> list[tuple[uuid.UUID, float]]:
    """Plain Python: the definition of the answer."""
    scores = vectors @ q
    per: dict[uuid.UUID, float] = {}
    for lid in set(listing_of):
        s = sorted((float(scores[i]) for i in range(len(scores)) if listing_of[i] == lid), reverse=True)
        if opts.aggregation == "max":
            per[lid] = s[0]
        elif opts.aggregation == "mean_top_n":
            per[lid] = float(np.float32(np.mean(s[: opts.top_n])))
        else:
            per[lid] = float(sum(x >= opts.threshold for x in s))
    ranked = sorted((lid for lid in per if lid not in exclude), key=lambda lid: (-per[lid], lid.bytes))
    return [(lid, per[lid]) for lid in ranked[: opts.k]]


def make_index(seed: int, n_listings: int = 30, ties: bool = False, dtype: str = "float16"):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    listings = [uuid.UUID(int=int(rng.integers(0, 2**62)) << 64) for _ in range(n_listings)]  # trailing zeros
    listing_of, vectors = [], []
    for lid in listings:
        for _ in range(int(rng.integers(1, 6))):
            listing_of.append(lid)
            vectors.append(rng.normal(size=DIM))
    v = l2_normalise(np.array(vectors))
    if ties:  # duplicate whole listings so several listings share exactly the same score
        v[len(v) // 2 :] = v[: len(v) - len(v) // 2]
    v = v.astype(dtype).astype(np.float32)  # what the index holds: the oracle scores the same values
    image_ids = [uuid.uuid4() for _ in listing_of]
    index = VectorIndex(MODEL, SearchSettings(dtype=dtype))  # type: ignore[arg-type]
    index.add(
        FeatureBatch(
            np.array([x.bytes for x in listing_of], dtype="S16"),
            np.array([x.bytes for x in image_ids], dtype="S16"),
            v,
        )
    )
    return index, v, listing_of, image_ids


@pytest.mark.parametrize("aggregation", ["max", "mean_top_n", "count_above"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_exact_search_equals_brute_force(aggregation: str, ties: bool, dtype: str) -> None:
    index, v, listing_of, _ = make_index(1, ties=ties, dtype=dtype)
    q = v[3]
    opts = ScoreOptions(k=7, aggregation=aggregation, threshold=0.2)  # type: ignore[arg-type]
    got = [(r.listing_id, r.score) for r in index.search(q, opts)]
    want = oracle(v, listing_of, q, opts)
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5)


def test_matches_are_the_listings_images_best_first() -> None:
    index, v, listing_of, image_ids = make_index(2)
    q = v[0]
    top = index.search(q, ScoreOptions(k=1))[0]
    own = [i for i, lid in enumerate(listing_of) if lid == top.listing_id]
    expected = sorted(((image_ids[i], float(v[i] @ q)) for i in own), key=lambda t: -t[1])
    assert [m[0] for m in top.matches] == [e[0] for e in expected][:5]
    assert top.matches[0][1] == pytest.approx(top.score)


def test_exclude_min_score_and_remove() -> None:
    index, v, listing_of, _ = make_index(3)
    q = v[0]
    first = index.search(q, ScoreOptions(k=3))[0].listing_id
    assert first == listing_of[0]
    assert first not in [r.listing_id for r in index.search(q, ScoreOptions(k=3), exclude=[first])]
    assert all(r.score >= 0.5 for r in index.search(q, ScoreOptions(k=30, min_score=0.5)))
    index.remove_listing(first)
    assert first not in [r.listing_id for r in index.search(q, ScoreOptions(k=30))]


def test_add_replaces_an_existing_image() -> None:
    index, v, listing_of, image_ids = make_index(4)
    n = len(index)
    index.add(
        FeatureBatch(np.array([listing_of[0].bytes], "S16"), np.array([image_ids[0].bytes], "S16"), -v[:1])
    )
    assert len(index) == n
    _, vec = index.image_vector(image_ids[0])
    np.testing.assert_array_equal(vec, -v[0])


def test_clear_errors() -> None:
    index, *_ = make_index(5)
    with pytest.raises(ValueError, match=f"must have {DIM} values, got 3"):
        index.search(np.ones(3, np.float32), ScoreOptions())
    with pytest.raises(UnknownId, match=r"image .* has no vector"):
        index.image_vector(uuid.uuid4())
    with pytest.raises(UnknownId, match=r"listing .* has no vectors"):
        index.listing_vectors(uuid.uuid4())
    with pytest.raises(ValueError, match="k must be at least 1"):
        ScoreOptions(k=0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        ScoreOptions(aggregation="median")  # type: ignore[arg-type]


def test_ranked_each_answers_every_request_as_if_alone() -> None:
    """A batch with mixed options and exclusions: each row of scores ranked with its own request."""
    from search.scoring import SearchRequest, group_starts, ranked, ranked_each

    rng = np.random.default_rng(7)
    listing_of = sorted(uuid.UUID(int=int(i)) for i in rng.integers(1, 12, size=60))
    listing_rows = np.array([u.bytes for u in listing_of], dtype="S16")
    image_ids = np.array([uuid.UUID(int=1000 + i).bytes for i in range(60)], dtype="S16")
    starts = group_starts(listing_rows)
    listing_ids = listing_rows[starts]
    requests = [
        SearchRequest(l2_normalise(rng.normal(size=(1, DIM)))[0], ScoreOptions(k=3)),
        SearchRequest(
            l2_normalise(rng.normal(size=(1, DIM)))[0],
            ScoreOptions(k=5, aggregation="mean_top_n", top_n=2),
            exclude=frozenset({listing_of[0], listing_of[-1]}),
        ),
        SearchRequest(
            l2_normalise(rng.normal(size=(1, DIM)))[0],
            ScoreOptions(k=4, aggregation="count_above", threshold=0.1),
        ),
    ]
    vectors = l2_normalise(rng.normal(size=(60, DIM)))
    scores = (np.stack([r.vector for r in requests]) @ vectors.T).astype(np.float32)  # by query
    together = ranked_each(scores, starts, listing_ids, image_ids, requests)
    for j, r in enumerate(requests):
        allowed = ~np.isin(listing_ids, np.array([e.bytes for e in r.exclude], dtype="S16"))
        alone = ranked(scores[j], starts, listing_ids, image_ids, allowed, r.opts)
        assert together[j] == alone
    assert {x.listing_id for x in together[1]}.isdisjoint({listing_of[0], listing_of[-1]})
    assert [len(t) for t in together] == [3, 5, 4]
    with pytest.raises(ValueError, match="scores must be"):
        ranked_each(scores[:2], starts, listing_ids, image_ids, requests)
