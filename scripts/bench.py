"""`make bench`: where serving time goes, measured in one run on this machine.

    python -m scripts.bench --run-dir artifacts

1. the bare generator forward pass at batch 64 (images/s: this machine's limit for the model)
2. the handler in-process (initialize once, handle a count=64 request in a loop)
3. served latency p50/p99 of sequential count=1 requests over loopback HTTP
4. served throughput with 1, 4 and 16 concurrent clients at count=1 and count=64, with 2 workers
5. served throughput with 1 and 2 workers (4 clients, count=64): the per-worker figure for capacity planning
6. a load run: 16 clients for --load-seconds with mixed counts; failures and p50/p99
"""
import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests
import torch

from scripts.archive import build_archive
from scripts.local_handler import LocalHandler, model_dir_from
from scripts.server import TorchServe, free_ports
from train.artifacts import load_generator

JSON = "application/json"
BATCHING_CONFIG = "minWorkers: 2\nmaxWorkers: 2\nbatchSize: 8\nmaxBatchDelay: 1\nresponseTimeout: 30\n"


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of `fn` (which returns how many items it made), after one warm-up call."""
    fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += fn()
    return done / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bare_forward(run_dir: Path, seconds: float) -> float:
    model, _ = load_generator(run_dir / "generator.pt", run_dir / "generator.json")
    noise = torch.randn(64, model.latent_dim)
    labels = torch.arange(64) % model.num_classes if model.num_classes else None

    @torch.inference_mode()
    def step() -> int:
        model(noise, labels)
        return 64

    return rate(step, seconds)


def in_process(run_dir: Path, seconds: float) -> tuple[float, float]:
    """The handler's images/s at count=64, and its p50 latency (ms) for one count=1 request."""
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalHandler(model_dir_from(run_dir, Path(tmp)))

        def step() -> int:
            out = local.handle_raw([{"body": {"count": 64}}], [JSON])
            assert local.context.get_response_status(0)[0] == 200 and len(out[0]) > 100_000
            return 64

        latencies = []
        for _ in range(300):
            started = time.perf_counter()
            local.handle_raw([{"body": {"count": 1}}], [JSON])
            latencies.append(time.perf_counter() - started)
        return rate(step, seconds), 1000 * percentile(latencies, 50)


def clients(server: TorchServe, n_clients: int, seconds: float, counts: list[int]) -> dict:
    """n_clients threads, each with its own keep-alive session, POSTing for `seconds`."""
    headers = {**server.headers(), "Content-Type": JSON}
    lock, latencies, images, failures = threading.Lock(), [], [0], []
    stop_at = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng, session = random.Random(seed), requests.Session()
        while time.perf_counter() < stop_at:
            count = rng.choice(counts)
            started = time.perf_counter()
            try:
                reply = session.post(server.predict_url, data=json.dumps({"count": count}), headers=headers, timeout=60)
                ok = reply.status_code == 200 and len(reply.content) > count * 784
                error = None if ok else f"{reply.status_code}: {reply.text[:100]}"
            except requests.RequestException as exc:
                error = repr(exc)
            elapsed = time.perf_counter() - started
            with lock:
                if error:
                    failures.append(error)
                else:
                    latencies.append(elapsed)
                    images[0] += count

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return dict(images_per_s=images[0] / wall, requests=len(latencies), failures=failures,
                p50_ms=1000 * percentile(latencies, 50) if latencies else float("nan"),
                p99_ms=1000 * percentile(latencies, 99) if latencies else float("nan"))


def sequential_latency(server: TorchServe, n: int, url: str = "", warmup: int = 1500) -> tuple[float, float]:
    """p50/p99 ms of sequential count=1 POSTs (or GETs of `url`), after `warmup` requests for the JVM's JIT."""
    session, headers = requests.Session(), {**server.headers(), "Content-Type": JSON}
    body = json.dumps({"count": 1})

    def call() -> requests.Response:
        return session.get(url, headers=headers) if url else session.post(server.predict_url, data=body, headers=headers)

    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        reply = call()
        latencies.append(time.perf_counter() - started)
        assert reply.status_code == 200
    return 1000 * percentile(latencies, 50), 1000 * percentile(latencies, 99)


def scale_workers(server: TorchServe, workers: int) -> None:
    reply = requests.put(f"{server.management_url}/models/mnist_gan",
                         params=dict(min_worker=workers, max_worker=workers, synchronous="true"),
                         headers=server.headers("management"), timeout=120)
    reply.raise_for_status()
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a TorchServe worker (handler: GAN_WORKER_THREADS=1)

    lines, results = [], {}
    bare = bare_forward(args.run_dir, args.seconds)
    handler, handler_p50 = in_process(args.run_dir, args.seconds)
    print(f"bare forward {bare:.0f} img/s, handler {handler:.0f} img/s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_archive(args.run_dir / "generator.pt", args.run_dir / "generator.json", Path(tmp) / "store").parent
        with TorchServe(Path(tmp) / "ts", store, ports=tuple(free_ports(4))) as server:
            p50, p99 = sequential_latency(server, 300)
            ping_p50, _ = sequential_latency(server, 300, url=f"{server.inference_url}/ping")
            for n_clients in (1, 4, 16):
                for count in (1, 64):
                    results[(2, n_clients, count)] = clients(server, n_clients, args.seconds, [count])
            load = clients(server, 16, args.load_seconds, [1, 1, 4, 16, 64, 256])
            scale_workers(server, 1)
            results[(1, 4, 64)] = clients(server, 4, args.seconds, [64])
        # The same with TorchServe's server-side batching (up to 8 requests per handler call).
        batching_config = Path(tmp) / "model-config.yaml"
        batching_config.write_text(BATCHING_CONFIG)
        store_b = Path(tmp) / "store-batching"
        build_archive(args.run_dir / "generator.pt", args.run_dir / "generator.json", store_b, model_config=batching_config)
        with TorchServe(Path(tmp) / "ts-batching", store_b, ports=tuple(free_ports(4))) as server:
            batched_p50, batched_p99 = sequential_latency(server, 300, warmup=300)
            batched = {count: clients(server, 16, args.seconds, [count]) for count in (1, 64)}
    served = results[(2, 4, 64)]["images_per_s"]
    lines += [
        "| measurement | result | ratio |", "|---|---:|---:|",
        f"| bare generator forward, batch 64, 1 thread | {bare:,.0f} images/s | 1.00 |",
        f"| handler in-process, count=64 (noise + forward + JSON) | {handler:,.0f} images/s | handler ÷ bare = {handler / bare:.2f} |",
        f"| served, 4 clients, count=64, 2 workers | {served:,.0f} images/s | served ÷ handler = {served / handler:.2f} |",
        f"| served latency, sequential count=1 (after 1,500 warm-up requests) | p50 {p50:.2f} ms, p99 {p99:.2f} ms | |",
        f"| of which: the handler in-process, count=1 | p50 {handler_p50:.2f} ms | |",
        f"| of which: TorchServe's frontend alone (`GET /ping`, no worker) | p50 {ping_p50:.2f} ms | |",
        "", "| workers | clients | count | images/s | requests/s | p50 ms | p99 ms | failed |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (workers, n_clients, count), r in sorted(results.items()):
        lines.append(f"| {workers} | {n_clients} | {count} | {r['images_per_s']:,.0f} | {r['requests'] / args.seconds:,.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {len(r['failures'])} |")
    lines += ["", f"Server-side batching (batchSize 8, maxBatchDelay 1 ms, 2 workers): sequential count=1 p50 "
              f"{batched_p50:.2f} ms, p99 {batched_p99:.2f} ms; 16 clients count=1: {batched[1]['images_per_s']:,.0f} "
              f"images/s (without batching {results[(2, 16, 1)]['images_per_s']:,.0f}); 16 clients count=64: "
              f"{batched[64]['images_per_s']:,.0f} images/s (without {results[(2, 16, 64)]['images_per_s']:,.0f})."]
    lines += ["", f"Load: 16 clients for {args.load_seconds:.0f} s, counts drawn from 1, 1, 4, 16, 64, 256: "
              f"{load['requests']:,} requests, {len(load['failures'])} failed, p50 {load['p50_ms']:.1f} ms, "
              f"p99 {load['p99_ms']:.1f} ms, {load['images_per_s']:,.0f} images/s."]
    one, two = results[(1, 4, 64)]["images_per_s"], served
    lines += [f"Scaling: 1 worker {one:,.0f} images/s, 2 workers {two:,.0f} images/s (×{two / one:.2f}) on 2 cores."]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    if load["failures"]:
        print(f"load run: {len(load['failures'])} failures, e.g. {load['failures'][:3]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
