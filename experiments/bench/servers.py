"""The servers a benchmark runs (the trained generator archived with a changed model-config.yaml, or a
handler that does nothing) and the HTTP clients that load them."""
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

from scripts import HANDLER_DIR, MODEL_CONFIG, MODEL_NAME, read_model_config
from scripts.archive import build_archive
from scripts.server import TorchServe

from experiments.bench.measure import percentile

JSON, PNG = "application/json", "image/png"
EMPTY_HANDLER = Path(__file__).with_name("empty_handler.py")


def model_config(**changes: object) -> dict:
    """The shipped model-config.yaml with `changes`: top-level keys, or handler={...} for its handler section."""
    config = read_model_config()
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def archive_with(run_dir: Path, tmp: Path, name: str, config: dict) -> Path:
    """A model store holding the trained generator archived with `config` as its model-config.yaml."""
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    store = tmp / name
    build_archive(run_dir / "generator.pt", run_dir / "generator.json", store, model_config=config_file)
    return store


def empty_handler_store(tmp: Path) -> Path:
    store = tmp / "store-empty"
    store.mkdir()
    extra = ",".join(str(path) for path in HANDLER_DIR.glob("*.py"))  # it imports mnist_gan_handler
    subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", MODEL_NAME,
                    "--version", "1.0", "--handler", str(EMPTY_HANDLER), "--extra-files", extra,
                    "--config-file", str(MODEL_CONFIG), "--export-path", str(store)], check=True)
    return store


def post(connection: http.client.HTTPConnection, headers: dict, body: bytes | str,
         path: str = f"/predictions/{MODEL_NAME}") -> tuple[int, bytes]:
    """POSTs one request body on a keep-alive connection (to the digits route, or `path`): (status, body). Not
    `requests`: its own per-call CPU time would be taken from the server on the same two cores."""
    connection.request("POST", path, body=body, headers=headers)
    reply = connection.getresponse()
    return reply.status, reply.read()


def post_count(connection: http.client.HTTPConnection, headers: dict, count: int) -> tuple[int, bytes]:
    return post(connection, headers, json.dumps({"count": count}))


def run_together(client: Callable[[int], None], n_clients: int) -> float:
    """client(0) ... client(n_clients - 1), each in its own thread, all at once; the seconds until the last ends."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def clients(server: TorchServe, n_clients: int, seconds: float, counts: list[int], accept: str = JSON) -> dict:
    """n_clients threads, each with its own keep-alive connection, POSTing for `seconds`."""
    headers = {**server.headers(), "Content-Type": JSON, "Accept": accept}
    answered = (lambda body, count: body.startswith(b"\x89PNG")) if accept == PNG else \
        (lambda body, count: len(body) > count * 784)
    lock, latencies, images, failures = threading.Lock(), [], [0], []
    stop_at = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng, connection = random.Random(seed), None
        while time.perf_counter() < stop_at:
            count = rng.choice(counts)
            started = time.perf_counter()
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=60)
                status, body = post_count(connection, headers, count)
                error = None if status == 200 and answered(body, count) else f"{status}: {body[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error, connection = repr(exc), None  # counted, then a new connection
            elapsed = time.perf_counter() - started
            with lock:
                if error:
                    failures.append(error)
                else:
                    latencies.append(elapsed)
                    images[0] += count
        if connection:
            connection.close()

    wall = run_together(worker, n_clients)
    return dict(images_per_s=images[0] / wall, requests=len(latencies), failures=failures,
                p50_ms=1000 * percentile(latencies, 50) if latencies else float("nan"),
                p99_ms=1000 * percentile(latencies, 99) if latencies else float("nan"))
