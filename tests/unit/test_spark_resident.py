"""Resident blocks (search.spark.resident) outside Spark: written, mapped, scored, read again
where the host lacks them, and older generations let go of."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from schemas.codec import l2_normalise
from schemas.records import FeatureBatch
from search.scoring import ScoreOptions, SearchRequest
from search.spark import resident
from search.spark.blocks import FIELDS, Block, blocks_of
from search.spark.cache import PassScorer

DIM = 16


@pytest.fixture(autouse=True)
def local_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Two local directories, as Spark gives a Python worker in SPARK_LOCAL_DIRS; no mapping
    left behind for the next test."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("SPARK_LOCAL_DIRS", ",".join(map(str, dirs)))
    yield dirs
    resident._mapped.clear()


def some_blocks(seed: int = 1, listings: int = 50) -> list[Block]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, listings)
    lids = np.repeat(np.array([rng.bytes(16) for _ in range(listings)], dtype="S16"), sizes)
    iids = np.array([rng.bytes(16) for _ in range(len(lids))], dtype="S16")
    vectors = l2_normalise(rng.normal(size=(len(lids), DIM)))
    return list(blocks_of(FeatureBatch(lids, iids, vectors), "float16", 40))


def test_written_blocks_map_back_bit_for_bit_and_score_as_in_memory(local_dirs: list[Path]) -> None:
    blocks = some_blocks()
    folder = resident.folder_for("vgg16/fc7", 3, 5)
    assert folder.is_relative_to(local_dirs[1]) and folder.parent.name == "vgg16_fc7-3"  # 5 % 2 dirs
    kept = resident.keep(blocks, folder, None)
    assert (kept.blocks, kept.rows) == (len(blocks), sum(b.rows for b in blocks))
    assert kept.nbytes == sum(b.vectors.nbytes for b in blocks)
    assert not list(folder.parent.glob("*.writing-*"))  # written whole, then renamed
    mapped = resident.blocks(kept)
    assert resident.blocks(kept) is mapped  # kept mapped for the next pass
    for ours, theirs in zip(blocks, mapped, strict=True):
        assert isinstance(theirs.vectors, np.memmap) and not theirs.vectors.flags.writeable
        for name in FIELDS:
            assert np.array_equal(getattr(ours, name), getattr(theirs, name))
    q = l2_normalise(np.random.default_rng(9).normal(size=(2, DIM))).astype(np.float32)
    requests = (SearchRequest(q[0], ScoreOptions(k=5)), SearchRequest(q[1], ScoreOptions(k=3)))
    assert PassScorer(q, requests).best(mapped) == PassScorer(q, requests).best(blocks)


def test_a_retried_load_replaces_what_the_first_attempt_left() -> None:
    folder = resident.folder_for("m", 0, 0)
    resident.keep(some_blocks(1), folder, None)
    second = some_blocks(2, listings=10)
    kept = resident.keep(second, folder, None)
    assert kept.blocks == len(second) and len(list(folder.glob("*.vectors.npy"))) == len(second)
    assert np.array_equal(resident.blocks(kept)[0].image_ids, second[0].image_ids)


def test_a_host_without_the_files_reads_the_partition_again_or_says_why() -> None:
    blocks = some_blocks()
    folder = resident.folder_for("m", 0, 1)
    calls: list[int] = []

    def source() -> Iterator[Block]:
        calls.append(1)
        return iter(blocks)

    replayable = resident.keep(blocks, folder, source)
    only_here = resident.keep(blocks, resident.folder_for("m", 0, 2), None)
    for f in (folder, Path(only_here.folder)):
        for file in f.iterdir():
            file.unlink()
        f.rmdir()  # as on a host where the load never ran
    again = resident.blocks(replayable)
    assert calls == [1] and [b.rows for b in again] == [b.rows for b in blocks]
    with pytest.raises(FileNotFoundError, match="cannot be read from a task"):
        resident.blocks(only_here)


def test_the_first_pass_over_a_generation_lets_go_of_the_older_ones() -> None:
    old = resident.keep(some_blocks(1), resident.folder_for("m", 0, 0), None)
    other_model = resident.keep(some_blocks(1), resident.folder_for("n", 0, 0), None)
    resident.blocks(old)
    new = resident.keep(some_blocks(2), resident.folder_for("m", 1, 0), None)
    assert Path(old.folder).is_dir()  # a new generation loading leaves the serving one alone
    resident.blocks(new)
    assert not Path(old.folder).exists() and Path(new.folder).is_dir()
    assert old.folder not in resident._mapped and new.folder in resident._mapped
    assert Path(other_model.folder).is_dir()  # another model's cache is not this one's generation
