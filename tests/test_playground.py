"""The playground (make playground) in a real browser: Debian's Chromium driven by Playwright, the page run
as `make playground` runs it, with no TorchServe up, so it starts one (the tiny archive, on free ports) and
stops it when it stops; every picture and message is checked against TorchServe's answer to the same request."""
import base64
import hashlib
import importlib.util
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from scripts import CONFIG, ROOT
from scripts.prerequisites import TOOLS, problem
from scripts.server import TorchServe, free_ports, render_config

pytestmark = pytest.mark.integration

# Copies every byte a page script reads with fetch() as it arrives, for the key search. Gradio sends
# each result down a fetch() stream (queue/data) that stays open, whose body Playwright cannot read.
RECORD_FETCHES = """
window.__fetched = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
    const response = await pageFetch(...args);
    const record = {url: response.url, text: ""};
    window.__fetched.push(record);
    const reader = response.clone().body?.getReader();
    const decoder = new TextDecoder();
    (async () => {
        for (let part = await reader.read(); !part.done; part = await reader.read()) {
            record.text += decoder.decode(part.value, {stream: true});
        }
    })().catch(() => {});
    return response;
};
"""


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright; a missing browser or package fails with how to install it."""
    missing = problem(TOOLS["chromium"])
    if missing:
        pytest.fail(f"{missing}: install it with `apt-get install chromium` (as root, "
                    f"`python3 -m scripts.prerequisites chromium` does it); the playground's test needs it")
    for module in ("playwright", "gradio"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is missing: `make playground-install` installs requirements-playground.txt")
    from playwright.sync_api import sync_playwright

    from playground.screenshot import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def playground(tiny_store, tmp_path_factory):
    """(page URL, its TorchServe): `python -m playground`, finding no server, starts one; SIGTERM ends both."""
    tmp = tmp_path_factory.mktemp("playground")
    config = tmp / "config.properties"  # free ports, so nothing else's server is found or disturbed
    config.write_text(render_config(CONFIG, tuple(free_ports(4)), tiny_store))
    server = TorchServe(tmp / "serve", tiny_store, config)
    port, log = free_ports(1)[0], tmp / "playground.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "playground", "--port", str(port), "--workdir",
                                    str(server.workdir), "--config", str(config), "--model-store", str(tiny_store)],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while f"playground: {url}" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert server.pid(), "the page says it runs, but no TorchServe does"
        yield url, server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            left = server.pid()
            server.stop()  # whatever the page did, no server outlives the test
    assert process.returncode == 0, log.read_text()
    assert left is None, "the page left the TorchServe it started running"


def api_png(server: TorchServe, body: dict) -> requests.Response:
    """TorchServe's own answer to `body`, asked for as the page asks: a PNG."""
    return requests.post(server.predict_url, json=body, headers={**server.headers(), "Accept": "image/png"},
                         timeout=30)


def api_hand_png(server: TorchServe, body: dict) -> requests.Response:
    """TorchServe's hand route's PNG for `body`: what the page's picture must be, byte for byte."""
    return requests.post(server.hand_url, json=body, headers={**server.headers(), "Accept": "image/png"}, timeout=60)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_page_draws_what_the_api_draws_in_seeds_hands_and_yours_shows_its_errors_and_never_the_key(browser, playground):
    from playwright.sync_api import expect

    from playground.app import ensure_server, hand_body
    from playground.screenshot import draw, number_strokes

    url, server = playground
    running = server.pid()
    assert ensure_server(TorchServe(server.workdir, server.model_store, server.config)) is False  # as with make serve
    assert server.pid() == running
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    context.add_init_script(RECORD_FETCHES)
    context.add_init_script(RECORD_UPLOADS)
    page = context.new_page()
    sent, received = [], {}
    page.on("request", lambda request: sent.append(request))
    page.on("response", lambda response: received.setdefault(response.url, response))
    page.goto(url)

    def type_into(elem_id: str, text: str) -> None:
        """As a person types: every key (Gradio's textbox sends its input events from key handlers)."""
        field = page.locator(f"#{elem_id} input")
        field.click()
        field.press("Control+A")
        field.press_sequentially(text)

    def shown(name: str) -> tuple[str, bytes]:
        """Once the page shows the picture whose file is `name`: its URL and the bytes the browser got."""
        image = page.locator("#digits img")
        expect(image).to_have_attribute("src", re.compile(re.escape("/" + name) + "$"), timeout=30_000)
        src = image.get_attribute("src")
        for _ in range(100):
            if src in received:
                return src, received[src].body()
            page.wait_for_timeout(100)
        raise AssertionError(f"the browser never received {src}")

    def assert_shows(name: str, body: dict) -> str:
        src, png = shown(name)
        answer = api_png(server, body)
        assert answer.status_code == 200, answer.text
        assert png == answer.content, f"the page shows other bytes than TorchServe answers to {body}"
        assert np.array_equal(pixels(png), pixels(answer.content))
        return src

    # The page opens on its first example: a number.
    assert_shows("digits-02139-4x-seed7.png", {"count": 4, "seed": 7, "digits": "02139"})
    type_into("seed", "123")
    type_into("count", "3")
    type_into("number", "2026")
    src = assert_shows("digits-2026-3x-seed123.png", {"count": 3, "seed": 123, "digits": "2026"})
    assert pixels(received[src].body()).shape == (3 * 28 + 2 * 2, 4 * 28)  # a row per hand, 4 digits each
    with page.expect_download() as download:
        page.locator("#digits a[download]").click()
    assert download.value.suggested_filename == "digits-2026-3x-seed123.png"
    assert open(download.value.path(), "rb").read() == received[src].body()

    # One digit: the number is cleared, and the request is {"digit": 7}.
    page.locator("#digit label", has_text="7").click()
    expect(page.locator("#number input")).to_have_value("")
    assert_shows("digits-7-3x-seed123.png", {"count": 3, "seed": 123, "digit": 7})

    # Refused requests: the API's message, next to the field it names.
    type_into("number", "12a")
    refusal = api_png(server, {"count": 3, "seed": 123, "digits": "12a"})
    assert refusal.status_code == 400
    expect(page.locator("#number div.validation-error")).to_have_text(refusal.json()["error"])
    type_into("number", "0123456789")
    type_into("count", "30")
    refusal = api_png(server, {"count": 30, "seed": 123, "digits": "0123456789"})
    assert refusal.status_code == 400 and "'count'" in refusal.json()["error"]
    expect(page.locator("#count div.validation-error")).to_have_text(refusal.json()["error"])
    assert "Traceback" not in page.content()

    # Your hand. A blank pad: the API's own message, under the pad.
    type_into("says", "2026")
    blank = api_hand_png(server, hand_body(None, None, "2026", "0123456789"))
    assert blank.status_code == 400 and "nothing is drawn" in blank.json()["error"]
    expect(page.locator("#hand-message")).to_have_text(blank.json()["error"], timeout=30_000)

    # 2026 written with the mouse, as a person writes it: the brush, then each digit's strokes, a little apart.
    draw(page, number_strokes("2026"), steps=1)
    # The pad sends its drawing after each stroke, and the page asks for each: the last drawing is what it shows.
    uploads, quiet = [], 0
    while quiet < 6:  # until the pad has sent nothing new for 3 s (it sends as the strokes are redrawn)
        page.wait_for_timeout(500)
        latest = [upload for upload in page.evaluate("window.__uploads") if upload["name"] == "composite.png"]
        quiet = quiet + 1 if latest and len(latest) == len(uploads) else 0
        uploads = latest
    composite = np.asarray(Image.open(io.BytesIO(base64.b64decode(uploads[-1]["data"]))).convert("RGBA"))
    assert (composite[..., 3] > 128).any(), "the strokes are not in the drawing"
    request = hand_body({"composite": composite}, None, "2026", "0123456789")
    answer = api_hand_png(server, request)
    assert answer.status_code == 200, answer.text
    # The page shows TorchServe's answer to its own request, byte for byte (its files are stored by their digest).
    image = page.locator("#written img")
    expect(image).to_have_attribute("src", re.compile(hashlib.sha256(answer.content).hexdigest() +
                                                      r"/0123456789-in-your-hand\.png$"), timeout=30_000)
    expect(page.locator("#hand-message")).to_be_hidden()
    src = image.get_attribute("src")
    for _ in range(100):
        if src in received:
            break
        page.wait_for_timeout(100)
    shown_png = received[src].body()
    assert shown_png == answer.content, "the page shows other bytes than TorchServe answers to the page's request"
    assert pixels(shown_png).shape == (28, 10 * 28)  # one hand writing ten digits
    # Beside it: the number as the API cut and prepared it, four digits, and the model's copy of each.
    hand = requests.post(server.hand_url, json=request, headers=server.headers(), timeout=30).json()["hand"]
    assert np.asarray(hand["image"]).shape == (4, 28, 28)
    for elem_id, values in (("prepared", hand["image"]), ("copy", hand["copy"])):
        picture = page.locator(f"#{elem_id} img")
        expect(picture).to_have_attribute("src", re.compile(r"\.png$"), timeout=30_000)
        expected = np.rint(255 * np.concatenate(values, axis=1)).astype(np.uint8)
        assert np.array_equal(pixels(requests.get(picture.get_attribute("src"), timeout=10).content), expected), elem_id
    # Nothing the browser received holds a key: URLs, headers, bodies, what scripts read as it streamed,
    # the page itself, its cookies and storage. Every request stayed on the page's own address.
    fetched = page.evaluate("window.__fetched")
    assert any(src in record["text"] for record in fetched), "the result stream was not recorded"
    seen = [("the page", page.content()), ("cookies", str(context.cookies())),
            ("local storage", page.evaluate("JSON.stringify(localStorage)"))]
    seen += [(f"fetch {record['url']}", record["url"] + record["text"]) for record in fetched]
    unread = []
    for response in received.values():
        seen += [(f"URL {response.url}", response.url), (f"headers of {response.url}", str(response.all_headers()))]
        try:
            seen.append((f"body of {response.url}", response.body().decode("latin-1")))
        except Exception:  # a stream still open: read above, through fetch
            unread.append(response.url)
    assert set(unread) <= {record["url"] for record in fetched}, unread
    seen += [(f"request {request.url}", request.url + (request.post_data or "")) for request in sent]
    for name, key in server.keys().items():
        leaks = [where for where, text in seen if key in text]
        assert not leaks, f"the {name} key reached the browser: {leaks}"
    origin = urlsplit(url).netloc
    assert {urlsplit(r.url).netloc for r in sent if r.url.startswith("http")} == {origin}
    key_file = requests.get(f"{url}gradio_api/file={server.workdir / 'key_file.json'}", timeout=10)
    assert key_file.status_code in (403, 404) and server.keys()["inference"] not in key_file.text
    context.close()


def test_the_hand_part_asks_once_for_everything_it_shows(playground, monkeypatch):
    # One request, so one search: two (a PNG and a JSON) could land on both workers, and each would search.
    from playground.app import Backend, hand_body
    from playground.screenshot import number_strokes

    _, server = playground
    backend, asked = Backend(server), []
    real = Backend.fetch
    monkeypatch.setattr(Backend, "fetch", lambda self, body, accept="image/png": asked.append(accept) or real(self, body, accept))
    pad = np.zeros((280, 840, 4), np.uint8)
    for stroke in number_strokes("42"):
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            for t in np.linspace(0, 1, 60):
                x, y = round((x0 + t * (x1 - x0)) * 839), round((y0 + t * (y1 - y0)) * 279)
                pad[max(0, y - 7):y + 7, max(0, x - 7):x + 7, 3] = 255
    written, cut, copies = backend.hand_pictures(hand_body({"composite": pad}, None, "42", "7"))
    assert asked == ["application/json"]
    assert pixels(Path(written).read_bytes()).shape == (28, 28) and pixels(Path(cut).read_bytes()).shape == (28, 56)


def test_request_body_passes_the_inputs_on_for_the_api_to_judge():
    from playground.app import request_body

    assert request_body(" 02139 ", "7", 4, "7") == {"count": 4, "seed": 7, "digits": "02139"}  # the number wins
    assert request_body("", "7", 2, "9223372036854775807") == {"count": 2, "seed": 2**63 - 1, "digit": 7}
    assert request_body("", None, None, "") == {}  # the API's defaults: one random digit, a random hand
    assert request_body("12a", None, 2.5, "x1") == {"count": 2.5, "seed": "x1", "digits": "12a"}


def test_a_server_that_is_down_is_named(tmp_path):
    from playground.app import ApiError, Backend

    server = TorchServe(tmp_path, ports=tuple(free_ports(3)))  # nothing listens there
    with pytest.raises(ApiError, match=r"no inference key in .*key_file.json: is TorchServe running"):
        Backend(server).fetch({"count": 1})
    (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "k"}}))
    with pytest.raises(ApiError, match=f"TorchServe at {server.inference_url} does not answer"):
        Backend(server).fetch({"count": 1})


# Keeps a copy of every file a page script uploads (Gradio's sketchpad sends its drawing as blobs in FormData,
# whose bytes Playwright cannot read from the request): the test sends the drawing to TorchServe itself.
RECORD_UPLOADS = """
window.__uploads = [];
const fetchBeforeUploads = window.fetch;
window.fetch = async (...args) => {
    const [url, options] = args;
    if (String(url).includes('/upload') && options && options.body instanceof FormData) {
        for (const [, value] of options.body.entries()) {
            if (value instanceof Blob) {
                const bytes = new Uint8Array(await value.arrayBuffer());
                let text = '';
                for (const byte of bytes) text += String.fromCharCode(byte);
                window.__uploads.push({name: value.name || '', data: btoa(text)});
            }
        }
    }
    return fetchBeforeUploads(...args);
};
"""


def test_a_photo_is_sent_as_it_is_or_upright_and_no_larger_than_the_api_needs(tmp_path):
    from playground.app import PAD_SIZE, PHOTO_BYTES, PHOTO_SIDE, upload_image

    small = tmp_path / "number.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, as a phone does: the API turns it upright
    Image.fromarray(np.full((300, 200), 230, np.uint8)).save(small, format="JPEG", exif=exif)
    assert upload_image(None, str(small)) == small.read_bytes()  # a JPEG goes as it is, EXIF tag and all
    large = tmp_path / "photo.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (4000, 3000), np.uint8)  # a 12-megapixel phone photo
    Image.fromarray(noise).save(large, format="JPEG", quality=95, exif=exif)
    assert large.stat().st_size > PHOTO_BYTES
    sent = Image.open(io.BytesIO(upload_image(None, str(large))))
    assert sent.format == "JPEG" and sent.mode == "L" and sent.size == (PHOTO_SIDE, PHOTO_SIDE * 3 // 4)  # upright
    assert upload_image(None, None)[:8] == b"\x89PNG\r\n\x1a\n"  # an empty pad is sent too, as a PNG
    assert Image.open(io.BytesIO(upload_image(None, None))).size == PAD_SIZE
