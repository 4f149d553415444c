"""Hands beside plain requests: one client asks for a number in a seed's hand back to back, while H other clients
upload never-seen hands back to back. A hand costs a worker tens of milliseconds of search and a plain request about
one, so on shared workers and one queue the hands would slow everyone down; with the hand route's own queue and
low-priority workers (handler/model-config.yaml), the plain client should hardly notice them.

    python -m experiments.bench.isolation --url http://127.0.0.1:8080 --key-file artifacts/serve/key_file.json

(`make bench` runs it against its own server; the command line points it at any running one, an older release's
included, with --hand-path.)
"""
import argparse
import http.client
import json
import multiprocessing
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

from experiments.bench.measure import percentile
from experiments.bench.servers import JSON, run_together
from experiments.report import table

PLAIN_NUMBER = "12345"
HAND_CLIENTS = (0, 2, 8)
P50_LINE, P95_LINE = 5, 10  # a plain request's p50 and p95 beside 8 hand clients, at most these times its own alone


def digit_uploads(images, labels) -> list[bytes]:
    """One request body per real test digit: the digit as the API's 28 x 28 array (4 decimals), writing PLAIN_NUMBER
    (the request every release with a hand takes)."""
    return [orjson.dumps({"hand": {"image": np.round(image[0].numpy().astype(np.float64), 4), "digit": int(label)},
                          "digits": PLAIN_NUMBER}, option=orjson.OPT_SERIALIZE_NUMPY) for image, label in zip(images, labels)]


def _connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def _plain_client(port: int, path: str, headers: dict, seconds: float, results) -> None:
    """Back to back over one keep-alive connection, each request a new seed: (latencies, failures) into `results`."""
    connection, latencies, failures, seed = _connection(port), [], [], 0
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        seed += 1
        body = orjson.dumps({"digits": PLAIN_NUMBER, "seed": seed})
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers=headers)
            reply = connection.getresponse()
            answer = reply.read()
            if reply.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(f"{reply.status}: {answer[:200]!r}")
        except (OSError, http.client.HTTPException) as error:
            failures.append(repr(error))
            connection = _connection(port)
    results.put((latencies, failures))


def contention(port: int, plain_path: str, hand_path: str, headers: dict, uploads: list[bytes], hand_clients: int,
               seconds: float) -> dict:
    """`seconds` of one plain client (in a process of its own, so the hand clients' threads never delay its clock)
    beside `hand_clients` threads uploading hands, each upload sent once: the plain client's p50 and p95 (ms) and
    requests/s, the hands answered per second, and every failure of either (a failure is not a slow answer)."""
    headers = {**headers, "Content-Type": JSON}
    results = multiprocessing.get_context("fork").SimpleQueue()
    plain = multiprocessing.get_context("fork").Process(target=_plain_client,
                                                        args=(port, plain_path, headers, seconds, results))
    answered, failures, lock, reached = [0], [], threading.Lock(), [0]  # reached: one past the last upload sent
    stop_at = time.perf_counter() + seconds

    def hand_client(index: int) -> None:
        connection, position = _connection(port), index
        while time.perf_counter() < stop_at and position < len(uploads):
            try:
                connection.request("POST", hand_path, body=uploads[position], headers=headers)
                reply = connection.getresponse()
                answer = reply.read()
                error = None if reply.status == 200 else f"{reply.status}: {answer[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error, connection = repr(exc), _connection(port)
            with lock:
                if error:
                    failures.append(error)
                else:
                    answered[0] += 1
                reached[0] = max(reached[0], position + 1)
            position += hand_clients

    plain.start()
    elapsed = run_together(hand_client, hand_clients) if hand_clients else 0.0
    latencies, plain_failures = results.get()
    plain.join()
    if hand_clients and reached[0] + hand_clients > len(uploads):
        raise SystemExit(f"the hand clients sent every upload ({len(uploads)}) before {seconds:.0f} s: give them more")
    return {"p50": 1000 * percentile(latencies, 50), "p95": 1000 * percentile(latencies, 95),
            "plain_per_s": len(latencies) / seconds, "hands_per_s": answered[0] / elapsed if elapsed else 0.0,
            "uploads": reached[0], "failures": plain_failures + failures}


def measure(port: int, plain_path: str, hand_path: str, headers: dict, uploads: list[bytes],
            seconds: float = 20.0, hand_clients: tuple[int, ...] = HAND_CLIENTS) -> dict[int, dict]:
    """contention() for each number of hand clients, on fresh uploads each time (a worker keeps the hands it found)."""
    results, used = {}, 0
    for clients in hand_clients:
        results[clients] = contention(port, plain_path, hand_path, headers, uploads[used:], clients, seconds)
        used += results[clients]["uploads"]
        if results[clients]["failures"]:
            raise SystemExit(f"{clients} hand clients: {len(results[clients]['failures'])} request(s) failed, e.g. "
                             f"{results[clients]['failures'][:3]}")
    return results


def report(results: dict[int, dict]) -> str:
    """The section: the plain client's latency and rate beside 0, 2 and 8 hand clients, and the lines."""
    alone = results[0]
    rows = [(clients, f"{r['p50']:.2f}", f"{r['p95']:.2f}", f"{r['p50'] / alone['p50']:.2f}×",
             f"{r['p95'] / alone['p95']:.2f}×", f"{r['plain_per_s']:,.0f}",
             f"{r['hands_per_s']:,.1f}" if clients else "–", f"{5 * r['hands_per_s']:,.0f}" if clients else "–")
            for clients, r in results.items()]
    most = results[max(results)]
    checks = [(f"with {max(results)} hand clients a plain request's p50 is {most['p50'] / alone['p50']:.2f}× its p50 "
               f"alone (line ≤ {P50_LINE}×)", most["p50"] / alone["p50"] <= P50_LINE),
              (f"and its p95 {most['p95'] / alone['p95']:.2f}× (line ≤ {P95_LINE}×)",
               most["p95"] / alone["p95"] <= P95_LINE)]
    return "\n".join([
        table(["hand clients", "plain p50 ms", "plain p95 ms", "p50 ÷ alone", "p95 ÷ alone", "plain requests/s",
               "hands/s", "hand images/s"], rows, 0), "",
        *[f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks]])


def main() -> None:
    from scripts import MODEL_NAME, read_model_config
    from train.data import load_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the inference address")
    parser.add_argument("--key-file", type=Path, help="TorchServe's key_file.json (none: token authorization is off)")
    parser.add_argument("--hand-path", default=f"/predictions/{read_model_config()['handler']['hand_route']}")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    headers = {}
    if args.key_file:
        headers["Authorization"] = f"Bearer {json.loads(args.key_file.read_text())['inference']['key']}"
    images, labels = load_mnist(args.data_dir, train=False)
    results = measure(urlsplit(args.url).port, f"/predictions/{MODEL_NAME}", args.hand_path, headers,
                      digit_uploads(images, labels), args.seconds)
    print(report(results))


if __name__ == "__main__":
    main()
