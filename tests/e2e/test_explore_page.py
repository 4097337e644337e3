"""The Explore page in real headless Chromium over a store with a real analysis run: the map
(hover shows a thumbnail, click opens the listing with its misfits marked), a cluster gallery that
starts at the medoid, outliers with their nearest images, duplicate groups with listing names and
live stock; then the map with 100 000 points, its frame and hover times measured and kept.
Screenshots and the figures go to tests/artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from schemas.records import as_uuid
from store.sqlite import SQLiteStore
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serving
from tests.integration.analytics_seed import Seeded, seed_store, service

pytestmark = pytest.mark.e2e
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    folder = tmp_path_factory.mktemp("explore")
    store = SQLiteStore(f"sqlite:///{folder / 'lookalike.db'}")
    store.apply_schema()
    seeded = seed_store(store, folder)
    with serving(create_app(ApiSettings(), Components(service(store)))) as url:
        yield url, seeded
    store.close()


@pytest.fixture
def page(served: tuple[str, Seeded]):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def _open(page, url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/static/explore.html")
    page.wait_for_selector("body[data-ready]", timeout=60_000)
    assert page.get_attribute("body", "data-ready") == "1", page.inner_text("#run-status")


def _point_on_screen(page, image_id: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    x, y = page.evaluate(
        """id => { const m = window.explore.map; const i = m.data.image_ids.indexOf(id);
                   return m.toScreen(m.xs[i], m.ys[i]); }""",
        image_id,
    )
    box = page.locator("#map").bounding_box()
    return box["x"] + x, box["y"] + y


@needs_chromium
def test_map_hover_click_and_galleries(page, served: tuple[str, Seeded]) -> None:  # type: ignore[no-untyped-def]
    url, seeded = served
    r = seeded.result
    assert page.goto(url) and page.locator("#explore-link").count() == 1  # linked from the search page
    _open(page, url)
    assert "600 images" in page.inner_text("#run-status")
    page.screenshot(path=str(ARTIFACTS / "explore-map.png"))

    # hover: the thumbnail of the point under the cursor
    misfit = r.misfits[0]
    page.mouse.move(*_point_on_screen(page, str(misfit.image_id)))
    page.wait_for_selector("#hover:not([hidden]) img", timeout=10_000)
    src = page.get_attribute("#hover img", "src")
    assert src is not None and src.endswith("/thumbnail?size=96") and "/v1/images/" in src
    page.wait_for_function("document.querySelector('#hover img').naturalWidth > 0", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "explore-hover.png"))

    # click: the listing, its misfit marked
    page.mouse.click(*_point_on_screen(page, str(misfit.image_id)))
    page.wait_for_selector("#listing-images figure", timeout=10_000)
    assert page.inner_text("#listing-name") == seeded.names[misfit.listing_id]
    marked = page.locator("#listing-images figure.misfit img").evaluate_all(
        "els => els.map(e => e.dataset.imageId)"
    )
    assert str(misfit.image_id) in marked
    page.screenshot(path=str(ARTIFACTS / "explore-listing-misfit.png"))

    # each cluster beside its size, shown by its most central images, the medoid first
    page.click("#tabs [data-tab=clusters]")
    rows = page.locator("#cluster-list li")
    assert rows.count() == len(r.clusters)
    for c, row in zip(r.clusters, rows.all(), strict=True):
        assert row.get_attribute("data-cluster-id") == str(c.cluster_id)
        assert row.locator(".size").inner_text() == f"{c.size} images"
        strip = row.locator(".strip img").evaluate_all("els => els.map(e => e.dataset.imageId)")
        members = sorted(
            (i for i in range(len(r.images)) if r.images.cluster[i] == c.cluster_id),
            key=lambda i: (-float(r.images.similarity[i]), bytes(r.images.image_ids[i]).ljust(16, b"\0")),
        )
        assert strip == [str(as_uuid(r.images.image_ids[i])) for i in members[:6]]
        assert strip[0] == str(c.medoid_image_id)
    page.wait_for_function(
        "[...document.querySelectorAll('#cluster-list .strip img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    assert page.locator("#cluster-list .strip img[loading=lazy]").count() == 6 * len(r.clusters)
    page.locator("#tab-clusters").screenshot(path=str(ARTIFACTS / "explore-clusters.png"))

    # a cluster's gallery starts at its medoid
    first = r.clusters[0]
    page.click(f"#cluster-list li[data-cluster-id='{first.cluster_id}']")
    page.wait_for_selector("#cluster-gallery figure", timeout=10_000)
    lead = page.locator("#cluster-gallery figure").first
    assert lead.get_attribute("class") == "medoid"
    assert lead.locator("img").get_attribute("data-image-id") == str(first.medoid_image_id)
    assert page.locator("#cluster-gallery figure").count() == min(48, first.size)
    page.screenshot(path=str(ARTIFACTS / "explore-cluster.png"))

    # outliers, each with its nearest images of other listings
    page.click("#tabs [data-tab=outliers]")
    page.wait_for_selector("#tab-outliers .item", timeout=10_000)
    top = page.locator("#tab-outliers .item").first
    assert top.get_attribute("data-image-id") == str(r.outliers[0].image_id)
    assert top.locator(".row figure").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "explore-outliers.png"))

    # duplicate groups side by side, with listing names and live stock
    page.click("#tabs [data-tab=duplicates]")
    page.wait_for_selector("#tab-duplicates .item", timeout=10_000)
    captions = page.locator("#tab-duplicates .item").first.locator("figcaption").all_inner_texts()
    assert len(captions) >= 2 and all(c.startswith("listing-") and "stock" in c for c in captions)
    assert "across listings" in page.locator("#tab-duplicates .item .meta").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "explore-duplicates.png"))


def _big_map(n: int = 100_000, clusters: int = 224, seed: int = 0) -> bytes:
    """A map of n points in Gaussian blobs (the page's work does not depend on where they came from)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-40, 40, (clusters, 2))
    label = rng.integers(0, clusters, n)
    xy = centres[label] + rng.normal(0, 2.0, (n, 2))
    ids = [f"00000000-0000-4000-8000-{i:012x}" for i in range(n)]
    listings = [f"00000000-0000-4000-9000-{i:012x}" for i in range(n // 5)]
    doc = {
        "run_id": "00000000-0000-4000-8000-000000000000",
        "count": n,
        "x": np.round(xy[:, 0], 4).tolist(),
        "y": np.round(xy[:, 1], 4).tolist(),
        "cluster": label.tolist(),
        "image_ids": ids,
        "listing": (np.arange(n) // 5).tolist(),
        "listing_ids": listings,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@needs_chromium
def test_a_hundred_thousand_points_stay_responsive(page, served: tuple[str, Seeded]) -> None:  # type: ignore[no-untyped-def]
    url, _ = served
    body = _big_map()
    page.route("**/v1/analytics/map", lambda route: route.fulfill(body=body, content_type="application/json"))
    _open(page, url)
    assert page.evaluate("window.explore.map.n") == 100_000
    figures = page.evaluate("window.explore.benchmark(60, 2000)")
    # real pointer events: hover look-ups as the mouse sweeps the map
    box = page.locator("#map").bounding_box()
    page.evaluate("window.exploreStats.hovers.length = 0")
    for step in range(120):
        page.mouse.move(box["x"] + 20 + step * 6, box["y"] + 100 + (step * 13) % 400)
    page.wait_for_function("window.exploreStats.hovers.length > 10")
    live = page.evaluate(
        "(() => { const h = [...window.exploreStats.hovers].sort((a, b) => a - b);"
        " return {count: h.length, median: h[h.length >> 1], max: h[h.length - 1]}; })()"
    )
    figures |= {"pointer_hovers": live["count"], "pointer_hover_ms_median": live["median"],
                "pointer_hover_ms_max": live["max"], "map_json_bytes": len(body)}  # fmt: skip
    (ARTIFACTS / "explore-100k.json").write_text(json.dumps(figures, indent=2))
    print("explore page, 100 000 points:", json.dumps(figures))
    page.mouse.move(*_point_on_screen(page, "00000000-0000-4000-8000-000000001000"))
    page.wait_for_selector("#hover:not([hidden])", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "explore-100k.png"))
    assert figures["points"] == 100_000 and figures["draw_ms_median"] > 0
