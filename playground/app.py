"""make playground: a page on 127.0.0.1 to try the served model in a browser.

    python -m playground        # against `make serve`'s TorchServe, or one it starts (and stops) itself

Type a number or pick one digit, choose how many hands and their seed; the page shows the API's PNG
for that request, and its download. Or write a number on the pad (or upload a photo of one) and say what it
says: the page shows any number written in that hand, the digits as the API cut them, and the model's copies,
from one request to the hand route. The page's backend calls TorchServe with the inference key from the
server's key_file.json, read for each request (keys are new at every start), so the key never reaches
the browser. A refused request shows the API's own message next to the field it names.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import secrets
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import orjson
import requests

from scripts import CONFIG, MODEL_NAME, ROOT
from scripts.server import TorchServe
from train.files import write_bytes

if TYPE_CHECKING:
    import gradio as gr

PORT = 7860  # the page's own port, on 127.0.0.1 (Gradio's usual one; TorchServe's are 8080-8082)
PNG, JSON = "image/png", "application/json"
# The API's names for the page's inputs, in the order the page lists them: an error that names a field
# is shown next to that input.
FIELDS = ("digits", "digit", "count", "seed")
NEW_SEEDS = 10**6  # "new hands" draws seeds below this: short enough to note down (any seed the API takes is typed)
# The PNG has 28 pixels a digit: scaled up to fill the box, without blurring them.
CSS = ("#digits img, #written img, #prepared img, #copy img { width: 100%; height: 100%; object-fit: contain; "
       "image-rendering: pixelated; } #hand-message { color: var(--error-text-color); }")
PAD_SIZE = (840, 280)  # the drawing's canvas: room for a number, ten times MNIST's side tall
PHOTO_SIDE = 2048  # a larger photo is sent at most this long a side, as a JPEG: the API reads its ink at 1024
PHOTO_BYTES = 700_000  # a PNG or JPEG up to this size goes as it is (in base64 it stays under the API's 1 MiB body)
EXAMPLES = [["02139", None, 4, "7"], ["2026", None, 6, "42"], ["", "7", 9, "3"], ["0123456789", None, 3, "1"]]

# Gradio phones home unless told not to (analytics.py: a version check and telemetry threads at
# Blocks() and launch(); huggingface_hub's telemetry). The page is local and may be offline.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
           "GRADIO_SHARE": "False"}


def gradio():
    """Gradio, imported on first use (only the page needs it, requirements-playground.txt) with OFFLINE
    set first: some of it is read at import."""
    os.environ.update(OFFLINE)
    import gradio as gr

    return gr


class ApiError(Exception):
    """A request the page could not draw: the message is the API's, or why TorchServe did not answer."""


def request_body(number: str, digit: Optional[str], count: Optional[float], seed: str) -> dict[str, Any]:
    """The API request for the page's inputs. Values are passed on as typed, so the API judges them and
    its message is the one shown: only a whole-number seed becomes an integer (a text box, because a
    browser's numbers lose seeds above 2**53)."""
    body: dict[str, Any] = {}
    if count is not None:
        body["count"] = int(count) if float(count).is_integer() else count
    seed = (seed or "").strip()
    if seed:
        body["seed"] = int(seed) if re.fullmatch(r"-?\d+", seed) else seed
    number = (number or "").strip()
    if number:
        body["digits"] = number
    elif digit not in (None, ""):
        body["digit"] = int(digit)
    return body


def upload_image(pad: Optional[dict], photo: Optional[str]) -> bytes:
    """The picture the page sends as the hand: an uploaded photo as it is when it is a PNG or a JPEG of at most
    PHOTO_BYTES (the API turns it upright by its EXIF tag), else turned upright and sent as a JPEG at most PHOTO_SIDE
    long; or the pad's drawing as a PNG (transparent, the ink in its alpha). An empty pad is sent too, so the API says
    that nothing is drawn."""
    from PIL import Image, ImageOps

    if photo:
        data = Path(photo).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format in ("PNG", "JPEG") and len(data) <= PHOTO_BYTES:
                return data
            image = ImageOps.exif_transpose(image).convert("L")
            image.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        kind, options = "JPEG", {"quality": 90}
    else:
        composite = (pad or {}).get("composite")
        image = Image.fromarray(composite) if composite is not None else Image.new("RGBA", PAD_SIZE)
        kind, options = "PNG", {}
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def hand_body(pad: Optional[dict], photo: Optional[str], says: str, number: str) -> dict[str, Any]:
    """The API request for the hand part: the drawing or photo, the number it says (left to right), and the number to
    write. Values are passed on as typed, so the API judges them."""
    body: dict[str, Any] = {"hand": {"image": base64.b64encode(upload_image(pad, photo)).decode(),
                                     "digits": (says or "").strip()}}
    number = (number or "").strip()
    if number:
        body["digits"] = number
    return body


def error_message(reply: requests.Response) -> str:
    """The API's message: {"error": ...} from the handler, {"message": ...} from TorchServe's frontend."""
    try:
        data = reply.json()
    except ValueError:
        data = {}
    message = (data.get("error") or data.get("message")) if isinstance(data, dict) else None
    return message or f"{reply.status_code} {reply.reason}"


class Backend:
    """The page's side of TorchServe: holds the way to the key, asks for PNGs, keeps them for Gradio to serve."""

    def __init__(self, server: TorchServe) -> None:
        self.server = server
        # The key is read from the server's key_file.json for each request, and renewed when it expires. Hands go to
        # their own route.
        self.client, self.hand_client = server.client(), server.client(server.hand_url)
        # The validator (check) draws the picture to learn whether the API refuses the request; the draw
        # that follows takes it from here instead of asking twice.
        self._drawn: dict[str, str] = {}
        self._lock = threading.Lock()

    def fetch(self, body: dict[str, Any], accept: str = PNG) -> bytes:
        """The API's answer to `body` (a PNG, or JSON with accept=JSON), or ApiError with the API's message."""
        client = self.hand_client if "hand" in body else self.client
        try:
            reply = client.post(body, accept)
        except requests.ConnectionError:
            raise ApiError(f"TorchServe at {self.server.inference_url} does not answer: "
                           f"is it running (`make serve`)?") from None
        except requests.RequestException as error:
            raise ApiError(f"TorchServe at {self.server.inference_url}: {type(error).__name__}") from None
        except (OSError, KeyError, ValueError):  # no key file, or not TorchServe's
            raise ApiError(f"no inference key in {client.key_file}: is TorchServe running (`make serve`)?") from None
        if reply.status_code != 200:
            raise ApiError(error_message(reply))
        return reply.content

    def save(self, png: bytes, name: str) -> str:
        """The PNG as a file named `name` where Gradio serves files from, byte for byte (an image object would
        be re-encoded): a download says what it holds. Stored by content: a picture already there is only
        touched (delete_cache ages files by ctime), never rewritten under a browser that is reading it, and a
        new one appears whole."""
        gradio()
        from gradio.utils import get_upload_folder

        path = Path(get_upload_folder()) / hashlib.sha256(png).hexdigest() / name
        if path.exists():
            path.touch()
        else:
            write_bytes(png, path)
        return str(path)

    def picture(self, body: dict[str, Any]) -> str:
        """The API's PNG for a seed's request, saved under a name that says what it holds."""
        what = body.get("digits", body.get("digit", "random"))
        return self.save(self.fetch(body), f"digits-{str(what)[:32]}-{body.get('count', 1)}x-seed{body.get('seed', 'random')}.png")

    def check(self, number: str, digit: Optional[str], count: Optional[float], seed: str) -> tuple:
        """The seeds part's validator: draws the request; a refusal marks each input its message names (the number
        when it names none, e.g. a server that is down), and the draw does not run."""
        gr = gradio()
        body = request_body(number, digit, count, seed)
        try:
            path = self.picture(body)
        except ApiError as error:
            message = str(error)
            named = set(re.findall(r"'(\w+)'", message)) & set(FIELDS) or {"digits"}
            return tuple(gr.validate(field not in named, message) for field in FIELDS)
        with self._lock:
            if len(self._drawn) > 64:  # drawn but never shown (the draw was cancelled): forget them
                self._drawn.clear()
            self._drawn[json.dumps(body, sort_keys=True)] = path
        return tuple(gr.validate(True, "") for _ in FIELDS)

    def draw(self, number: str, digit: Optional[str], count: Optional[float], seed: str) -> str:
        """The picture's file for the inputs: the one check drew, else a new request."""
        gr = gradio()
        body = request_body(number, digit, count, seed)
        with self._lock:
            path = self._drawn.pop(json.dumps(body, sort_keys=True), None)
        if path is None:
            try:
                path = self.picture(body)
            except ApiError as error:
                raise gr.Error(str(error), print_exception=False) from None
        return path

    def hand_pictures(self, body: dict[str, Any]) -> tuple[str, str, str]:
        """For a request with a hand, from one JSON answer (one search): the number written in the hand, the upload's
        digits as the API cut and prepared them, and the model's copy of each, each a PNG file drawn as the API draws
        its own PNG (the number's bytes are the API's PNG answer to the same request)."""
        import numpy as np  # here: the page's module loads fast (Gradio brings both when the page starts)

        from handler.request_contract import DEFAULT_NUMBER, png_grid

        answer = orjson.loads(self.fetch(body, JSON))
        number, hand = body.get("digits", DEFAULT_NUMBER), answer["hand"]
        rows = {name: png_grid(np.asarray(hand[name], dtype=np.float64).reshape(1, -1, 28, 28)) for name in ("image", "copy")}
        return (self.save(png_grid(np.asarray(answer["images"], dtype=np.float64)), f"{number[:32]}-in-your-hand.png"),
                self.save(rows["image"], "your-digits-as-cut.png"), self.save(rows["copy"], "the-models-copies.png"))

    def write_hand(self, pad: Optional[dict], photo: Optional[str], says: str, number: str) -> tuple:
        """The hand part's pictures and message: the number in the hand, the upload's digits as cut and the model's
        copies, or none of them and the API's message (shown under the drawing). Not a validator, as in the seeds
        part: Gradio's sketchpad hands its drawing to the first function that reads it only, and a validator is one."""
        gr = gradio()
        try:
            return *self.hand_pictures(hand_body(pad, photo, says, number)), gr.update(value="", visible=False)
        except ApiError as error:
            return None, None, None, gr.update(value=f"**{error}**", visible=True)


def build_page(backend: Backend) -> "gr.Blocks":
    gr = gradio()
    with gr.Blocks(title="mnist-gan playground", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("## Handwritten digits from the served GAN\n"
                    "Type a number, or pick one digit. **A seed is a handwriting**: the same seed gives the "
                    "same hands, bit for bit, so change the number and the hands stay; a new seed brings new "
                    "hands. Each row of the picture is one hand writing the number.")
        with gr.Row():
            with gr.Column():
                number = gr.Textbox(value="02139", label="Number", placeholder="e.g. 02139", max_lines=1,
                                    info="digits 0-9, written side by side (the API's `digits`)", elem_id="number")
                digit = gr.Radio([str(d) for d in range(10)], value=None, label="or one digit",
                                 info="that digit, once per hand, in a grid (`digit`)", elem_id="digit")
                with gr.Row():
                    count = gr.Number(value=4, precision=0, label="Hands", info="how many (`count`)",
                                      elem_id="count")
                    seed = gr.Textbox(value="7", label="Seed", max_lines=1, info="which hands (`seed`)",
                                      elem_id="seed")
                new_hands = gr.Button("New hands (new seed)", elem_id="new-hands")
            image = gr.Image(label="from TorchServe (PNG)", type="filepath", format="png", interactive=False,
                             buttons=["download"], height=360, show_label=False, elem_id="digits")
        inputs = [number, digit, count, seed]
        gr.Examples(EXAMPLES, inputs, label="Examples")
        # A number and a single digit are two kinds of request (the API refuses both at once): typing one
        # clears the other, in the browser.
        number.input(None, None, digit, js="() => null")
        digit.input(None, None, number, js="() => ''")
        new_hands.click(lambda: str(secrets.randbelow(NEW_SEEDS)), None, seed)
        # On .change, not .input: Gradio's Textbox sends .input from its key handlers only, so a number
        # pasted with the mouse would not draw. always_last: a burst of changes draws twice, not each time.
        gr.on([page.load, number.change, digit.change, count.change, seed.change], backend.draw, inputs, image,
              validator=backend.check, trigger_mode="always_last", show_progress="minimal")

        gr.Markdown("## Your hand\n"
                    "Write a number, or upload a photo of one written on paper, and say what it says: the served model "
                    "cuts it into its digits, finds the one hand that writes them so (the API's `hand`), then writes "
                    "any number in it. Several digits pin a hand down far better than one.")
        with gr.Column(elem_id="your-hand"):
            # Black ink on a transparent canvas: the API reads the alpha as the ink.
            pad = gr.Sketchpad(label="Write a number", type="numpy", image_mode="RGBA", canvas_size=PAD_SIZE,
                               brush=gr.Brush(default_size=16, colors=["#000000"], color_mode="fixed"),
                               layers=False, transforms=(), format="png", elem_id="pad")
            hand_message = gr.Markdown(visible=False, elem_id="hand-message")  # the API's refusal, if any
            with gr.Row():
                says = gr.Textbox(value="", label="It says", max_lines=1, placeholder="e.g. 42",
                                  info="the digits you wrote, left to right (`hand.digits`)", elem_id="says")
                hand_number = gr.Textbox(value="0123456789", label="Write", max_lines=1,
                                         info="the number to write in your hand (`digits`)", elem_id="hand-number")
                photo = gr.Image(label="or upload a photo of a number (PNG or JPEG)", type="filepath",
                                 sources=["upload"], height=120, elem_id="photo")
            written = gr.Image(label="in your hand (the API's PNG)", type="filepath", format="png", interactive=False,
                               buttons=["download"], height=120, elem_id="written")
            with gr.Row():
                prepared = gr.Image(label="your digits, as cut and prepared", type="filepath", format="png",
                                    interactive=False, height=110, elem_id="prepared")
                copy = gr.Image(label="the model's copies", type="filepath", format="png", interactive=False,
                                height=110, elem_id="copy")
        gr.on([pad.change, photo.change, says.change, hand_number.change], backend.write_hand,
              [pad, photo, says, hand_number], [written, prepared, copy, hand_message], trigger_mode="always_last",
              show_progress="minimal")
    return page


def launch(backend: Backend, port: int = PORT) -> "gr.Blocks":
    """Serves the page on 127.0.0.1:port in a background thread; .close() stops it."""
    page = build_page(backend)
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False,
                ssr_mode=False, footer_links=["gradio"], css=CSS,
                blocked_paths=[str(backend.server.workdir)])  # key_file.json lives there
    return page


def ensure_server(server: TorchServe) -> bool:
    """Starts `server` unless it runs already; True when this call started it (so the page stops it)."""
    if server.pid():
        return False
    archive = server.model_store / f"{MODEL_NAME}.mar"
    if not archive.exists():
        raise SystemExit(f"no TorchServe running from {server.workdir}, and {archive} is missing to start one: "
                         f"run `make archive` (or `make serve`) first")
    print(f"no TorchServe running from {server.workdir}: starting one (as `make serve`) ...", flush=True)
    try:
        server.start()
    except (RuntimeError, TimeoutError) as error:
        raise SystemExit(f"playground: {error}")
    return True


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "serve",
                        help="the TorchServe's working directory (its key_file.json): `make serve`'s by default")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store",
                        help="served when the page starts a TorchServe itself")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the TorchServe's addresses")
    args = parser.parse_args(argv)
    server = TorchServe(args.workdir, args.model_store, args.config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # even during start-up: the server started is stopped below
        signal.signal(signum, lambda *_: stop.set())
    started = ensure_server(server)
    try:
        if stop.is_set():
            return
        try:
            page = launch(Backend(server), args.port)
        except OSError:  # Gradio's "Cannot find empty port"
            raise SystemExit(f"playground: port {args.port} on 127.0.0.1 is in use: pick another with --port "
                             f"(`make playground ARGS='--port N'`)") from None
        print(f"playground: http://127.0.0.1:{args.port}/ (TorchServe at {server.inference_url}"
              f"{', started for the page: it stops with it' if started else ''}); Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            pass
        page.close(verbose=False)
    finally:
        if started:
            server.stop()
            print("playground: stopped the TorchServe it had started", flush=True)


if __name__ == "__main__":
    main()
