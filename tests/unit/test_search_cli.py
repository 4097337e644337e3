"""``lookalike features import`` and ``lookalike search --vector``, as a user runs them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike.cli import app
from schemas.codec import l2_normalise
from store import open_store

DIM = 10


@pytest.fixture
def imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, list[str]]:
    monkeypatch.setenv("LOOKALIKE_STORE", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("LOOKALIKE_SEARCH_FOLLOW", "off")
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", "vgg16_fc7")  # not "auto": the name vectors are stored under
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, DIM)).astype(np.float32)
    listings = [str(uuid.uuid4()) for _ in range(4)]
    np.save(tmp_path / "v.npy", vectors)
    rows = [f"{listings[i % 4]},{uuid.uuid4()}" for i in range(12)]
    (tmp_path / "ids.csv").write_text("listing_id,image_id\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(
        app, ["features", "import", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.csv")]
    )
    assert result.exit_code == 0, result.output
    assert "imported 12 vectors of 4 listings" in result.output
    return tmp_path, vectors, listings


def test_import_then_search_by_vector(imported: tuple[Path, np.ndarray, list[str]]) -> None:
    tmp_path, vectors, listings = imported
    np.save(tmp_path / "q.npy", vectors[[0, 5]])
    result = CliRunner().invoke(app, ["search", "--vector", str(tmp_path / "q.npy"), "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [a["results"][0]["listing_id"] for a in answers] == [listings[0], listings[1]]
    assert all(len(a["results"]) == 3 and a["query_id"] for a in answers)
    store = open_store(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        info = store.get_model("vgg16_fc7")
        assert info is not None and info.dim == DIM and info.weights == "external:v.npy"
        back = store.read_query_results(uuid.UUID(answers[0]["query_id"]))
        assert [str(r.listing_id) for r in back] == [r["listing_id"] for r in answers[0]["results"]]
        top = answers[0]["results"][0]["images"][0]["score"]
        assert top == pytest.approx(1.0, abs=1e-3)  # stored L2-normalised: the query finds itself
        scores = [r["score"] for a in answers for r in a["results"]]
        assert all(s == round(s, 6) for s in scores)  # the API's wire format (schemas.answers)
        assert np.linalg.norm(l2_normalise(vectors[0])) == pytest.approx(1.0)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vector", "{tmp}/bad.npy"], "must have 10 columns"),
        (["--vector", "{tmp}/q.npy", "--k", "0"], "equal to 1"),
        (["--vector", "{tmp}/q.npy", "--k", "5000"], "less than or equal to 1000"),
        (["--vector", "{tmp}/q.npy", "--aggregation", "median"], "'median' is not one of"),
        (["--image-id", "not-a-uuid"], "must be a UUID"),
        (["--image-id", str(uuid.UUID(int=1))], "has no vector"),
    ],
)
def test_clear_errors(imported: tuple[Path, np.ndarray, list[str]], args: list[str], message: str) -> None:
    tmp_path, vectors, _ = imported
    np.save(tmp_path / "bad.npy", np.ones((2, DIM + 1), np.float32))
    np.save(tmp_path / "q.npy", vectors[:1])
    result = CliRunner().invoke(app, ["search", *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2
    assert message in result.output


def test_import_refuses_mismatched_files(imported: tuple[Path, np.ndarray, list[str]]) -> None:
    tmp_path, _, _ = imported
    np.save(tmp_path / "short.npy", np.ones((3, DIM), np.float32))
    result = CliRunner().invoke(
        app, ["features", "import", str(tmp_path / "short.npy"), "--ids", str(tmp_path / "ids.csv")]
    )
    assert result.exit_code == 2
    assert "ids.csv has 12 rows" in result.output and "short.npy has 3" in result.output
    np.save(tmp_path / "wide.npy", np.ones((12, DIM + 2), np.float32))
    result = CliRunner().invoke(
        app, ["features", "import", str(tmp_path / "wide.npy"), "--ids", str(tmp_path / "ids.csv")]
    )
    assert result.exit_code == 2
    assert f"has {DIM} dimensions, the vectors have {DIM + 2}" in result.output


def test_import_refuses_rows_it_cannot_normalise(imported: tuple[Path, np.ndarray, list[str]]) -> None:
    tmp_path, vectors, _ = imported
    bad = vectors.copy()
    bad[7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    result = CliRunner().invoke(
        app, ["features", "import", str(tmp_path / "nan.npy"), "--ids", str(tmp_path / "ids.csv")]
    )
    assert result.exit_code == 2
    assert "row 7 of" in result.output and "not finite" in result.output
