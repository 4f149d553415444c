"""`make ablation`: the tutorial's improvement steps, each trained and measured.

    python -m experiments.ablation --data-dir data

Each step changes one thing from the one before (train/config.py's TUTORIAL_STEPS). Runs are cached
in artifacts/presets/<step>/ and resumed from their checkpoint if interrupted; the table (docs/ablation.md,
with each step's samples in docs/ablation/) uses the metrics of `make evaluate`, the default model last.
"""
import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from experiments.evaluate import cached_evaluator, generate
from experiments.report import DOCS, table, write_page
from train.artifacts import load_run
from train.config import ABLATION_STEPS, PRESETS, TUTORIAL_STEPS, make_config
from train.data import MnistMissing
from train.train import run

PAGE = DOCS / "ablation.md"


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
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.split("\n")[0])
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
    runs = [(name, root / name, TUTORIAL_STEPS[name][0]) for name in ABLATION_STEPS]
    runs.append(("default (cdcgan)", args.artifacts, "the default preset: the served model"))
    rows = []
    for name, run_dir, change in runs:
        try:
            model, meta = load_run(run_dir)
        except ValueError as error:
            rows.append((name, change, "–", "–", "–", "–", "–", f"missing: {error}"))
            continue
        row = evaluator.row(name, *generate(model))
        finite = [d for d in row.pairwise if not math.isnan(d)]  # digits it never draws have no distance
        worst = f"{min(finite):.2f}" if len(finite) == 10 else f"– ({10 - len(finite)} digits never drawn)"
        picture = PAGE.parent / "ablation" / f"{name.split()[0]}.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "samples.png", picture)
        rows.append((name, change, f"{row.fid:.2f}", f"{row.inception_score:.2f}", f"{row.kl_uniform:.3f}",
                     f"{row.pairwise_mean:.2f} / {worst}", f"{meta['train_seconds'] / 60:.1f} min",
                     f"![{name}](ablation/{picture.name})"))
    body = table(["step", "what changed", "FID ↓", "Inception Score ↑", "KL to uniform ↓",
                  f"pairwise distance (real ≈ {real_mean:.2f}): mean / worst digit", "training time", "samples"], rows, 2)
    print(body)
    write_page(PAGE, "The tutorial's story, measured", "make ablation", body)


if __name__ == "__main__":
    main()
