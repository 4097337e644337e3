"""The C scan kernel against a float64 numpy oracle: every path the CPU offers (the portable
one always), 1 and 2 threads, odd sizes, float16 and float32 rows, batches of queries."""

from __future__ import annotations

import numpy as np
import pytest

from search import kernel

PATHS = kernel.ISAS[: kernel.ISAS.index(kernel.best_isa()) + 1]  # what this CPU can run
SHAPES = [(1, 1, 1), (3, 5, 1), (37, 100, 1), (101, 4096, 3), (9, 17, 9), (64, 1280, 4), (301, 48, 67)]


def bound(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """How far a float32 sum of dim products may be from the exact one (sum |x_i q_i| * dim u)."""
    dim = x.shape[1]
    worst: np.ndarray = np.abs(x.astype(np.float64)) @ np.abs(q.astype(np.float64)).T
    worst *= (dim + 4) * 2.0**-24
    return worst


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(("rows", "dim", "queries"), SHAPES)
def test_scan_matches_float64_oracle(
    isa: kernel.Isa, threads: int, dtype: type, rows: int, dim: int, queries: int
) -> None:
    rng = np.random.default_rng(rows * 1000 + dim)
    x: np.ndarray = rng.standard_normal((rows, dim)).astype(dtype)
    q = rng.standard_normal((queries, dim)).astype(np.float32)
    got = kernel.score(x, q, threads=threads, isa=isa)
    want = x.astype(np.float64) @ q.astype(np.float64).T
    assert got.shape == (rows, queries) and got.dtype == np.float32
    assert (np.abs(got - want) <= bound(x, q) + 1e-30).all()


def test_every_path_gives_the_same_bits_whatever_the_batch_threads_or_position() -> None:
    """One definition of a score: the portable path, AVX2 and AVX-512 agree to the bit, and a
    row's score does not depend on the batch it came in, the threads or where it lies."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((203, 1000)).astype(np.float16)
    q = rng.standard_normal((11, 1000)).astype(np.float32)
    reference = kernel.score(x, q, threads=1, isa="generic")
    for isa in PATHS:
        for threads in (1, 2, 3):
            assert np.array_equal(kernel.score(x, q, threads=threads, isa=isa), reference)
        for j in range(len(q)):  # one query alone
            assert np.array_equal(kernel.score(x, q[j : j + 1], isa=isa)[:, 0], reference[:, j])
        assert np.array_equal(kernel.score(x[5:6], q, isa=isa), reference[5:6])  # one row alone
        assert np.array_equal(kernel.score(x[::-1].copy(), q, isa=isa), reference[::-1])


def test_by_query_layout_and_strided_output_hold_the_same_bits() -> None:
    """:func:`kernel.score_by_query` and ``out=`` (a transpose, a slice of a larger matrix)
    write the same scores as the row-major result, on every path and thread count; a wrong
    ``out`` is refused before anything is written."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2053, 1024)).astype(np.float16)  # 4 MB: the kernel starts both threads
    q = rng.standard_normal((6, 1024)).astype(np.float32)
    reference = kernel.score(x, q, threads=1, isa="generic")
    for isa in PATHS:
        for threads in (1, 2):
            by_query = kernel.score_by_query(x, q, threads=threads, isa=isa)
            assert by_query.shape == (6, 2053) and by_query.flags.c_contiguous
            assert np.array_equal(by_query, reference.T)
        wide = np.full((6, 2100), -7.0, dtype=np.float32)
        kernel.score(x, q, isa=isa, out=wide[:, 40:2093].T)  # a slice of a larger by-query matrix
        assert np.array_equal(wide[:, 40:2093], reference.T)
        assert (wide[:, :40] == -7.0).all() and (wide[:, 2093:] == -7.0).all()
    with pytest.raises(ValueError, match="out must be a writable"):
        kernel.score(x, q, out=np.empty((6, 2053), np.float32))
    with pytest.raises(ValueError, match="out must be a writable"):
        kernel.score(x, q, out=np.empty((2053, 6), np.float64))


def test_many_threads_split_large_work_and_cover_every_row() -> None:
    """Enough work (several MB) that the kernel starts its threads; odd row count."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2051, 2048)).astype(np.float16)  # 8 MB
    q = rng.standard_normal((2, 2048)).astype(np.float32)
    single = kernel.score(x, q, threads=1)
    for threads in (2, 3, 4):
        assert np.array_equal(kernel.score(x, q, threads=threads), single)
    want = x.astype(np.float64) @ q.astype(np.float64).T
    assert (np.abs(single - want) <= bound(x, q)).all()


def test_special_values_follow_ieee() -> None:
    """Subnormal float16 inputs are widened exactly (the portable path decodes them by hand);
    inf and nan propagate as in the SIMD paths."""
    sub = np.array([[2.0**-24, -(2.0**-20), 6.1e-5, 0.0, -0.0, 1.0]], dtype=np.float16)
    q = np.array([[2.0**10, 2.0**10, 1.0, 5.0, 5.0, 1.0]], dtype=np.float32)
    want = sub.astype(np.float64) @ q.astype(np.float64).T
    special = np.array([[np.inf, 1.0], [np.nan, 1.0], [1.0, -np.inf]], dtype=np.float16)
    for isa in PATHS:
        assert kernel.score(sub, q, isa=isa)[0, 0] == pytest.approx(float(want[0, 0]), rel=1e-6)
        got = kernel.score(special, np.ones((1, 2), np.float32), isa=isa)[:, 0]
        assert got[0] == np.inf and np.isnan(got[1]) and got[2] == -np.inf


def test_empty_inputs_and_bad_shapes() -> None:
    assert kernel.score(np.zeros((0, 8), np.float16), np.ones((2, 8), np.float32)).shape == (0, 2)
    assert kernel.score(np.ones((3, 8), np.float16), np.ones((0, 8), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match=r"queries must be \(n, 8\)"):
        kernel.score(np.ones((3, 8), np.float16), np.ones((1, 7), np.float32))
    with pytest.raises(ValueError, match="float16 or float32"):
        kernel.score(np.ones((3, 8), np.float64), np.ones((1, 8), np.float32))  # type: ignore[arg-type]


def test_non_contiguous_and_read_only_inputs() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 64)).astype(np.float16)
    x.setflags(write=False)
    q = rng.standard_normal((64, 3)).astype(np.float32).T  # a transposed view
    want = x.astype(np.float64) @ q.astype(np.float64).T
    got = kernel.score(x[::2], q)
    assert (np.abs(got - want[::2]) <= bound(x[::2], q)).all()


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_read_sum_is_the_sum_of_words(isa: kernel.Isa, threads: int) -> None:
    words = np.random.default_rng(1).integers(0, 2**63, size=(3 << 18) + 7, dtype=np.uint64)
    assert kernel.read_sum(words, threads, isa) == int(words.sum(dtype=np.uint64))


def test_permute_rows_in_place() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1000, 24)).astype(np.float16)
    order = rng.permutation(1000)
    want = a[order].copy()
    kernel.permute_rows(a, order)
    assert np.array_equal(a, want)
    kernel.permute_rows(a, np.arange(1000))  # identity: unchanged
    assert np.array_equal(a, want)
    with pytest.raises(ValueError, match="permutation"):
        kernel.permute_rows(a, np.zeros(1000, np.int64))
    with pytest.raises(ValueError, match="1000 row numbers"):
        kernel.permute_rows(a, np.arange(10))
