"""A hand: one uploaded digit writing 5 digits (GAN inversion, then the number), against {"digits": "12345"} (the
same number in a seed's hand), served, taking turns so that their ratio comes from the same minutes."""
import http.client
import threading
import time

import numpy as np
import orjson
import torch

from experiments.bench.measure import percentile
from experiments.bench.servers import JSON, post, run_together
from experiments.report import table
from scripts.server import TorchServe

NUMBER = "12345"
P50_LINE = 50  # a hand's p50 at most this many times the plain number's
WARM_UPS = 10  # uploads sent before anything is timed


def upload_bodies(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """One request body per upload: the digit as the API's 28 x 28 array (4 decimals), writing NUMBER."""
    return [orjson.dumps({"hand": {"image": np.round(image[0].numpy().astype(np.float64), 4), "digit": int(label)},
                          "digits": NUMBER}, option=orjson.OPT_SERIALIZE_NUMPY) for image, label in zip(images, labels)]


def _send(connection: http.client.HTTPConnection, headers: dict, body: bytes) -> None:
    status, answer = post(connection, headers, body)
    assert status == 200, (status, answer[:200])


def sequential(server: TorchServe, bodies: list[bytes]) -> list[float]:
    """Seconds per request, one after another over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=60)
    headers, seconds = {**server.headers(), "Content-Type": JSON}, []
    for body in bodies:
        started = time.perf_counter()
        _send(connection, headers, body)
        seconds.append(time.perf_counter() - started)
    connection.close()
    return seconds


def images_per_second(server: TorchServe, bodies: list[bytes], clients: int, seconds: float) -> float:
    """Images/s of `clients` keep-alive clients sending `bodies` in turn, each once, for `seconds` or until they run
    out (each answer: len(NUMBER) images)."""
    headers, done, stop_at = {**server.headers(), "Content-Type": JSON}, [0], time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        connection, index = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=60), offset
        while time.perf_counter() < stop_at and index < len(bodies):
            _send(connection, headers, bodies[index])
            index += clients
            with lock:
                done[0] += len(NUMBER)
        connection.close()

    elapsed = run_together(client, clients)  # first: done[0] is read once the clients have ended
    return done[0] / elapsed


def report(server: TorchServe, uploads: list[bytes], rounds: int, seconds: float, workers: int) -> str:
    """The section's table: p50 (sequential) and images/s (one client per worker) of both kinds of request."""
    # Every upload is sent once (a worker keeps the hands it found, by upload): WARM_UPS for the warm-up, then half of
    # the rest for the p50 rounds and half for images/s.
    plain = orjson.dumps({"digits": NUMBER})
    sequential(server, [plain] * 500 + uploads[:WARM_UPS])  # warm-up: the frontend's JIT, the workers' first search
    p50 = {"plain": [], "hand": []}
    per_round = max(1, (len(uploads) - WARM_UPS) // (2 * rounds))
    timed = uploads[WARM_UPS:]
    for turn in range(rounds):
        p50["plain"].append(percentile(sequential(server, [plain] * 250), 50))
        p50["hand"].append(percentile(sequential(server, timed[turn * per_round:(turn + 1) * per_round]), 50))
    rates = {"plain": images_per_second(server, [plain] * 100_000, workers, seconds),  # more than `seconds` can send
             "hand": images_per_second(server, timed[rounds * per_round:], workers, seconds)}
    ratios = [hand / plain for hand, plain in zip(p50["hand"], p50["plain"])]
    median = float(np.median(ratios))
    rows = [(f'`{{"digits": "{NUMBER}"}}` (a seed\'s hand)', f"{1000 * np.median(p50['plain']):.2f}",
             f"{rates['plain']:,.0f}"),
            (f'`{{"hand": {{"image": <28 x 28>, "digit": d}}, "digits": "{NUMBER}"}}` (an uploaded hand, '
             f"{len(uploads)} different uploads)", f"{1000 * np.median(p50['hand']):.1f}", f"{rates['hand']:,.0f}")]
    return "\n".join([
        table(["request (served, 5 digits)", "p50 ms, one client", f"images/s, {workers} clients"], rows), "",
        f"p50 of a hand ÷ p50 of the plain number: {median:.1f} (rounds {min(ratios):.1f}-{max(ratios):.1f}; "
        f"{'PASS' if median <= P50_LINE else 'MISS'}: the line is {P50_LINE}). The uploads are real test digits, each sent "
        "once (the warm-up, the p50 rounds and images/s each have their own): a search runs for every request."])
