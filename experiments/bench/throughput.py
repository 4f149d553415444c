"""Throughput: the bare generator, the handler in-process and the served model, in images/s."""
from pathlib import Path
from typing import Callable

import torch

from experiments.bench.servers import JSON
from experiments.local_handler import LocalHandler
from handler.generator import onnx_feeds, sample_latent
from train.artifacts import load_run


def bare_forward_steps(run_dir: Path, local: LocalHandler) -> dict[str, Callable[[], int]]:
    """One forward pass of the bare generator at batch 64: in ONNX Runtime (the handler's own session,
    what it serves with on a CPU) and in PyTorch."""
    model, _ = load_run(run_dir)
    noise, labels = sample_latent(model, 64, torch.Generator().manual_seed(0))
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
