"""The analytics definitions and the local engine, on small planted data (seeds fixed)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from analytics import definitions as d
from analytics.local import analyze, new_run
from analytics.phases import Phases
from analytics.synthetic import planted_catalogue
from config.settings import AnalyticsSettings
from schemas.analytics import NO_GROUP, quantile_rank


def _ids(n: int) -> np.ndarray:
    return np.array([uuid.UUID(int=i + 1).bytes for i in range(n)], dtype="S16")


def test_own_listing_views_do_not_hide_an_outlier() -> None:
    # row 0 has 3 near-identical views in its own listing, then others far away
    sims = np.array([[0.99, 0.98, 0.97, 0.2, 0.1]], dtype=np.float32)
    listing = np.array([[b"a", b"a", b"a", b"b", b"c"]], dtype="S16")
    kth, found = d.other_listing_kth(sims, listing, np.array([b"a"], dtype="S16"), 1)
    assert found[0] and kth[0] == pytest.approx(0.2)
    _, found2 = d.other_listing_kth(sims, listing, np.array([b"a"], dtype="S16"), 3)
    assert not found2[0]  # fewer than 3 others: the caller must widen


def test_misfit_is_distance_to_mean_of_the_other_images() -> None:
    v = d.normalise_rows(np.array([[1, 0], [1, 0.1], [0.9, 0], [0, 1], [1, 1], [1, 0.9]], dtype=np.float32))
    starts = np.array([0, 4], dtype=np.int64)  # listing of 4, listing of 2
    m = d.misfit_scores(v, starts)
    rest = v[0] + v[1] + v[2]
    assert m[3] == pytest.approx(1 - float(v[3] @ rest) / float(np.linalg.norm(rest)), abs=1e-6)
    assert np.argmax(m[:4]) == 3
    assert np.isnan(m[4:]).all()  # a listing of 2 has no misfit score


def test_percentiles_match_quantile_rank() -> None:
    scores = np.random.default_rng(0).random(500).astype(np.float32)
    q = d.score_quantiles(scores)
    probe = np.array([-1, 0.0, 0.25, 0.5, 0.999, 2.0], dtype=np.float32)
    got = d.percentiles(probe, q)
    want = [quantile_rank(q, float(s)) for s in probe]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got[0] == 0 and got[-1] == 100


def test_a_chain_does_not_glue_unrelated_images() -> None:
    # a ~ b ~ c along a chain, a and c far apart: the medoid b keeps at most a side
    angles = np.array([0.0, 0.3, 0.6])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    t = float(np.cos(0.3)) - 1e-4
    edges = np.array([[0, 1], [1, 2]])
    groups = d.duplicate_groups(_ids(3), v, edges, t)
    assert groups == [(1, [0, 1, 2])]  # b is within threshold of both
    t2 = float(np.cos(0.31))
    edges2 = np.array([[0, 1], [1, 2]])
    v2 = np.stack([np.cos([0.0, 0.3, 0.62]), np.sin([0.0, 0.3, 0.62])], axis=1).astype(np.float32)
    groups2 = d.duplicate_groups(_ids(3), v2, edges2, t2)
    assert all(len(m) == 2 for _, m in groups2) and len(groups2) == 1


def test_bad_inputs_are_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \[0.5"):
        d.check_duplicate_threshold(1.5)
    with pytest.raises(ValueError, match="3 images cannot make 5 clusters"):
        d.check_clusters(5, 3)
    assert d.default_clusters(100_000, 1000) == 224


@pytest.fixture(scope="module")
def planted():  # type: ignore[no-untyped-def]
    p = planted_catalogue(4000, 128, 8, rate=0.005, noise=0.6, seed=3)
    s = AnalyticsSettings(
        clusters=8, map_method="pca", pca_dim=0, recall_queries=300, top_n=200, kmeans_redo=3
    )
    with Phases() as ph:
        result = analyze(p.catalogue, new_run("m", s, "local"), s, ph)
    return p, result


def test_local_engine_finds_the_planted_truth(planted) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import adjusted_rand_score

    p, r = planted
    keep = p.labels >= 0
    assert adjusted_rand_score(p.labels[keep], r.images.cluster[keep]) >= 0.95
    n_out = len(p.outliers)
    top = {bytes(i.image_id.bytes) for i in r.outliers[:n_out]}
    planted_ids = {bytes(p.catalogue.image_ids[i]).ljust(16, b"\0") for i in p.outliers}
    assert len(top & planted_ids) / n_out >= 0.9
    cross = [g for g in r.duplicates if g.cross_listing]
    pairs = {
        tuple(sorted((a.bytes, b.bytes))) for g in cross for a, _ in g.images for b, _ in g.images if a != b
    }
    want = {
        tuple(
            sorted(
                (
                    bytes(p.catalogue.image_ids[a]).ljust(16, b"\0"),
                    bytes(p.catalogue.image_ids[b]).ljust(16, b"\0"),
                )
            )
        )
        for a, b in p.duplicates
    }
    assert len(want & pairs) / len(want) >= 0.9
    assert r.run.knn_recall is not None and r.run.knn_recall >= 0.9
    assert all(g.group_id == i for i, g in enumerate(r.duplicates))
    assert (r.images.group[r.images.group != NO_GROUP] < len(r.duplicates)).all()


def test_misfits_and_percentiles_of_a_run(planted) -> None:  # type: ignore[no-untyped-def]
    p, r = planted
    # a planted outlier, and an image replaced by a copy from another listing, fit their listing
    # no better than a planted misfit: all count (a copy's source row is accepted too)
    n = len(p.misfits) + len(p.outliers) + len(p.duplicates)
    wrong = np.concatenate([p.misfits, p.outliers, np.array(p.duplicates, dtype=np.int64).ravel()])
    top = {s.image_id.bytes for s in r.misfits[:n]}
    planted_ids = {bytes(p.catalogue.image_ids[i]).ljust(16, b"\0") for i in wrong}
    assert len(top & planted_ids) / n >= 0.9
    worst = r.outliers[0]
    assert worst.percentile == pytest.approx(100.0)
    assert r.thresholds.percentile("catalogue", worst.score) == pytest.approx(100.0)
    assert [s.score for s in r.outliers] == sorted((s.score for s in r.outliers), reverse=True)
    assert r.outliers[0].neighbours and all(
        n.listing_id != r.outliers[0].listing_id for n in r.outliers[0].neighbours
    )


def test_block_topk_and_merge_match_a_full_sort() -> None:
    rng = np.random.default_rng(5)
    v = d.normalise_rows(rng.standard_normal((300, 16)).astype(np.float32))
    rows = np.arange(300, dtype=np.int64)
    q = rows[:40]
    want_r, want_s = d.block_topk(v[q], q, v, rows, 7)
    assert not (want_r == q[:, None]).any()  # never the row itself
    full = v[q] @ v.T
    full[np.arange(40), q] = -np.inf
    np.testing.assert_array_equal(want_r, np.argsort(-full, axis=1, kind="stable")[:, :7])
    # the same from two halves merged, a row listed twice not counted twice
    a_r, a_s = d.block_topk(v[q], q, v[:150], rows[:150], 7)
    b_r, b_s = d.block_topk(v[q], q, v[100:], rows[100:], 7)
    got_r, got_s = d.merge_topk(np.hstack([a_r, b_r]), np.hstack([a_s, b_s]), 7)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_allclose(got_s, want_s, atol=1e-6)


def test_cluster_blocks_are_exact_with_every_cluster_probed() -> None:
    from analytics.clusters import cluster
    from analytics.knn import build_graph, measure_recall

    p = planted_catalogue(1500, 64, 6, rate=0.01, noise=0.6, seed=2)
    v = p.catalogue.vectors
    centroids, labels, _ = cluster(v, v, 6, 10, 0)
    exact = build_graph(v, np.asarray(v, np.float32), 10, "exact")
    every = build_graph(v, v, 10, "clusters", labels=labels, centroids=centroids, probes=6)
    assert d.knn_recall(every.neighbours, exact.neighbours, 10) >= 0.999  # (float ties may swap)
    two = build_graph(v, v, 10, "clusters", labels=labels, centroids=centroids, probes=2)
    assert two.method == "clusters(probes=2)" and measure_recall(v, two, 300) >= 0.95
    assert d.probe_clusters(centroids, 3)[:, 0].tolist() == list(range(6))  # itself first


def test_pca_of_fewer_rows_than_asked_keeps_the_directions_the_sample_spans() -> None:
    """A small catalogue (the demo's 89 images) asks PCA for as many directions as it has rows;
    a centred sample spans one fewer, and the fit must not fail on it."""
    from analytics.pca import fit_pca

    x = np.random.default_rng(3).standard_normal((12, 40)).astype(np.float32)
    pca = fit_pca(x, 12)
    assert pca.out_dim == 11
    reduced = pca.apply(x)
    assert reduced.shape == (12, 11) and np.isfinite(reduced).all()


def _even_clusters(k: int, per: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight, well-separated clusters of ``per`` points each on the unit sphere."""
    rng = np.random.default_rng(seed)
    centres = d.normalise_rows(rng.standard_normal((k, dim)))
    labels = np.repeat(np.arange(k), per)
    return d.normalise_rows(
        centres[labels] + rng.normal(scale=0.15 / np.sqrt(dim), size=(k * per, dim))
    ), labels


def test_kmeans_plus_plus_seeds_spread_over_the_clusters() -> None:
    from analytics.clusters import kmeans_plus_plus

    points, labels = _even_clusters(200, 30, 32, seed=3)
    seeds = kmeans_plus_plus(points, 200, np.random.default_rng(0))
    hit, _ = d.assign(seeds, d.normalise_rows(np.stack([points[labels == c].mean(0) for c in range(200)])))
    assert seeds.shape == (200, 32)
    assert len(set(hit.tolist())) >= 180  # random seeds would hit about 126 (1 - 1/e) of 200


def test_spherical_kmeans_recovers_many_even_clusters() -> None:
    from sklearn.metrics import adjusted_rand_score

    from analytics.clusters import assign_chunked, spherical_kmeans

    points, labels = _even_clusters(200, 30, 32, seed=4)
    found, _ = assign_chunked(points, spherical_kmeans(points, 200, iters=20, seed=0))
    assert adjusted_rand_score(labels, found) >= 0.98
