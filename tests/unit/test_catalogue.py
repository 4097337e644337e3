"""Catalogue folders: clear errors for bad input; the demo catalogue's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.catalogue import DEMO_PHOTOS, CatalogueError, build_demo_catalogue, scan_folder
from ingest.producer import image_messages
from tests.conftest import jpeg_bytes


def _listing(root: Path, name: str, files: dict[str, bytes]) -> None:
    (root / name).mkdir(parents=True)
    for fname, data in files.items():
        (root / name / fname).write_bytes(data)


def test_missing_path_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="does not exist"):
        scan_folder(tmp_path / "nowhere")
    (tmp_path / "f.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(CatalogueError, match="is not a folder"):
        scan_folder(tmp_path / "f.jpg")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="holds no listings"):
        scan_folder(tmp_path)


def test_non_image_file_is_named_and_can_be_skipped(tmp_path: Path) -> None:
    _listing(tmp_path, "car", {"a.jpg": jpeg_bytes(1), "notes.jpg": b"these are notes"})
    with pytest.raises(CatalogueError, match=r"1 file\(s\) are not images: .*notes.jpg"):
        scan_folder(tmp_path)
    catalogue = scan_folder(tmp_path, skip_bad=True)
    assert [p.name for p in catalogue.listings[0].images] == ["a.jpg"]


def test_stock_csv_is_read_and_checked(tmp_path: Path) -> None:
    _listing(tmp_path, "car", {"a.jpg": jpeg_bytes(1)})
    (tmp_path / "stock.csv").write_text("listing,inventory\ncar,3\n")
    assert scan_folder(tmp_path).stock == {"car": 3}
    (tmp_path / "stock.csv").write_text("listing,inventory\ncar,lots\n")
    with pytest.raises(CatalogueError, match="expected columns listing,inventory"):
        scan_folder(tmp_path)


def test_messages_have_stable_ids(tmp_path: Path) -> None:
    _listing(tmp_path, "car", {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2)})
    first = [(m.listing_id, m.image_id) for m in image_messages(scan_folder(tmp_path))]
    again = [(m.listing_id, m.image_id) for m in image_messages(scan_folder(tmp_path))]
    assert first == again and len({i for _, i in first}) == 2


def test_demo_catalogue(tmp_path: Path) -> None:
    catalogue, query = build_demo_catalogue(tmp_path / "catalogue")
    assert len(catalogue.listings) == len(DEMO_PHOTOS) and 15 <= len(DEMO_PHOTOS) <= 20
    assert all(3 <= len(li.images) <= 6 for li in catalogue.listings)
    assert query.is_file() and query.parent != catalogue.root
    assert 0 in catalogue.stock.values() and max(catalogue.stock.values()) > 0
    mtime = query.stat().st_mtime
    build_demo_catalogue(tmp_path / "catalogue")  # second time: nothing rewritten
    assert query.stat().st_mtime == mtime
