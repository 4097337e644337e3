"""notebooks/analytics.ipynb runs top to bottom (nbclient, a real kernel) on a small store with
synthetic vectors and pixels, and draws its plots; a broken notebook fails here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from store.sqlite import SQLiteStore
from tests.integration.analytics_seed import MODEL, write_catalogue

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "analytics.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"


def test_the_analytics_notebook_runs_and_plots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    store = SQLiteStore(url)
    store.apply_schema()
    write_catalogue(store, tmp_path, n=600, clusters=6)
    store.close()
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    (params,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    params.source = f"STORE_URL = {url!r}\nMODEL = {MODEL.name!r}\nRUN_ANALYSIS = True\nCLUSTERS = 6\n"
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    plots = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(plots) >= 6  # sizes, map, cluster galleries, histogram, outlier gallery, duplicates
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "'images': 600" in printed and "across listings" in printed
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(nb, ARTIFACTS / "analytics-notebook-executed.ipynb")  # type: ignore[no-untyped-call]
