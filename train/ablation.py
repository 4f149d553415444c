"""`make ablation`: the tutorial's improvement steps, each trained and measured.

    python -m train.ablation --data-dir data

Each step changes one thing from the one before (train/config.py). Runs are cached in
artifacts/presets/<step>/ and resumed from their checkpoint if interrupted; the table
(artifacts/ablation.md) uses the metrics of `make evaluate`, with the default model last.
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch

from train import artifacts
from train.config import ABLATION_STEPS, PRESETS, make_config
from train.data import MnistMissing
from train.evaluate import cached_evaluator, generate
from train.train import run

CHANGES = {
    "tutorial-v1": "MLP G(1→200→784) fed one torch.rand number, sigmoid; MSE; SGD 0.01; 1 epoch",
    "tutorial-v2-bce": "BCE loss instead of MSE",
    "tutorial-v3-leaky-layernorm": "LeakyReLU(0.02) + LayerNorm(200) in both; G takes 100 numbers",
    "tutorial-v4-adam": "Adam lr 1e-4 instead of SGD",
    "tutorial-v5-randn": "noise from torch.randn instead of torch.rand",
    "tutorial": "the same for 4 epochs (the `tutorial` preset)",
}


def finished(run_dir: Path, epochs: int) -> bool:
    meta = run_dir / "generator.json"
    return meta.exists() and json.loads(meta.read_text()).get("epochs") == epochs


def train_steps(data_dir: str, root: Path) -> None:
    for name in ABLATION_STEPS:
        run_dir = root / name
        epochs = PRESETS[name]["epochs"]
        if finished(run_dir, epochs):
            print(f"{name}: cached in {run_dir}", file=sys.stderr)
            continue
        resume = (run_dir / "checkpoint.pt").exists()
        run(make_config(name, data_dir=data_dir, out_dir=str(run_dir)), resume=resume)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    root = args.artifacts / "presets"
    try:
        train_steps(args.data_dir, root)
        torch.set_num_threads(2)
        evaluator, _ = cached_evaluator(args.artifacts, args.data_dir)
    except MnistMissing as error:
        raise SystemExit(f"error: {error}")
    real_mean = sum(evaluator.real_pairwise) / 10
    lines = [f"| step | what changed | FID ↓ | Inception Score ↑ | KL to uniform ↓ | pairwise distance (real ≈ {real_mean:.2f}): mean / worst digit | training time | samples |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    runs = [(name, root / name, CHANGES[name]) for name in ABLATION_STEPS]
    runs.append(("default (cdcgan)", args.artifacts, "conditional DCGAN (label-map D, minibatch-stddev, label-blind AC-GAN digit head trained on real digits), batch 128, EMA: the served model"))
    for name, run_dir, change in runs:
        try:
            model, meta = artifacts.load_generator(run_dir / "generator.pt", run_dir / "generator.json")
        except ValueError as error:
            lines.append(f"| {name} | {change} | – | – | – | – | – | missing: {error} |")
            continue
        row = evaluator.row(name, *generate(model))
        minutes = meta["train_seconds"] / 60
        finite = [d for d in row.pairwise if not math.isnan(d)]  # digits it never draws have no distance
        worst = f"{min(finite):.2f}" if len(finite) == 10 else f"– ({10 - len(finite)} digits never drawn)"
        lines.append(f"| {name} | {change} | {row.fid:.2f} | {row.inception_score:.2f} | {row.kl_uniform:.3f} | "
                     f"{row.pairwise_mean:.2f} / {worst} | {minutes:.1f} min | "
                     f"![{name}]({run_dir / 'samples.png'}) |")
    table = "\n".join(lines)
    print(table)
    with artifacts.atomic_path(args.artifacts / "ablation.md") as tmp:
        tmp.write_text("# The tutorial's steps, measured\n\n" + table + "\n")


if __name__ == "__main__":
    main()
