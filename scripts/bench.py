"""`make bench`: where serving time goes, measured in one run on this machine.

    python -m scripts.bench --run-dir artifacts

1. the bare generator forward pass at batch 64 (images/s: this machine's limit for the model), in ONNX
   Runtime (what the handler runs on a CPU) and in PyTorch
2. the handler in-process (initialize once, handle a count=64 request in a loop); 1, 2 and the
   served count=64 throughput of (4) take turns in rounds, and the ratios are per round
3. served latency p50/p99 of sequential count=1 requests over loopback HTTP (rounds at the start and
   the end of the run), with where the time goes:
   TorchServe alone (`GET /ping`), TorchServe's round trip to a worker whose handler does nothing,
   and the handler with PyTorch instead of ONNX Runtime
4. served throughput with 1, 4 and 16 concurrent clients at count=1 and count=64, with 1 and 2 workers
5. a load run: 16 clients for --load-seconds with mixed counts; failures and p50/p99
6. TorchServe's server-side batching against none
7. the answer's formats: count=64 as JSON against PNG (Accept: image/png), in-process and served,
   taking turns, and the size of each answer (`--only formats` runs just this part)
"""
import argparse
import http.client
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from scripts.archive import HANDLER_DIR, build_archive
from scripts.local_handler import LocalHandler, unpack_archive
from scripts import MODEL_NAME
from scripts.server import TorchServe, free_ports
from handler.generator import onnx_feeds
from train.artifacts import load_generator

JSON, PNG = "application/json", "image/png"
SHIPPED_CONFIG = HANDLER_DIR / "model-config.yaml"
# A handler that does nothing (as quiet as ours): what is left is TorchServe's own round trip.
EMPTY_HANDLER = """from mnist_gan_handler import set_request_logs

set_request_logs(False)


def handle(data, context):
    return None if data is None else [b"{}" for _ in data]
"""


def model_config(**changes: object) -> str:
    """The shipped model-config.yaml with top-level `changes` (e.g. minWorkers=1)."""
    lines = SHIPPED_CONFIG.read_text().splitlines()
    for key, value in changes.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]
    return "\n".join(lines) + "\n"


def archive_with(run_dir: Path, tmp: Path, name: str, config: str) -> Path:
    """A model store holding the trained generator archived with `config` as its model-config.yaml."""
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(config)
    store = tmp / name
    build_archive(run_dir / "generator.pt", run_dir / "generator.json", store, model_config=config_file)
    return store


def empty_handler_store(tmp: Path) -> Path:
    handler = tmp / "empty_handler.py"
    handler.write_text(EMPTY_HANDLER)
    store = tmp / "store-empty"
    store.mkdir()
    extra = ",".join(str(path) for path in HANDLER_DIR.glob("*.py"))  # it imports mnist_gan_handler
    subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", MODEL_NAME,
                    "--version", "1.0", "--handler", str(handler), "--extra-files", extra,
                    "--config-file", str(SHIPPED_CONFIG), "--export-path", str(store)], check=True)
    return store


def rate(fn: Callable[[], int], seconds: float, warmup: float = 2.0) -> float:
    """Items per second of `fn` (which returns how many items it made), after `warmup` seconds of calls
    (oneDNN's first calls at a new shape run up to twice as slow: measured)."""
    started = time.perf_counter()
    while time.perf_counter() - started < warmup:
        fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += fn()
    return done / (time.perf_counter() - started)


def host_speed_ms() -> float:
    """Median ms of a fixed pure-Python loop: this VM's CPU speed right now. Other tenants on the
    host change it by up to 1.6x within minutes (measured 3.9 to 6.5 ms), and latency with it."""
    def loop() -> float:
        started, total = time.perf_counter(), 0
        for i in range(100_000):
            total += i
        return time.perf_counter() - started

    return 1000 * percentile([loop() for _ in range(20)], 50)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bare_forward_steps(run_dir: Path, local: LocalHandler) -> dict[str, Callable[[], int]]:
    """One forward pass of the bare generator at batch 64: in ONNX Runtime (the handler's own session,
    what it serves with on a CPU) and in PyTorch."""
    model, _ = load_generator(run_dir / "generator.pt", run_dir / "generator.json")
    noise = torch.randn(64, model.latent_dim)
    labels = torch.arange(64) % model.num_classes if model.num_classes else None
    feeds = onnx_feeds(noise, labels)

    def onnx_step() -> int:
        local.handler.session.run(None, feeds)
        return 64

    @torch.inference_mode()
    def torch_step() -> int:
        model(noise, labels)
        return 64

    return {"bare": onnx_step, "bare_torch": torch_step}


def handler_step(local: LocalHandler, accept: str = JSON) -> Callable[[], int]:
    """One count=64 request through the handler in-process."""
    def step() -> int:
        reply = local.request(b'{"count": 64}', accept=accept)
        assert reply.status == 200 and reply.content_type == accept
        return 64

    return step


def count_one_latency(local: LocalHandler, gap: float) -> float:
    """p50 ms of one count=1 request through the handler in-process, with `gap` seconds of other
    work between calls (3 ms: as between served requests, caches gone cold)."""
    latencies = []
    for _ in range(1300):  # the first 300 warm up
        other_work_until = time.perf_counter() + gap
        scratch = [0] * 1000
        while time.perf_counter() < other_work_until:
            scratch = [x + 1 for x in scratch]
        started = time.perf_counter()
        local.request(b'{"count": 1}')
        latencies.append(time.perf_counter() - started)
    return 1000 * percentile(latencies[300:], 50)


def post_count(connection: http.client.HTTPConnection, headers: dict, count: int) -> tuple[int, bytes]:
    """POSTs {"count": count} on a keep-alive connection: (status, body). The `requests` library
    would add about 1 ms per call here, and 3 ms reading a count=64 body (measured), CPU time that
    the clients take from the server on 2 cores."""
    connection.request("POST", f"/predictions/{MODEL_NAME}", body=json.dumps({"count": count}), headers=headers)
    reply = connection.getresponse()
    return reply.status, reply.read()


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


class Ratio(NamedTuple):
    """numerator ÷ denominator: the median of the per-round ratios, and their range."""
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} (rounds {self.low:.2f}-{self.high:.2f})"


def throughput_turns(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Every measurement once per round, in turn, so that a ratio of two comes from the same minute
    (this host's speed drifts by up to 1.8x within minutes: measured)."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def ratio(numerators: list[float], denominators: list[float]) -> Ratio:
    per_round = [a / b for a, b in zip(numerators, denominators)]
    return Ratio(percentile(per_round, 50), min(per_round), max(per_round))


class Latency(NamedTuple):
    """ms of sequential requests: p50, p99, and the p50 of each round in order."""
    p50: float
    p99: float
    rounds: list[float]

    @property
    def low(self) -> float:
        return min(self.rounds)

    @property
    def high(self) -> float:
        return max(self.rounds)


def latency_turns(servers: dict[str, tuple[TorchServe, str]], rounds: int, block: int = 250,
                  warmup: int = 1500) -> dict[str, list[list[float]]]:
    """Seconds per sequential request, per server and round, the servers taking turns in blocks.

    This machine's speed drifts by tens of percent over minutes (other tenants on the host);
    taking turns exposes every server to the same drift, so their differences are real.
    """
    calls, samples = {}, {name: [] for name in servers}
    for name, (server, path) in servers.items():
        connection = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=30)
        headers = {**server.headers(), "Content-Type": JSON}

        def call(connection=connection, headers=headers, path=path) -> int:
            if not path:
                return post_count(connection, headers, 1)[0]
            connection.request("GET", path, headers=headers)
            reply = connection.getresponse()
            reply.read()
            return reply.status

        calls[name] = call
        for _ in range(warmup):  # the JVM's JIT compiles the request path
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            this_round = []
            for _ in range(block):
                started = time.perf_counter()
                status = call()
                this_round.append(time.perf_counter() - started)
                assert status == 200, (name, status)
            samples[name].append(this_round)
    return samples


def summarize(rounds: list[list[float]]) -> Latency:
    every = [value for one_round in rounds for value in one_round]
    return Latency(1000 * percentile(every, 50), 1000 * percentile(every, 99),
                   [1000 * percentile(one_round, 50) for one_round in rounds])


def formats_report(local: LocalHandler, server: TorchServe, seconds: float, rounds: int) -> list[str]:
    """count=64 as JSON against PNG: in-process and served (4 clients), taking turns; answer sizes."""
    steps = {accept: handler_step(local, accept) for accept in (JSON, PNG)}
    for step in steps.values():
        rate(step, 0.5)
    turns = throughput_turns({
        **{f"handler {accept}": lambda step=step: rate(step, seconds, warmup=0.2) for accept, step in steps.items()},
        **{f"served {accept}": lambda accept=accept: clients(server, 4, seconds, [64], accept)["images_per_s"]
           for accept in (JSON, PNG)},
    }, rounds=rounds)
    sizes = {accept: len(local.request(b'{"count": 64, "seed": 0}', accept=accept).body) for accept in (JSON, PNG)}
    lines = [f"Answer formats, count=64 (medians of {rounds} rounds of {seconds:.0f} s, taking turns; ratios per round):", "",
             "| format | answer size | handler in-process | served, 4 clients |", "|---|---:|---:|---:|"]
    for accept in (JSON, PNG):
        lines.append(f"| {accept} | {sizes[accept]:,} bytes | {percentile(turns[f'handler {accept}'], 50):,.0f} images/s | "
                     f"{percentile(turns[f'served {accept}'], 50):,.0f} images/s |")
    lines += ["", f"PNG ÷ JSON: in-process {ratio(turns[f'handler {PNG}'], turns[f'handler {JSON}'])}, "
              f"served {ratio(turns[f'served {PNG}'], turns[f'served {JSON}'])}; size {sizes[PNG] / sizes[JSON]:.3f}."]
    return lines


def formats_only(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = archive_with(args.run_dir, tmp, "store", model_config())
        local = LocalHandler(unpack_archive(store / f"{MODEL_NAME}.mar", tmp / "model-dir"))
        with TorchServe(tmp / "ts", store, ports=tuple(free_ports(4))) as server:
            clients(server, 4, 2.0, [64])  # warm-up
            return "\n".join(formats_report(local, server, args.seconds, args.rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns of bare, handler and served throughput")
    parser.add_argument("--latency-rounds", type=int, default=8, help="count=1 latency turns: half first, half last")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench.md"))
    parser.add_argument("--only", choices=["formats"], help="run one part of the benchmark")
    args = parser.parse_args()
    if args.only == "formats":
        report = formats_only(args)
        print(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
        return
    torch.set_num_threads(1)  # as in a TorchServe worker (handler: GAN_WORKER_THREADS=1)
    shipped = int(re.search(r"^minWorkers: *(\d+)", SHIPPED_CONFIG.read_text(), re.M).group(1))
    other = 3 - shipped  # 1 or 2 workers on 2 cores

    speed_before = host_speed_ms()
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stores = {n: archive_with(args.run_dir, tmp, f"store-{n}w", model_config(minWorkers=n, maxWorkers=n))
                  for n in (shipped, other)}
        local = LocalHandler(unpack_archive(stores[shipped] / f"{MODEL_NAME}.mar", tmp / "model-dir"))
        handler_p50, handler_cold_p50 = count_one_latency(local, 0.0), count_one_latency(local, 0.003)
        stores["batching"] = archive_with(args.run_dir, tmp, "store-batching", model_config(batchSize=8, maxBatchDelay=1))
        torch_config = model_config().replace("runtime: onnxruntime", "runtime: torch")
        assert "runtime: torch" in torch_config, "handler/model-config.yaml no longer says `runtime: onnxruntime`"
        stores["torch"] = archive_with(args.run_dir, tmp, "store-torch", torch_config)
        stores["empty"] = empty_handler_store(tmp)
        # All up at once, so the latency turns see the same machine; an idle server costs no CPU, and
        # the warm-up requests leave every JVM compiled for the throughput runs that follow.
        with ExitStack() as running:
            up = {name: running.enter_context(TorchServe(tmp / f"ts-{name}", store, ports=tuple(free_ports(4))))
                  for name, store in stores.items()}
            turn_servers = {"shipped": (up[shipped], ""), "other": (up[other], ""), "torch": (up["torch"], ""),
                            "batching": (up["batching"], ""),
                            "empty": (up["empty"], ""), "ping": (up["empty"], "/ping")}
            early_turns = latency_turns(turn_servers, rounds=args.latency_rounds // 2)
            speed_after = host_speed_ms()
            steps = {**bare_forward_steps(args.run_dir, local), "handler": handler_step(local)}
            for step in steps.values():
                rate(step, 0.5)  # warm-up
            clients(up[shipped], 4, 2.0, [64])
            turns = throughput_turns({
                **{name: lambda step=step: rate(step, args.seconds, warmup=0.2) for name, step in steps.items()},
                "served": lambda: clients(up[shipped], 4, args.seconds, [64])["images_per_s"],
            }, rounds=args.rounds)
            for n in (shipped, other):
                for n_clients in (1, 4, 16):
                    for count in (1, 64):
                        results[(n, n_clients, count)] = clients(up[n], n_clients, args.seconds, [count])
            load = clients(up[shipped], 16, args.load_seconds, [1, 1, 4, 16, 64, 256])
            formats = formats_report(local, up[shipped], args.seconds, args.rounds)
            batched = {count: clients(up["batching"], 16, args.seconds, [count]) for count in (1, 64)}
            # More latency rounds minutes later, so the figure samples more than one state of the host.
            late_turns = latency_turns(turn_servers, rounds=args.latency_rounds - args.latency_rounds // 2, warmup=100)
            latency = {name: summarize(early_turns[name] + late_turns[name]) for name in turn_servers}
            speed_end = host_speed_ms()

    bare, handler, served = (percentile(turns[name], 50) for name in ("bare", "handler", "served"))
    mine, alt = latency["shipped"], latency["other"]
    shipped_workers, other_workers = (f"{n} worker{'s' * (n > 1)}" for n in (shipped, other))
    lines = [
        f"Throughput: medians of {args.rounds} rounds of {args.seconds:.0f} s, bare (both runtimes), handler and served taking turns; "
        "a ratio is the median of the per-round ratios.", "",
        "| measurement | result | ratio |", "|---|---:|---:|",
        f"| bare generator forward in ONNX Runtime (what the handler runs on a CPU), batch 64, 1 thread | {bare:,.0f} images/s | 1.00 |",
        f"| the same in PyTorch | {percentile(turns['bare_torch'], 50):,.0f} images/s | "
        f"ONNX Runtime ÷ PyTorch = {ratio(turns['bare'], turns['bare_torch'])} |",
        f"| handler in-process, count=64 (noise + forward + JSON) | {handler:,.0f} images/s | "
        f"handler ÷ bare = {ratio(turns['handler'], turns['bare'])} |",
        f"| served, 4 clients, count=64, {shipped_workers} (shipped) | {served:,.0f} images/s | "
        f"served ÷ handler = {ratio(turns['served'], turns['handler'])} |",
        f"| served latency, sequential count=1, {shipped_workers} (shipped) | p50 {mine.p50:.2f} ms "
        f"(rounds {mine.low:.2f}-{mine.high:.2f}), p99 {mine.p99:.2f} ms | |",
        f"| the same with {other_workers} | p50 {alt.p50:.2f} ms (rounds {alt.low:.2f}-{alt.high:.2f}), p99 {alt.p99:.2f} ms | |",
        f"| the same with `handler: runtime: torch` (PyTorch instead of ONNX Runtime), {shipped_workers} | p50 {latency['torch'].p50:.2f} ms "
        f"(rounds {latency['torch'].low:.2f}-{latency['torch'].high:.2f}), p99 {latency['torch'].p99:.2f} ms | |",
        f"| of which: TorchServe with a handler that does nothing | p50 {latency['empty'].p50:.2f} ms | |",
        f"| of which: TorchServe's frontend alone (`GET /ping`, no worker) | p50 {latency['ping'].p50:.2f} ms | |",
        f"| the handler in-process, count=1, back to back | p50 {handler_p50:.2f} ms | |",
        f"| the handler in-process, count=1, 3 ms of other work between calls (cold caches) | p50 {handler_cold_p50:.2f} ms | |",
        "", f"Latency: {args.latency_rounds} rounds of 250 sequential count=1 requests per server, the servers taking turns, "
        f"half of the rounds before the throughput runs and half after the load run. Per-round p50 of the shipped "
        f"{shipped_workers}, in order: {', '.join(f'{v:.2f}' for v in mine.rounds)} ms; of the {other_workers}: "
        f"{', '.join(f'{v:.2f}' for v in alt.rounds)} ms.",
        "", "| workers | clients | count | images/s | requests/s | p50 ms | p99 ms | failed |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (workers, n_clients, count), r in sorted(results.items()):
        lines.append(f"| {workers} | {n_clients} | {count} | {r['images_per_s']:,.0f} | {r['requests'] / args.seconds:,.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {len(r['failures'])} |")
    lines += ["", f"Server-side batching (batchSize 8, maxBatchDelay 1 ms, {shipped_workers}): "
              f"sequential count=1 p50 {latency['batching'].p50:.2f} ms, p99 {latency['batching'].p99:.2f} ms; "
              f"16 clients count=1: {batched[1]['images_per_s']:,.0f} images/s (without batching "
              f"{results[(shipped, 16, 1)]['images_per_s']:,.0f}); 16 clients count=64: "
              f"{batched[64]['images_per_s']:,.0f} images/s (without {results[(shipped, 16, 64)]['images_per_s']:,.0f})."]
    lines += ["", f"Load: 16 clients for {args.load_seconds:.0f} s, counts drawn from 1, 1, 4, 16, 64, 256: "
              f"{load['requests']:,} requests, {len(load['failures'])} failed, p50 {load['p50_ms']:.1f} ms, "
              f"p99 {load['p99_ms']:.1f} ms, {load['images_per_s']:,.0f} images/s."]
    lines += ["", f"Host speed (a fixed Python loop; lower is faster, 3.9 ms on a quiet host, 6.5 ms on a busy one): "
              f"{speed_before:.1f} ms at the start, {speed_after:.1f} ms after the first latency turns, {speed_end:.1f} ms at the end."]
    lines += [""] + formats
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    if load["failures"]:
        print(f"load run: {len(load['failures'])} failures, e.g. {load['failures'][:3]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
