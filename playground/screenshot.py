"""The browser that tests the page (tests/test_playground.py), and the README's picture of it.

    python -m playground.screenshot --out docs/playground.png    # of a running `make playground`: a 7 drawn on the
                                                                 # pad, and 2026 written in its hand

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


# Strokes as a person draws a 7 on the pad: (x, y) points, from 0 to 1 across the canvas.
SEVEN = [[(0.32, 0.22), (0.5, 0.2), (0.7, 0.22)], [(0.7, 0.22), (0.58, 0.5), (0.45, 0.82)]]


def draw(page: Any, strokes: list[list[tuple[float, float]]], steps: int = 12) -> None:
    """Draws `strokes` on the page's pad with the mouse, the brush picked first, as a person does: `steps` mouse
    moves from each point to the next (each redraws the canvas, which takes a while in a headless browser)."""
    page.locator("#pad button[aria-label='Brush']").first.click()
    canvas = page.locator("#pad canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=steps)
        page.mouse.up()


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
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(args.url)
        page.wait_for_selector("#digits img", timeout=60_000)
        draw(page, SEVEN)
        page.locator("#shows label", has_text="7").click()
        page.wait_for_selector("#copy img", timeout=60_000)
        page.wait_for_timeout(1000)  # the images' fade-in
        page.locator("#your-hand").screenshot(path=args.out)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
