"""Timing helpers: rates, percentiles, and measurements that take turns so their ratios share a minute."""
import time
from typing import Callable, NamedTuple


def rate(fn: Callable[[], int], seconds: float, warmup: float = 2.0) -> float:
    """Items per second of `fn` (which returns how many items it made), after `warmup` seconds of calls
    (oneDNN's and ONNX Runtime's first calls at a new shape are slower)."""
    started = time.perf_counter()
    while time.perf_counter() - started < warmup:
        fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += fn()
    return done / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def host_speed_ms() -> float:
    """Median ms of a fixed pure-Python loop: this VM's CPU speed right now (other tenants on the host
    change it within minutes, and latency with it)."""
    def loop() -> float:
        started, total = time.perf_counter(), 0
        for i in range(100_000):
            total += i
        return time.perf_counter() - started

    return 1000 * percentile([loop() for _ in range(20)], 50)


class Ratio(NamedTuple):
    """numerator ÷ denominator: the median of the per-round ratios, and their range."""
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} (rounds {self.low:.2f}-{self.high:.2f})"


def ratio(numerators: list[float], denominators: list[float]) -> Ratio:
    per_round = [a / b for a, b in zip(numerators, denominators)]
    return Ratio(percentile(per_round, 50), min(per_round), max(per_round))


def throughput_turns(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Every measurement once per round, in turn, so that a ratio of two comes from the same minute
    (this host's speed drifts within minutes)."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


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


def summarize(rounds: list[list[float]]) -> Latency:
    every = [value for one_round in rounds for value in one_round]
    return Latency(1000 * percentile(every, 50), 1000 * percentile(every, 99),
                   [1000 * percentile(one_round, 50) for one_round in rounds])
