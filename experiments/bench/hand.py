"""A hand: a photo of a 4-digit number writing 5 digits (cut into digits, one hand found for them, the number drawn),
against {"digits": "12345"} (the same number in a seed's hand), served, taking turns so that their ratio comes from
the same minutes. Every upload is different: a worker keeps the hands it found, by upload."""
import base64
import http.client
import threading
import time

import numpy as np
import orjson
import torch

from experiments.bench.measure import percentile
from experiments.bench.servers import JSON, post, run_together
from experiments.cutting import photo
from experiments.report import table
from handler.upload import UnusableImage, prepare_number
from scripts import MODEL_NAME, hand_route
from scripts.server import TorchServe

NUMBER = "12345"
SHOWN = 4  # digits in each uploaded photo
P50_LINE = 60  # a hand's p50 at most this many times the plain number's
WARM_UPS = 10  # uploads sent before anything is timed


def number_photos(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int = 0) -> list[bytes]:
    """`count` request bodies, each a JPEG photo of SHOWN different real test digits written side by side (as the
    evaluation's cutting section photographs them: 2 to 6 px apart, 6 times MNIST's size), writing NUMBER. Only photos
    the API can cut into SHOWN digits: this measures the time of an answer (docs/quality.md counts the refusals)."""
    rng = np.random.default_rng(seed)
    digits, bodies, index = images[:, 0].numpy(), [], 0
    while len(bodies) < count:
        picks = rng.choice(len(digits), SHOWN, replace=False)
        recipe = dict(gap=int(rng.integers(2, 7)), drops=rng.integers(-2, 3, SHOWN).tolist(), scale=6, orientation=1,
                      seed=index)
        index += 1
        data = photo([digits[i] for i in picks], recipe)
        try:
            prepare_number(data, SHOWN)
        except UnusableImage:
            continue
        shows = "".join(str(int(labels[i])) for i in picks)
        bodies.append(orjson.dumps({"hand": {"image": base64.b64encode(data).decode(), "digits": shows},
                                    "digits": NUMBER}))
    return bodies


class Failures(list):
    """Requests that failed, from any thread; `check` ends the benchmark with them (a failure is not a slow answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def add(self, what: str) -> None:
        with self.lock:
            self.append(what)

    def check(self, where: str) -> None:
        if self:
            raise SystemExit(f"{where}: {len(self)} request(s) failed, e.g. {self[:3]}")


def _send(connection: http.client.HTTPConnection, path: str, headers: dict, body: bytes, failures: Failures) -> bool:
    try:
        status, answer = post(connection, headers, body, path)
    except (OSError, http.client.HTTPException) as error:
        failures.add(repr(error))
        return False
    if status != 200:
        failures.add(f"{status}: {answer[:200]!r}")
    return status == 200


def sequential(server: TorchServe, path: str, bodies: list[bytes]) -> list[float]:
    """Seconds per request, one after another over one keep-alive connection; any failure ends the benchmark."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=60)
    headers, seconds, failures = {**server.headers(), "Content-Type": JSON}, [], Failures()
    for body in bodies:
        started = time.perf_counter()
        _send(connection, path, headers, body, failures)
        seconds.append(time.perf_counter() - started)
    connection.close()
    failures.check(path)
    return seconds


def images_per_second(server: TorchServe, path: str, bodies: list[bytes], clients: int, seconds: float) -> float:
    """Images/s of `clients` keep-alive clients sending `bodies` in turn, each once, for `seconds` or until they run
    out (each answer: len(NUMBER) images); any failure ends the benchmark."""
    headers, done, stop_at = {**server.headers(), "Content-Type": JSON}, [0], time.perf_counter() + seconds
    failures = Failures()

    def client(offset: int) -> None:
        connection, index = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=60), offset
        while time.perf_counter() < stop_at and index < len(bodies):
            if _send(connection, path, headers, bodies[index], failures):
                with failures.lock:
                    done[0] += len(NUMBER)
            index += clients
        connection.close()

    elapsed = run_together(client, clients)  # first: done[0] is read once the clients have ended
    failures.check(path)
    return done[0] / elapsed


def report(server: TorchServe, uploads: list[bytes], rounds: int, seconds: float, workers: int) -> str:
    """The section's table: p50 (sequential) and images/s (one client per worker) of both kinds of request."""
    # Every upload is sent once (a worker keeps the hands it found, by upload): WARM_UPS for the warm-up, then half of
    # the rest for the p50 rounds and half for images/s.
    plain, digits_path, hand_path = orjson.dumps({"digits": NUMBER}), f"/predictions/{MODEL_NAME}", f"/predictions/{hand_route()}"
    sequential(server, digits_path, [plain] * 500)  # warm-up: the frontend's JIT, the workers' first search
    sequential(server, hand_path, uploads[:WARM_UPS])
    p50 = {"plain": [], "hand": []}
    per_round = max(1, (len(uploads) - WARM_UPS) // (2 * rounds))
    timed = uploads[WARM_UPS:]
    for turn in range(rounds):
        p50["plain"].append(percentile(sequential(server, digits_path, [plain] * 250), 50))
        p50["hand"].append(percentile(sequential(server, hand_path, timed[turn * per_round:(turn + 1) * per_round]), 50))
    rates = {"plain": images_per_second(server, digits_path, [plain] * 100_000, workers, seconds),  # more than enough
             "hand": images_per_second(server, hand_path, timed[rounds * per_round:], workers, seconds)}
    ratios = [hand / plain for hand, plain in zip(p50["hand"], p50["plain"])]
    median = float(np.median(ratios))
    rows = [(f'`{{"digits": "{NUMBER}"}}` (a seed\'s hand, /predictions/{MODEL_NAME})',
             f"{1000 * np.median(p50['plain']):.2f}", f"{rates['plain']:,.0f}"),
            (f'`{{"hand": {{"image": <JPEG of {SHOWN} digits>, "digits": "…"}}, "digits": "{NUMBER}"}}` (your hand, '
             f"/predictions/{hand_route()}; {len(uploads)} different photos)", f"{1000 * np.median(p50['hand']):.1f}",
             f"{rates['hand']:,.0f}")]
    return "\n".join([
        table(["request (served, 5 digits)", "p50 ms, one client", f"images/s, {workers} clients"], rows), "",
        f"p50 of a hand ÷ p50 of the plain number: {median:.1f} (rounds {min(ratios):.1f}-{max(ratios):.1f}; "
        f"{'PASS' if median <= P50_LINE else 'MISS'}: the line is {P50_LINE}). The uploads are JPEG photos of real test "
        f"digits written side by side, each sent once (the warm-up, the p50 rounds and images/s each have their "
        f"own): every request reads, cuts and searches."])
