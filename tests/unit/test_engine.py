"""The engine after changes (fresh tier, deletes, compaction), batches and approximate search,
each held to the brute-force oracle over exactly the rows that should be live."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from config.settings import SearchSettings
from schemas.codec import l2_normalise
from schemas.records import FeatureBatch, ModelInfo
from search.engine import UnknownId, VectorIndex
from search.scoring import ScoreOptions
from tests.unit.test_scoring import oracle

DIM = 16
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")
AGGREGATIONS = ["max", "mean_top_n", "count_above"]


class Catalogue:
    """Rows known to the test: what the index should hold, for the oracle."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows: dict[uuid.UUID, tuple[uuid.UUID, np.ndarray]] = {}  # image -> (listing, vector)

    def batch(self, listings: int, listing_ids: list[uuid.UUID] | None = None) -> FeatureBatch:
        ls, imgs, vecs = [], [], []
        for n in range(listings):
            # ids with trailing zero bytes: as_uuid must restore them
            lid = listing_ids[n] if listing_ids else uuid.UUID(int=int(self.rng.integers(1, 2**62)) << 64)
            for _ in range(int(self.rng.integers(1, 5))):
                image = uuid.uuid4()
                v = l2_normalise(self.rng.normal(size=DIM)).astype(np.float16).astype(np.float32)
                ls.append(lid.bytes)
                imgs.append(image.bytes)
                vecs.append(v)
                self.rows[image] = (lid, v)
        return FeatureBatch(np.array(ls, "S16"), np.array(imgs, "S16"), np.array(vecs, np.float32))

    def check(self, index: VectorIndex, opts: ScoreOptions, seed: int = 0, exact: bool | None = None) -> None:
        images = list(self.rows)
        vectors = np.array([self.rows[i][1] for i in images])
        listing_of = [self.rows[i][0] for i in images]
        q = l2_normalise(np.random.default_rng(seed).normal(size=DIM)).astype(np.float32)
        got = [(r.listing_id, r.score) for r in index.search(q, opts, exact=exact)]
        want = oracle(vectors, listing_of, q, opts)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5, atol=1e-6)
        assert len(index) == len(self.rows)


def fresh_index(cat: Catalogue, listings: int = 25, **settings: object) -> VectorIndex:
    index = VectorIndex(MODEL, SearchSettings(**settings))  # type: ignore[arg-type]
    index.reset([cat.batch(listings)])
    return index


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_vectors_added_after_load_are_searched(aggregation: str) -> None:
    cat = Catalogue(1)
    index = fresh_index(cat)
    index.add(cat.batch(10))  # new listings, in the fresh tier
    some_old = next(iter(cat.rows.values()))[0]
    index.add(cat.batch(1, [some_old]))  # more images of a listing of the main segment
    assert index.fresh_rows > 0
    opts = ScoreOptions(k=12, aggregation=aggregation, threshold=0.3)  # type: ignore[arg-type]
    for seed in range(3):
        cat.check(index, opts, seed)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_removed_images_and_listings_disappear(aggregation: str) -> None:
    cat = Catalogue(2)
    index = fresh_index(cat)
    index.add(cat.batch(5))
    images = list(cat.rows)
    gone_images = images[::7]  # from both tiers
    assert index.remove_images(gone_images) == len(gone_images)
    for image in gone_images:
        del cat.rows[image]
    gone_listing = next(iter(cat.rows.values()))[0]
    assert index.remove_listing(gone_listing) > 0
    cat.rows = {i: row for i, row in cat.rows.items() if row[0] != gone_listing}
    opts = ScoreOptions(k=40, aggregation=aggregation, threshold=0.3)  # type: ignore[arg-type]
    cat.check(index, opts)
    with pytest.raises(UnknownId):
        index.image_vector(gone_images[0])
    with pytest.raises(UnknownId):
        index.listing_vectors(gone_listing)
    assert index.remove_listing(gone_listing) == 0  # idempotent


def test_replacing_an_image_keeps_one_row() -> None:
    cat = Catalogue(3)
    index = fresh_index(cat)
    image, (listing, v) = next(iter(cat.rows.items()))
    n = len(index)
    new = (-v).astype(np.float32)
    index.add(FeatureBatch(np.array([listing.bytes], "S16"), np.array([image.bytes], "S16"), new[None]))
    cat.rows[image] = (listing, new)
    assert len(index) == n
    np.testing.assert_array_equal(index.image_vector(image)[1], new)
    cat.check(index, ScoreOptions(k=10))


def test_every_live_image_is_looked_up_in_either_tier() -> None:
    """image_vector finds each live image (main or fresh, replaced or not, ids ending in zero
    bytes) with its listing and vector, and no removed one."""
    cat = Catalogue(7)
    index = fresh_index(cat)
    listing, v = next(iter(cat.rows.values()))
    zero_tail = uuid.UUID(int=12345 << 64)  # an image id whose last 8 bytes are NUL
    index.add(FeatureBatch(np.array([listing.bytes], "S16"), np.array([zero_tail.bytes], "S16"), v[None]))
    cat.rows[zero_tail] = (listing, v)
    index.add(cat.batch(4))  # fresh rows
    replaced = next(iter(cat.rows))  # a main row, replaced by a fresh one
    moved = (-cat.rows[replaced][1]).astype(np.float32)
    index.add(
        FeatureBatch(
            np.array([cat.rows[replaced][0].bytes], "S16"), np.array([replaced.bytes], "S16"), moved[None]
        )
    )
    cat.rows[replaced] = (cat.rows[replaced][0], moved)
    gone = list(cat.rows)[1::5]
    index.remove_images(gone)
    for image in gone:
        del cat.rows[image]
    assert index.fresh_rows > 0
    for image, (want_listing, want_vector) in cat.rows.items():
        got_listing, got_vector = index.image_vector(image)
        assert got_listing == want_listing
        np.testing.assert_array_equal(got_vector, want_vector)
    for image in [*gone, uuid.UUID(int=12346 << 64)]:
        with pytest.raises(UnknownId):
            index.image_vector(image)


def test_fresh_tier_is_merged_past_its_limit() -> None:
    cat = Catalogue(4)
    index = fresh_index(cat, fresh_max_rows=8)
    for _ in range(6):
        index.add(cat.batch(2))
    assert index.fresh_rows <= 8
    gone = list(cat.rows)[::4]  # tombstones in the main tier and drops in the fresh one
    index.remove_images(gone)
    cat.rows = {i: row for i, row in cat.rows.items() if i not in gone}
    index.compact()
    assert index.fresh_rows == 0
    cat.check(index, ScoreOptions(k=15, aggregation="mean_top_n"))


def test_a_batch_gives_each_query_its_own_answer() -> None:
    cat = Catalogue(5)
    index = fresh_index(cat, listings=40)
    index.add(cat.batch(3))
    queries = l2_normalise(np.random.default_rng(9).normal(size=(7, DIM)))
    batch = index.search_many(queries, ScoreOptions(k=6))
    for q, answer in zip(queries, batch, strict=True):
        one = index.search(q, ScoreOptions(k=6))
        assert [r.listing_id for r in answer] == [r.listing_id for r in one]
        np.testing.assert_allclose([r.score for r in answer], [r.score for r in one], rtol=1e-5)


@pytest.mark.parametrize("ann", ["ivf_flat", "hnsw", "ivf_pq"])
def test_approximate_search_rescoring_is_exact(ann: str) -> None:
    cat = Catalogue(6)
    index = fresh_index(
        cat, listings=120, mode="approximate", ann=ann, nlist=4, nprobe=4, pq_m=4, candidates=10_000
    )
    assert index.approximate
    assert index.recall_at_10 == 1.0  # every row proposed: nothing can be missed
    index.add(cat.batch(3))  # fresh rows are always rescored
    for aggregation in AGGREGATIONS:
        cat.check(index, ScoreOptions(k=10, aggregation=aggregation, threshold=0.3), exact=None)  # type: ignore[arg-type]
        cat.check(index, ScoreOptions(k=10, aggregation=aggregation, threshold=0.3), exact=True)  # type: ignore[arg-type]


def test_approximate_recall_is_measured_and_scores_are_exact() -> None:
    cat = Catalogue(7)
    index = fresh_index(cat, listings=300, mode="approximate", nlist=16, nprobe=1, candidates=10)
    assert index.recall_at_10 is not None and 0 < index.recall_at_10 <= 1
    q = l2_normalise(np.random.default_rng(1).normal(size=DIM))
    exact = {r.listing_id: r.score for r in index.search(q, ScoreOptions(k=300), exact=True)}
    for r in index.search(q, ScoreOptions(k=10)):
        assert r.score == pytest.approx(exact[r.listing_id], rel=1e-5)


def test_clear_errors() -> None:
    cat = Catalogue(8)
    index = fresh_index(cat)
    with pytest.raises(ValueError, match=f"must have {DIM} values, got 5"):
        index.search_many(np.ones((2, 5), np.float32), ScoreOptions())
    with pytest.raises(ValueError, match=rf"vectors must be \(n, {DIM}\)"):
        index.add(FeatureBatch(np.zeros(1, "S16"), np.zeros(1, "S16"), np.ones((1, 3), np.float32)))
    with pytest.raises(ValueError, match="search takes one query vector, got 2"):
        index.search(np.ones((2, DIM), np.float32), ScoreOptions())
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        ScoreOptions(k=0)
    with pytest.raises(ValueError, match="search pq_m must divide the dimension 16, got 5"):
        fresh_index(cat, mode="approximate", ann="ivf_pq", pq_m=5, nlist=2)


def test_approximate_search_after_removals() -> None:
    cat = Catalogue(9)
    index = fresh_index(cat, listings=60, mode="approximate", nlist=4, nprobe=4, candidates=10_000)
    last = max((row[0] for row in cat.rows.values()), key=lambda u: u.bytes)  # the highest id
    index.remove_listing(last)
    gone = [i for i, row in cat.rows.items() if row[0] != last][::5]
    index.remove_images(gone)
    cat.rows = {i: row for i, row in cat.rows.items() if row[0] != last and i not in gone}
    for seed in range(3):
        cat.check(index, ScoreOptions(k=60, aggregation="count_above", threshold=0.2), seed)


# -- the FAISS first pass of exact search ----------------------------------------------------
def test_first_pass_answers_equal_the_full_scan_and_are_mostly_kept() -> None:
    cat = Catalogue(21)
    index = fresh_index(cat, listings=600, candidates=64, exact_first_pass=True)
    index.remove_images(list(cat.rows)[:50])
    for image in list(cat.rows)[:50]:
        del cat.rows[image]
    index.add(cat.batch(20))  # a fresh tier beside the main segment
    rng = np.random.default_rng(3)
    allowed = {lid for lid, _ in cat.rows.values() if rng.random() < 0.7}
    for n in range(40):
        opts = ScoreOptions(
            k=int(rng.integers(1, 20)), aggregation="max" if n % 2 == 0 else "mean_top_n", top_n=2
        )
        q = l2_normalise(rng.normal(size=DIM)).astype(np.float32)
        only = allowed if n % 3 == 0 else None
        full = index.search_many(q[None], opts, only=only, exact=True)
        first_pass = index.settings
        index.settings = first_pass.model_copy(update={"exact_first_pass": False})
        scan = index.search_many(q[None], opts, only=only, exact=True)
        index.settings = first_pass
        assert [r.listing_id for r in full[0]] == [r.listing_id for r in scan[0]]
        for got, want in zip(full[0], scan[0], strict=True):  # a row's score is the same bits either way
            assert got.matches == want.matches and got.score == want.score
        if n % 4 == 0:
            cat.check(index, opts, seed=n)
    assert index.first_pass["kept"] > 40, index.first_pass  # the oracle checks searched too


def test_first_pass_falls_back_when_the_candidates_cannot_prove_the_answer() -> None:
    """A's images and B's best one fill the 20 candidates; B's other images are poor, C is good
    throughout. By mean_top_3 C beats B, which the candidates alone cannot show."""
    base = l2_normalise(np.random.default_rng(0).normal(size=DIM))
    other = l2_normalise(np.random.default_rng(1).normal(size=DIM))

    def toward(weight: float) -> np.ndarray:
        return l2_normalise(weight * base + (1 - weight) * other)

    a, b, c = (uuid.UUID(int=i << 64) for i in (1, 2, 3))
    layout = [(a, 1.0)] * 19 + [(b, 0.97), (b, 0.0), (b, 0.0), (c, 0.9), (c, 0.9), (c, 0.9)]
    batch = FeatureBatch(
        np.array([lid.bytes for lid, _ in layout], "S16"),
        np.array([uuid.uuid4().bytes for _ in layout], "S16"),
        np.array([toward(w) for _, w in layout], np.float32),
    )
    index = VectorIndex(MODEL, SearchSettings(candidates=20, exact_first_pass=True))
    index.reset([batch, Catalogue(5).batch(40)])
    opts = ScoreOptions(k=2, aggregation="mean_top_n", top_n=3)
    got = [r.listing_id for r in index.search(base.astype(np.float32), opts)]
    assert got == [a, c]
    assert index.first_pass == {"kept": 0, "full_scan": 1}
