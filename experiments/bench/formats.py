"""The answer's formats: count=64 as JSON against PNG (Accept: image/png), in-process and served."""
from experiments.bench.measure import percentile, rate, ratio, throughput_turns
from experiments.bench.servers import JSON, PNG, clients
from experiments.bench.throughput import handler_step
from experiments.local_handler import LocalHandler
from experiments.report import table
from scripts.server import TorchServe


def report(local: LocalHandler, server: TorchServe, seconds: float, rounds: int) -> str:
    """Images/s of each format, in-process and served (4 clients), taking turns; the size of each answer."""
    steps = {accept: handler_step(local, accept) for accept in (JSON, PNG)}
    for step in steps.values():
        rate(step, 0.5)
    turns = throughput_turns({
        **{f"handler {accept}": lambda step=step: rate(step, seconds, warmup=0.2) for accept, step in steps.items()},
        **{f"served {accept}": lambda accept=accept: clients(server, 4, seconds, [64], accept)["images_per_s"]
           for accept in (JSON, PNG)},
    }, rounds=rounds)
    sizes = {accept: len(local.request(b'{"count": 64, "seed": 0}', accept=accept).body) for accept in (JSON, PNG)}
    rows = [(accept, f"{sizes[accept]:,} bytes", f"{percentile(turns[f'handler {accept}'], 50):,.0f} images/s",
             f"{percentile(turns[f'served {accept}'], 50):,.0f} images/s") for accept in (JSON, PNG)]
    return "\n".join([
        table(["format (count=64)", "answer size", "handler in-process", "served, 4 clients"], rows), "",
        f"PNG ÷ JSON: in-process {ratio(turns[f'handler {PNG}'], turns[f'handler {JSON}'])}, "
        f"served {ratio(turns[f'served {PNG}'], turns[f'served {JSON}'])}; answer size {sizes[PNG] / sizes[JSON]:.3f}."])
