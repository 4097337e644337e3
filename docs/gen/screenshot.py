"""The README's and the site's picture of the page (docs/img/page.png): headless Chromium (the
page tests' setup, tests/e2e/browser.py) opens a served demo, searches with a photo and keeps
the screen with its results.

    LOOKALIKE_API_PORT=8118 make demo      # in another terminal, until it serves
    .venv/bin/python -m docs.gen.screenshot http://127.0.0.1:8118
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]


def take(url: str, photo: Path, out: Path, width: int, height: int) -> None:
    if CHROMIUM is None:
        raise SystemExit("chromium is missing: `make browser` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".card", timeout=120_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="where the demo serves, e.g. http://127.0.0.1:8118")
    parser.add_argument("--photo", type=Path, default=ROOT / "data/queries/coffee-held-out.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/page.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    take(args.url, args.photo, args.out, args.width, args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
