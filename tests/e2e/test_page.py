"""The web page in real headless Chromium (Debian's chromium, driven by Playwright):
upload a photo, see the right listing first, click a result to search from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from tests.conftest import jpeg_bytes
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serving
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(sqlite_store, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serving(create_app(ApiSettings(), Components(seeded_service(sqlite_store, tmp_path)))) as url:
        yield url


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it as root)")
def test_upload_then_click_through(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "query.jpg"
    photo.write_bytes(jpeg_bytes(20))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(server)
            # the model selector lists the store's models and picks the one this API serves
            page.wait_for_selector("#model option", state="attached", timeout=30_000)
            assert page.locator("#model").input_value() == "vgg16_fc7"
            assert "100%" in page.locator("#model option").first.inner_text()
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".card", timeout=60_000)
            titles = page.locator(".card h2").all_inner_texts()
            assert titles[0] == "1. listing-2"
            assert page.locator(".card .badge").first.inner_text() == "2 in stock"
            page.screenshot(path=str(ARTIFACTS / "page-upload.png"))

            second = page.locator(".card").nth(1)
            clicked = second.get_attribute("data-listing-id")
            second.locator("img.main").click()  # search from that listing's best image
            page.wait_for_function(
                "id => document.querySelector('.card')?.dataset.listingId !== undefined"
                " && !document.querySelector('#status').textContent.startsWith('Searching')",
                arg=clicked,
                timeout=60_000,
            )
            listed = [c.get_attribute("data-listing-id") for c in page.locator(".card").all()]
            assert clicked not in listed  # a search from an image leaves out its own listing
            assert len(listed) == 4
            page.screenshot(path=str(ARTIFACTS / "page-click-through.png"))
        finally:
            browser.close()
