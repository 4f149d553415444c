"""`make bench`: where serving time goes, measured in one run on this machine; writes docs/serving.md.

    python -m experiments.bench --run-dir artifacts --data-dir data [--only formats|hand]

1. throughput (throughput.py): the bare generator at batch 64 in ONNX Runtime (what the handler runs on
   a CPU) and in PyTorch, the handler in-process, and the served model with 4 clients, taking turns in
   rounds so that each ratio comes from the same minute
2. count=1 latency (latency.py): sequential requests over keep-alive HTTP to the shipped server, one with
   the other worker count, one with PyTorch, one with server-side batching, one whose handler does
   nothing, and TorchServe's /ping, taking turns (rounds at the start and the end of the run)
3. served throughput with 1, 4 and 16 clients at count=1 and count=64, with 1 and 2 workers, and a load
   run of mixed counts; server-side batching against none
4. the answer's formats (formats.py): count=64 as JSON against PNG
5. a hand (hand.py): a photo of a 4-digit number writing 5 digits against the same number in a seed's hand
6. hands beside plain requests (isolation.py): one client asking for numbers while 0, 2 and 8 others upload hands
"""
import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch

from experiments.bench import formats, hand, isolation, latency
from experiments.bench.measure import host_speed_ms, percentile, rate, ratio, summarize, throughput_turns
from experiments.bench.servers import archive_with, clients, empty_handler_store, model_config
from experiments.bench.throughput import bare_forward_steps, handler_step
from experiments.local_handler import LocalHandler, unpack_archive
from experiments.report import DOCS, table, write_page, write_section
from train.data import load_mnist
from scripts import MODEL_NAME, hand_route
from scripts.server import TorchServe, free_ports

PAGE = DOCS / "serving.md"


def workers_label(n: int) -> str:
    return f"{n} worker{'s' * (n > 1)}"


def hand_uploads(args: argparse.Namespace) -> list[bytes]:
    """--uploads photos of numbers of real test digits, each writing hand.NUMBER."""
    images, labels = load_mnist(args.data_dir, train=False)
    return hand.number_photos(images, labels, args.uploads)


def isolation_section(server: TorchServe, args: argparse.Namespace) -> str:
    """Hands beside plain requests: every real test digit an upload of its own, as the hand clients need them."""
    images, labels = load_mnist(args.data_dir, train=False)
    results = isolation.measure(server.ports[0], f"/predictions/{MODEL_NAME}", f"/predictions/{hand_route()}",
                                server.headers(), isolation.digit_uploads(images, labels), args.isolation_seconds)
    return (f"One client asks for `{{\"digits\": \"{isolation.PLAIN_NUMBER}\", \"seed\": s}}` back to back (a new seed "
            f"each time, in a process of its own) for {args.isolation_seconds:.0f} s, while 0, 2 and 8 other clients "
            f"upload hands back to back (`{{\"hand\": {{\"image\": <28 x 28>, \"digit\": d}}, \"digits\": "
            f"\"{isolation.PLAIN_NUMBER}\"}}`, every real test digit once: no upload is seen twice). The hands go to "
            f"their own route, whose queue and workers (at a low CPU priority) are their own.\n\n"
            + isolation.report(results))


def run_one(args: argparse.Namespace) -> str:
    """--only formats, hand or isolation: that section, against one server of the shipped configuration."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = archive_with(args.run_dir, tmp, "store", model_config())
        local = LocalHandler(unpack_archive(store / f"{MODEL_NAME}.mar", tmp / "model-dir"))
        with TorchServe(tmp / "ts", store, ports=tuple(free_ports(4))) as server:
            if args.only == "hand":
                return "## A hand\n\n" + hand.report(server, hand_uploads(args), args.rounds, args.seconds,
                                                      model_config()["minWorkers"])
            if args.only == "isolation":
                return "## Hands beside plain requests\n\n" + isolation_section(server, args)
            clients(server, 4, 2.0, [64])  # warm-up
            return "## Answer formats\n\n" + formats.report(local, server, args.seconds, args.rounds)


def run_all(args: argparse.Namespace) -> str:
    shipped = model_config()["minWorkers"]
    other = 1 if shipped > 1 else 2  # the shipped worker count against another
    speed = [host_speed_ms()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stores = {n: archive_with(args.run_dir, tmp, f"store-{n}w", model_config(minWorkers=n, maxWorkers=n))
                  for n in (shipped, other)}
        local = LocalHandler(unpack_archive(stores[shipped] / f"{MODEL_NAME}.mar", tmp / "model-dir"))
        in_process = latency.in_process_p50(local, 0.0), latency.in_process_p50(local, 0.003)
        stores["batching"] = archive_with(args.run_dir, tmp, "store-batching", model_config(batchSize=8, maxBatchDelay=1))
        stores["torch"] = archive_with(args.run_dir, tmp, "store-torch", model_config(handler={"runtime": "torch"}))
        stores["empty"] = empty_handler_store(tmp)
        # All up at once, so the latency turns see the same machine; an idle server costs no CPU, and
        # the warm-up requests leave every JVM compiled for the throughput runs that follow.
        with ExitStack() as running:
            up = {name: running.enter_context(TorchServe(tmp / f"ts-{name}", store, ports=tuple(free_ports(4))))
                  for name, store in stores.items()}
            turn_servers = {"shipped": (up[shipped], ""), "other": (up[other], ""), "torch": (up["torch"], ""),
                            "batching": (up["batching"], ""), "empty": (up["empty"], ""), "ping": (up["empty"], "/ping")}
            early = latency.turns(turn_servers, rounds=args.latency_rounds // 2)
            speed.append(host_speed_ms())
            steps = {**bare_forward_steps(args.run_dir, local), "handler": handler_step(local)}
            for step in steps.values():
                rate(step, 0.5)  # warm-up
            clients(up[shipped], 4, 2.0, [64])
            turns = throughput_turns({
                **{name: lambda step=step: rate(step, args.seconds, warmup=0.2) for name, step in steps.items()},
                "served": lambda: clients(up[shipped], 4, args.seconds, [64])["images_per_s"],
            }, rounds=args.rounds)
            grid = {(n, n_clients, count): clients(up[n], n_clients, args.seconds, [count])
                    for n in (shipped, other) for n_clients in (1, 4, 16) for count in (1, 64)}
            load = clients(up[shipped], 16, args.load_seconds, [1, 1, 4, 16, 64, 256])
            formats_section = formats.report(local, up[shipped], args.seconds, args.rounds)
            hand_section = hand.report(up[shipped], hand_uploads(args), args.rounds, args.seconds, shipped)
            isolation_text = isolation_section(up[shipped], args)
            batched = {count: clients(up["batching"], 16, args.seconds, [count]) for count in (1, 64)}
            # More latency rounds minutes later, so the figure samples more than one state of the host.
            late = latency.turns(turn_servers, rounds=args.latency_rounds - args.latency_rounds // 2, warmup=100)
            measured = {name: summarize(early[name] + late[name]) for name in turn_servers}
            speed.append(host_speed_ms())
    for what, result in [("load run", load), *((f"{n_clients} clients, count={count}", r)
                                               for (_, n_clients, count), r in grid.items()),
                         *((f"batching, count={count}", r) for count, r in batched.items())]:
        if result["failures"]:  # a failure is not a slow answer: the figures would hide it
            raise SystemExit(f"{what}: {len(result['failures'])} request(s) failed, e.g. {result['failures'][:3]}")

    bare, handler, served = (percentile(turns[name], 50) for name in ("bare", "handler", "served"))
    labels = {"shipped": f"{workers_label(shipped)} (shipped)", "other": workers_label(other),
              "torch": f"`handler: runtime: torch` (PyTorch), {workers_label(shipped)}",
              "batching": f"server-side batching (batchSize 8, maxBatchDelay 1 ms), {workers_label(shipped)}",
              "empty": "TorchServe with a handler that does nothing", "ping": "TorchServe's frontend alone (`GET /ping`)"}
    throughput_rows = [
        ("bare generator forward in ONNX Runtime, batch 64, 1 thread", f"{bare:,.0f} images/s", "1.00"),
        ("the same in PyTorch", f"{percentile(turns['bare_torch'], 50):,.0f} images/s",
         f"ONNX Runtime ÷ PyTorch = {ratio(turns['bare'], turns['bare_torch'])}"),
        ("handler in-process, count=64 (noise + forward + JSON)", f"{handler:,.0f} images/s",
         f"handler ÷ bare = {ratio(turns['handler'], turns['bare'])}"),
        (f"served, 4 clients, count=64, {labels['shipped']}", f"{served:,.0f} images/s",
         f"served ÷ handler = {ratio(turns['served'], turns['handler'])}"),
    ]
    grid_rows = [(workers, n_clients, count, f"{r['images_per_s']:,.0f}", f"{r['requests'] / args.seconds:,.0f}",
                  f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", len(r["failures"]))
                 for (workers, n_clients, count), r in sorted(grid.items())]
    return "\n".join([
        f"On this machine (1 thread per measurement process, as in a TorchServe worker), "
        f"host speed (a fixed Python loop; lower is faster) {speed[0]:.1f} ms at the start, {speed[1]:.1f} ms "
        f"after the first latency turns, {speed[2]:.1f} ms at the end.", "",
        "## Throughput", "",
        f"Medians of {args.rounds} rounds of {args.seconds:.0f} s, taking turns; a ratio is the median of the per-round ratios.", "",
        table(["measurement", "result", "ratio"], throughput_rows), "",
        "## count=1 latency", "",
        f"{args.latency_rounds} rounds of 250 sequential requests per server, the servers taking turns, half of the rounds "
        "before the throughput runs and half after the load run.", "",
        table(["measurement", "result"], latency.report(measured, labels, in_process)), "",
        "## Workers and clients", "",
        table(["workers", "clients", "count", "images/s", "requests/s", "p50 ms", "p99 ms", "failed"], grid_rows, 0), "",
        f"Server-side batching, 16 clients: count=1 {batched[1]['images_per_s']:,.0f} images/s (without "
        f"{grid[(shipped, 16, 1)]['images_per_s']:,.0f}); count=64 {batched[64]['images_per_s']:,.0f} images/s "
        f"(without {grid[(shipped, 16, 64)]['images_per_s']:,.0f}).", "",
        f"Load: 16 clients for {args.load_seconds:.0f} s, counts drawn from 1, 1, 4, 16, 64, 256: {load['requests']:,} "
        f"requests, {len(load['failures'])} failed, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
        f"{load['images_per_s']:,.0f} images/s.", "",
        "## Answer formats", "", formats_section, "",
        "## A hand", "", hand_section, "",
        "## Hands beside plain requests", "", isolation_text])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns of bare, handler and served throughput")
    parser.add_argument("--latency-rounds", type=int, default=8, help="count=1 latency turns: half first, half last")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--only", choices=["formats", "hand", "isolation"], help="run one part of the benchmark")
    parser.add_argument("--isolation-seconds", type=float, default=20.0,
                        help="each run of hands beside plain requests (0, 2 and 8 hand clients)")
    parser.add_argument("--data-dir", default="data", help="MNIST: the test digits that the hand section uploads")
    parser.add_argument("--uploads", type=int, default=400,
                        help="different photos the hand section sends (10 warm up, half the rest each for p50 and images/s)")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a TorchServe worker (handler: GAN_WORKER_THREADS=1)
    body = run_one(args) if args.only else run_all(args)
    print(body)
    if args.only:  # the rest of the page keeps its last full run's figures
        write_section(args.out, "Serving speed", "make bench", body)
    else:
        write_page(args.out, "Serving speed", "make bench", body)
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
