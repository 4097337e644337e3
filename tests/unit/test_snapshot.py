"""Snapshots (search/snapshot.py): the store's vectors written once and mapped read-only; an
index over the map answers as one loaded from the store, after additions and removals, and
keeps the map (no private copy of the vectors) whatever the fresh tier does."""

from __future__ import annotations

import mmap
import uuid
from pathlib import Path

import numpy as np
import pytest

from config.settings import SearchSettings
from schemas.records import Extracted, FeatureBatch, ImageRecord, as_uuid
from search.loader import load_memory_index, load_snapshot_index
from search.scoring import ScoreOptions
from search.snapshot import open_snapshot, snapshots_folder, write_snapshot
from store.sqlite import SQLiteStore
from tests.unit.test_engine import MODEL, Catalogue

SETTINGS = SearchSettings(follow="off", fresh_max_rows=8)


def maps_a_file(array: object) -> bool:
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, mmap.mmap)


def put_features(store: SQLiteStore, batch: FeatureBatch) -> None:
    """Store a batch's rows as the extract workers would."""
    rows = []
    for listing, image, vector in zip(batch.listing_ids, batch.image_ids, batch.vectors, strict=True):
        record = ImageRecord(as_uuid(listing), as_uuid(image), "file:///x.jpg", "image/jpeg", 1, 1, 1)
        rows.append(Extracted(record, f"listing {as_uuid(listing)}", MODEL.name, vector))
    store.write_extracted(rows, "float16")


def seeded(tmp_path: Path, cat: Catalogue, listings: int = 30) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    store.put_model(MODEL)
    batch = cat.batch(listings)
    put_features(store, batch)
    return store


def test_the_folder_names_the_store_without_its_secrets(tmp_path: Path) -> None:
    folder = snapshots_folder(tmp_path, "cassandra://user:secret@db:9042/shop")
    assert folder.parent.parent == tmp_path and folder.name == "snapshots"
    assert folder.parent.name.startswith("shop-") and "secret" not in str(folder)
    assert snapshots_folder(tmp_path, "sqlite:///a/x.db") != snapshots_folder(tmp_path, "sqlite:///b/x.db")


def test_a_snapshot_index_answers_as_the_loaded_one_and_stays_mapped(tmp_path: Path) -> None:
    cat = Catalogue(3)
    store = seeded(tmp_path, cat)
    folder = tmp_path / "snapshots"
    older = write_snapshot(store, MODEL, "float16", folder)
    path = write_snapshot(store, MODEL, "float16", folder)
    assert not older.exists() and [p.name for p in folder.iterdir()] == [path.name]  # the older one went
    mapped, generation = load_snapshot_index(path, MODEL, SETTINGS)
    loaded = load_memory_index(store, MODEL, SETTINGS)
    assert generation == int(path.name.rsplit("-", 1)[1])
    vectors = mapped.main_segment().vectors
    assert maps_a_file(vectors) and not vectors.flags.writeable
    assert mapped.main_segment().flat is None and mapped.shared_main
    q = np.random.default_rng(0).normal(size=MODEL.dim).astype(np.float32)
    q /= np.linalg.norm(q)
    for aggregation in ("max", "mean_top_n", "count_above"):
        opts = ScoreOptions(k=7, aggregation=aggregation)
        assert mapped.search(q, opts) == loaded.search(q, opts)
    added, gone = cat.batch(5), next(iter(cat.rows.values()))[0]
    for index in (mapped, loaded):  # past fresh_max_rows: only the loaded one merges its fresh tier
        index.add(added)
        assert index.remove_listing(gone) > 0
    assert mapped.fresh_rows > SETTINGS.fresh_max_rows and loaded.fresh_rows == 0
    assert mapped.main_segment().vectors is vectors  # still the map: no private copy
    assert mapped.search(q, ScoreOptions(k=10)) == loaded.search(q, ScoreOptions(k=10))
    store.close()


def test_rows_stored_during_the_scan_are_kept_and_a_wrong_model_is_refused(tmp_path: Path) -> None:
    cat = Catalogue(4)
    store = seeded(tmp_path, cat, listings=3)
    late = cat.batch(2)
    count = store.count_features
    store.count_features = lambda model: count(model) - len(late)  # type: ignore[method-assign]
    put_features(store, late)  # stored after the count: past the buffer
    path = write_snapshot(store, MODEL, "float16", tmp_path / "s")
    opened = open_snapshot(path, MODEL, "float16")
    assert len(opened.late) == len(late) and len(opened.main) + len(opened.late) == len(cat.rows)
    index, _ = load_snapshot_index(path, MODEL, SETTINGS)
    assert len(index) == len(cat.rows)
    with pytest.raises(ValueError, match="not vgg16_fc7"):
        open_snapshot(path, MODEL.__class__("vgg16_fc7", "t", MODEL.dim, "float16", "x"), "float32")
    store.close()


def test_an_empty_store_makes_an_empty_snapshot(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'empty.db'}")
    store.apply_schema()
    store.put_model(MODEL)
    index, _ = load_snapshot_index(write_snapshot(store, MODEL, "float16", tmp_path), MODEL, SETTINGS)
    assert len(index) == 0
    batch = FeatureBatch(
        np.array([uuid.uuid4().bytes], "S16"),
        np.array([uuid.uuid4().bytes], "S16"),
        np.full((1, MODEL.dim), 0.25, np.float32),
    )
    index.add(batch)
    assert len(index) == 1
    store.close()
