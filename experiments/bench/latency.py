"""count=1 latency: sequential requests to servers taking turns over keep-alive connections, and the
handler in-process, back to back and with cold caches."""
import http.client
import time

from experiments.bench.measure import Latency, percentile
from experiments.bench.servers import JSON, post_count
from experiments.local_handler import LocalHandler
from scripts.server import TorchServe


def in_process_p50(local: LocalHandler, gap: float) -> float:
    """p50 ms of one count=1 request through the handler in-process, with `gap` seconds of other work
    between calls (as between served requests, caches gone cold)."""
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


def turns(servers: dict[str, tuple[TorchServe, str]], rounds: int, block: int = 250,
          warmup: int = 1500) -> dict[str, list[list[float]]]:
    """Seconds per sequential request, per server and round, the servers taking turns in blocks.

    This machine's speed drifts over minutes (other tenants on the host); taking turns exposes every
    server to the same drift, so their differences are real. A server's path "" POSTs count=1; any
    other path is a GET (e.g. /ping).
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


def report(latency: dict[str, Latency], labels: dict[str, str], in_process: tuple[float, float]) -> list[str]:
    """Rows of the results table: each server's p50 (with its rounds' range) and p99, then in-process."""
    rows = [(f"served, sequential count=1, {labels[name]}",
             f"p50 {value.p50:.2f} ms (rounds {value.low:.2f}-{value.high:.2f}), p99 {value.p99:.2f} ms")
            for name, value in latency.items()]
    rows += [("the handler in-process, count=1, back to back", f"p50 {in_process[0]:.2f} ms"),
             ("the handler in-process, count=1, 3 ms of other work between calls", f"p50 {in_process[1]:.2f} ms")]
    return rows
