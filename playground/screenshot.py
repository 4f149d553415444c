"""The browser that tests the page (tests/test_playground.py), and the README's picture of it.

    python -m playground.screenshot --out docs/playground.png    # of a running `make playground`: 2026 written on
                                                                 # the pad with the mouse, and 0-9 in its hand

Debian's Chromium (`apt-get install chromium`), driven by Playwright: never `playwright install`,
which downloads a browser build of its own.
"""
import argparse
import math
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


# Strokes as a person writes each digit, in a box of its own: (x, y) points from 0 to 1 across it, y downwards.
_OVAL = [(0.5 + 0.32 * math.sin(t * math.pi / 6), 0.5 - 0.42 * math.cos(t * math.pi / 6)) for t in range(13)]
DIGIT_STROKES = {
    "0": [_OVAL],
    "1": [[(0.55, 0.08), (0.45, 0.92)]],
    "2": [[(0.15, 0.3), (0.35, 0.1), (0.65, 0.1), (0.8, 0.3), (0.7, 0.5), (0.2, 0.9), (0.85, 0.9)]],
    "4": [[(0.55, 0.08), (0.15, 0.65), (0.85, 0.65)], [(0.62, 0.35), (0.62, 0.95)]],  # two strokes
    "6": [[(0.7, 0.08), (0.4, 0.3), (0.22, 0.6), (0.3, 0.88), (0.6, 0.9), (0.75, 0.7), (0.6, 0.52), (0.3, 0.6)]],
    "7": [[(0.15, 0.12), (0.85, 0.12), (0.45, 0.92)]],
}


def number_strokes(number: str, left: float = 0.1, right: float = 0.9) -> list[list[tuple[float, float]]]:
    """The strokes of `number` written across the pad from `left` to `right` (shares of its width), each digit in a
    box of its own, a little apart, as a person writes a number."""
    width = (right - left) / len(number)
    strokes = []
    for index, digit in enumerate(number):
        x0 = left + index * width + 0.15 * width
        strokes += [[(x0 + 0.7 * width * x, 0.18 + 0.64 * y) for x, y in stroke] for stroke in DIGIT_STROKES[digit]]
    return strokes


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
        draw(page, number_strokes("2026"))
        says = page.locator("#says input")
        says.click()
        says.press_sequentially("2026")
        page.wait_for_selector("#copy img", timeout=60_000)
        page.wait_for_timeout(1000)  # the images' fade-in
        page.locator("#your-hand").screenshot(path=args.out)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
