"""``lookalike analyze / clusters / outliers / duplicates --json`` end to end on a small store, as a
user runs them (typer's CliRunner on the real app, the SQLite store named by LOOKALIKE_STORE)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookalike.cli import app
from schemas.records import as_uuid
from store import open_store
from tests.integration.analytics_seed import MODEL, Seeded, seed_store

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for key, value in {
        "LOOKALIKE_STORE": url,
        "LOOKALIKE_MODEL_NAME": MODEL.name,
        "LOOKALIKE_ANALYTICS_MAP_METHOD": "pca",
        "LOOKALIKE_ANALYTICS_RECALL_QUERIES": "50",
        "LOOKALIKE_ANALYTICS_TOP_N": "100",
    }.items():
        monkeypatch.setenv(key, value)
    store = open_store(url)
    store.apply_schema()
    try:
        return seed_store(store, None, n=500, clusters=5, seed=7)
    finally:
        store.close()


def _json(args: list[str]) -> object:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_analyze_then_read_the_run_back(seeded: Seeded) -> None:
    run = _json(["analyze", "--clusters", "5", "--json"])
    assert isinstance(run, dict) and run["status"] == "complete" and run["model"] == MODEL.name
    assert run["counts"]["images"] == 500 and run["counts"]["clusters"] == 5
    assert run["knn_recall"] >= 0.9 and run["params"]["engine"] == "local"
    assert {"knn_s", "clusters_s", "write_s"} <= set(run["timings"])
    assert run["run_id"] != str(seeded.result.run.run_id)  # a new run, now the served one

    clusters = _json(["clusters", "--json"])
    assert isinstance(clusters, dict) and clusters["run_id"] == run["run_id"]
    assert [c["cluster_id"] for c in clusters["clusters"]] == list(range(5))
    assert sum(c["size"] for c in clusters["clusters"]) == 500
    with_members = _json(["clusters", "--members", "--json"])
    assert isinstance(with_members, dict)
    assert all(len(c["members"]) == c["size"] for c in with_members["clusters"])

    outliers = _json(["outliers", "--limit", "5", "--json"])
    assert isinstance(outliers, list) and len(outliers) == 5
    assert [o["score"] for o in outliers] == sorted((o["score"] for o in outliers), reverse=True)
    planted = {str(as_uuid(seeded.planted.catalogue.image_ids[r])) for r in seeded.planted.outliers}
    assert outliers[0]["image_id"] in planted and outliers[0]["neighbours"]
    misfits = _json(["outliers", "--kind", "listing", "--limit", "3", "--json"])
    assert isinstance(misfits, list) and len(misfits) == 3

    groups = _json(["duplicates", "--cross-listing", "--json"])
    assert isinstance(groups, list) and groups and all(g["cross_listing"] for g in groups)
    assert {"group_id", "cross_listing", "images"} <= set(groups[0])
    a, b = seeded.planted.duplicates[0]
    ids = seeded.planted.catalogue.image_ids
    pair = {str(as_uuid(ids[a])), str(as_uuid(ids[b]))}
    listed = [{i["image_id"] for i in g["images"]} for g in groups]
    assert any(pair <= images for images in listed)  # the planted cross-listing copy is listed
    names = {i["listing_name"] for g in groups for i in g["images"]}
    assert all(n.startswith("listing-") for n in names)


def test_bad_arguments_fail_with_what_was_expected(seeded: Seeded) -> None:
    result = CliRunner().invoke(app, ["analyze", "--engine", "gpu", "--json"])
    assert result.exit_code == 2 and "--engine must be local or spark" in result.output
    result = CliRunner().invoke(app, ["clusters", "--run", str(uuid.uuid4()), "--json"])
    assert result.exit_code == 2 and "no complete analytics run" in result.output
