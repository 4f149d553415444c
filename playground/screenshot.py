"""The browser that tests the page (tests/test_playground.py), and the README's picture of it.

    python -m playground.screenshot --out docs/playground.png    # of a running `make playground`

Debian's Chromium (`apt-get install chromium`), driven by Playwright: never `playwright install`,
which downloads a browser build of its own.
"""
import argparse
import shutil
from pathlib import Path
from typing import Any, Optional

from playground.app import PORT

CHROMIUM = "chromium"
# Headless, and nothing of its own over the network: no QUIC, sync, component updates or other
# background fetches, so every request it makes is the page's.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> Optional[str]:
    return shutil.which(CHROMIUM)


def launch_chromium(playwright: Any) -> Any:
    """Playwright's Browser on Debian's Chromium."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{PORT}/")
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    args = parser.parse_args(argv)
    if chromium_path() is None:
        raise SystemExit("chromium is missing: install it with `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(args.url)
        page.wait_for_selector("#digits img", timeout=60_000)
        page.wait_for_timeout(500)  # the image's fade-in
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
