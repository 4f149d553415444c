"""`make bench-train`: training speed of the default preset against the tutorial recipe, in one run.

    python -m experiments.bench_train --data-dir data

Measures the training throughput (images/s) of both presets here, then trains the default
preset, pausing the clock every --eval-every steps to compute the FID of its served (EMA)
weights, until it is at least as good as the tutorial preset's 4-epoch model
(artifacts/presets/tutorial, from `make baseline`). The tutorial's 4-epoch time is its
measured throughput extrapolated to 4 x 60,000 images, on the same machine in the same run.
Both train on the CPU, even where there is a GPU: the page compares the recipes on the machine the
README's CPU figures come from.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from experiments.evaluate import cached_evaluator, generate
from experiments.report import DOCS, table, write_page
from train.artifacts import load_run
from train.config import make_config
from train.data import MnistMissing, load_mnist
from train.train import Trainer

PAGE = DOCS / "training.md"


def throughput(preset: str, images: torch.Tensor, labels: torch.Tensor, seconds: float, threads: int) -> float:
    torch.set_num_threads(threads)
    trainer = Trainer(make_config(preset, device="cpu"))
    bs, conditional = trainer.config.batch_size, trainer.config.num_classes > 0
    order = torch.randperm(len(images)).split(bs)
    trainer.train_step(images[order[0]], labels[order[0]] if conditional else None)  # warm-up
    done, started, i = 0, time.perf_counter(), 1
    while time.perf_counter() - started < seconds:
        index = order[i % len(order)]
        trainer.train_step(images[index], labels[index] if conditional else None)
        done, i = done + len(index), i + 1
    return done / (time.perf_counter() - started)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_train", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput measurement")
    parser.add_argument("--eval-every", type=int, default=50, help="default-preset steps between FID checks")
    parser.add_argument("--max-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    baseline = args.artifacts / "presets" / "tutorial"
    try:
        tutorial_model, tutorial_meta = load_run(baseline)
        images, labels = load_mnist(args.data_dir, train=True)
        evaluator, _ = cached_evaluator(args.artifacts, args.data_dir)
    except ValueError as error:
        raise SystemExit(f"bench-train needs the tutorial baseline: {error} (run `make baseline`)")
    except MnistMissing as error:
        raise SystemExit(f"error: {error}")
    torch.set_num_threads(2)
    target = evaluator.row("tutorial", *generate(tutorial_model)).fid

    # Each recipe with the thread count it trains with (train.py: 1 thread below batch size 16).
    tutorial_rate = throughput("tutorial", images, labels, args.seconds, threads=1)
    default_rate = throughput("cdcgan", images, labels, args.seconds, threads=2)
    tutorial_seconds = 4 * len(images) / tutorial_rate
    print(f"throughput: tutorial {tutorial_rate:.0f} images/s, cdcgan {default_rate:.0f} images/s", file=sys.stderr)

    torch.set_num_threads(2)
    trainer = Trainer(make_config("cdcgan", device="cpu"))
    training_seconds, steps, reached, fid = 0.0, 0, None, float("nan")
    for epoch in range(args.max_epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch)).split(trainer.config.batch_size)
        for index in order:
            started = time.perf_counter()
            trainer.train_step(images[index], labels[index])
            training_seconds += time.perf_counter() - started
            steps += 1
            if steps % args.eval_every == 0:
                model = trainer.served_generator().eval()
                fid = evaluator.row("cdcgan", *generate(model)).fid
                model.train()
                print(f"step {steps}: {training_seconds:.1f} s of training, FID {fid:.2f} (target {target:.2f})",
                      file=sys.stderr)
                if fid <= target:
                    reached = training_seconds
                    break
        if reached is not None:
            break
    rows = [("training throughput", f"{tutorial_rate:,.0f} images/s", f"{default_rate:,.0f} images/s",
             f"×{default_rate / tutorial_rate:.1f}"),
            (f"FID of the tutorial's 4-epoch model ({tutorial_meta['epochs']} epochs)", f"{target:.2f}", "", "")]
    if reached is not None:
        rows.append(("time to that FID", f"{tutorial_seconds:,.0f} s (4 epochs, extrapolated)",
                     f"{reached:,.1f} s ({steps} steps, FID {fid:.2f})", f"×{tutorial_seconds / reached:.0f} faster"))
    else:
        rows.append(("time to that FID", f"{tutorial_seconds:,.0f} s", f"not reached in {args.max_epochs} epochs "
                     f"(last FID {fid:.2f})", ""))
    body = table(["", "tutorial preset", "default preset (cdcgan)", "ratio"], rows)
    print(body)
    write_page(PAGE, "Training speed against the tutorial", "make bench-train", body)


if __name__ == "__main__":
    main()
