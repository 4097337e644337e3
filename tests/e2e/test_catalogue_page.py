"""The page's first screen in real headless Chromium: the catalogue, a page of listings at a time
(name, live stock, photo count, a lazy thumbnail), paged forward and back; a click on a photo (and
Enter on it, from the keyboard) searches with it: the clicked listing shown as the query, the
listings that look like it ranked below, its own left out; Back returns to the same page.

The store is the planted catalogue of the analytics tests (120 listings of five photos, each photo
tinted by its true cluster), so what "looks like it" means is known. Screenshots go to
tests/artifacts/."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from analytics.synthetic import Planted
from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from schemas.records import as_uuid
from store.sqlite import SQLiteStore
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serving
from tests.integration.analytics_seed import service, write_catalogue

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser)"),
]
PAGE = 24
LISTINGS = 120


@dataclass(frozen=True)
class Served:
    url: str
    planted: Planted
    names: dict[uuid.UUID, str]
    store: SQLiteStore


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("catalogue")
    store = SQLiteStore(f"sqlite:///{folder / 'lookalike.db'}")
    store.apply_schema()
    planted, names = write_catalogue(store, folder, n=5 * LISTINGS, clusters=6)
    with serving(create_app(ApiSettings(), Components(service(store)))) as url:
        yield Served(url, planted, names, store)
    store.close()


@pytest.fixture
def page(served: Served):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def catalogue_order(store: SQLiteStore) -> list[uuid.UUID]:
    return [lid for lid, _ in store.listings_page(10 * LISTINGS)]


def listing_cluster(p: Planted) -> dict[str, int]:
    """Each listing's true cluster: the one most of its photos were drawn from."""
    votes: dict[str, Counter[int]] = {}
    for row in range(len(p.catalogue)):
        votes.setdefault(str(as_uuid(p.catalogue.listing_ids[row])), Counter())[int(p.labels[row])] += 1
    return {lid: v.most_common(1)[0][0] for lid, v in votes.items()}


def plain_rows(p: Planted) -> set[int]:
    """Rows that are neither a planted outlier, misfit nor duplicate: a search from one of them
    must find listings of its own cluster first."""
    odd = {*p.outliers.tolist(), *p.misfits.tolist(), *(r for pair in p.duplicates for r in pair)}
    return set(range(len(p.catalogue))) - odd


def tiles(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#grid .tile",
        """els => els.map(e => ({id: e.dataset.listingId, name: e.querySelector('h3').textContent,
                                stock: e.querySelector('.badge').textContent,
                                count: e.querySelector('.count').textContent,
                                image: e.querySelector('.photo').dataset.imageId,
                                loading: e.querySelector('img').loading}))""",
    )


def wait_page(page: Any, number: int) -> None:
    page.wait_for_function(
        "n => document.querySelector('#catalogue-where').textContent.startsWith(`Page ${n}:`)"
        " && document.querySelector('#grid').getAttribute('aria-busy') === 'false'",
        arg=number,
        timeout=30_000,
    )


def wait_back_on(page: Any, listing_id: str) -> None:
    """Back on the catalogue, its page read again and the photo of ``listing_id`` focused."""
    page.wait_for_function(
        "id => !document.querySelector('#catalogue').hidden"
        " && document.querySelector('#grid').getAttribute('aria-busy') === 'false'"
        " && document.activeElement.closest('.tile')?.dataset.listingId === id",
        arg=listing_id,
        timeout=30_000,
    )


def wait_results(page: Any) -> None:
    page.wait_for_function(
        "document.querySelector('#results .card')"
        " && /^\\d+ listings in/.test(document.querySelector('#status').textContent)",
        timeout=60_000,
    )


def test_the_first_screen_is_the_catalogue_paged(page, served: Served) -> None:  # type: ignore[no-untyped-def]
    url, store = served.url, served.store
    order = catalogue_order(store)
    stock = {s.listing_id: s.inventory for s in store.all_stock()}
    page.goto(url)
    wait_page(page, 1)
    assert page.is_hidden("#results") and page.is_hidden("#query")

    shown = tiles(page)
    assert [t["id"] for t in shown] == [str(i) for i in order[:PAGE]]
    for t in shown:
        lid = uuid.UUID(t["id"])
        assert t["name"] == served.names[lid]
        assert t["stock"] == (f"{stock[lid]} in stock" if stock[lid] else "out of stock")
        assert t["count"] == "5 photos" and t["loading"] == "lazy"
        assert t["image"] == str(min((r.image_id for r in store.listing_images(lid)), key=lambda i: i.bytes))
    assert sum(t["stock"] == "out of stock" for t in shown) >= 3
    page.wait_for_function(  # the photos in view arrive, as thumbnails, not originals
        "[...document.querySelectorAll('#grid img')].slice(0, 8)"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    assert all(
        "/thumbnail?size=" in s for s in page.eval_on_selector_all("#grid img", "els => els.map(e => e.src)")
    )
    assert page.is_disabled("#prev") and page.is_enabled("#next")
    page.screenshot(path=str(ARTIFACTS / "page-catalogue.png"))

    # forward to the last page, every listing once, in the store's order
    seen = [t["id"] for t in shown]
    for number in range(2, LISTINGS // PAGE + 1):
        page.click("#next")
        wait_page(page, number)
        seen += [t["id"] for t in tiles(page)]
    assert seen == [str(i) for i in order]
    assert page.is_disabled("#next")
    assert page.inner_text("#catalogue-where") == f"Page 5: listings {LISTINGS - PAGE + 1}\u2013{LISTINGS}"
    page.click("#prev")  # and back: the same page again
    wait_page(page, 4)
    assert [t["id"] for t in tiles(page)] == [str(i) for i in order[3 * PAGE : 4 * PAGE]]


def test_a_click_on_a_photo_searches_with_it(page, served: Served) -> None:  # type: ignore[no-untyped-def]
    cluster, plain = listing_cluster(served.planted), plain_rows(served.planted)
    rows = {str(as_uuid(i)): r for r, i in enumerate(served.planted.catalogue.image_ids)}
    page.goto(served.url)
    wait_page(page, 1)
    page.click("#next")
    wait_page(page, 2)
    pick = next(t for t in tiles(page) if rows[t["image"]] in plain and t["stock"] != "out of stock")

    page.click(f"#grid .tile[data-listing-id='{pick['id']}'] .photo")  # a real click
    wait_results(page)
    page.wait_for_selector("#query-body .thumbs button", timeout=30_000)
    assert page.is_hidden("#catalogue")
    # the clicked listing is the query: its name, stock and photos, the clicked one outlined
    assert page.inner_text("#query-title") == f"Listings that look like “{pick['name']}”"
    assert page.inner_text("#query-body .badge") == pick["stock"]
    assert page.locator("#query-body .thumbs button").count() == 5
    current = page.get_attribute("#query-body .thumbs button.current img", "src")
    assert current is not None and pick["image"] in current
    # ... and the ranking is of the other listings, those of its cluster first
    listed = [c.get_attribute("data-listing-id") for c in page.locator("#results .card").all()]
    assert pick["id"] not in listed and len(listed) == 10
    want = cluster[pick["id"]]
    assert [cluster[lid] for lid in listed[:3] if lid] == [want] * 3
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(ARTIFACTS / "page-catalogue-click.png"))

    # Back: the same catalogue page, read again, the clicked photo focused
    page.click("#back")
    wait_back_on(page, pick["id"])
    assert page.inner_text("#catalogue-where").startswith("Page 2:") and page.is_hidden("#results")


def test_the_catalogue_by_keyboard_alone(page, served: Served) -> None:  # type: ignore[no-untyped-def]
    page.goto(served.url)
    wait_page(page, 1)
    visited = []
    for _ in range(40):  # Tab through the controls to the first photo
        page.keyboard.press("Tab")
        visited.append(page.evaluate("document.activeElement.id"))
        if page.evaluate("document.activeElement.classList.contains('photo')"):
            break
    assert "file" in visited and "next" in visited  # the upload and the pager are on the way
    focused = page.evaluate("document.activeElement.closest('.tile').dataset.listingId")
    assert focused == str(catalogue_order(served.store)[0])
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert label.endswith(": search with this photo")
    page.keyboard.press("Enter")
    wait_results(page)
    assert page.evaluate("document.activeElement.id") == "query-title"
    assert focused not in [c.get_attribute("data-listing-id") for c in page.locator("#results .card").all()]
    page.go_back()  # the browser's Back leaves the results for the catalogue
    wait_back_on(page, focused)
    assert page.is_hidden("#results")
    page.keyboard.press("Shift+Tab")  # from the photo Back focused, back to the pager's Next
    assert page.evaluate("document.activeElement.id") == "next"
    page.keyboard.press("Enter")
    wait_page(page, 2)
