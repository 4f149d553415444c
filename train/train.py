"""Trains the GAN and writes the generator's state dict, its metadata and pictures of the run.

    python -m train --preset cdcgan --epochs 8 --data-dir data
"""
import argparse
import copy
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
import torchvision
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from handler.generator import Generator, sample_latent
from train import artifacts, files
from train.config import DEFAULT_PRESET, PRESETS, TrainConfig, make_config, saved_config
from train.data import MnistMissing, data_checksum, load_mnist
from train.discriminator import Discriminator

LOSSES = {"mse": nn.MSELoss, "bce": nn.BCELoss, "nonsaturating": nn.BCEWithLogitsLoss, "hinge": None}
SAMPLE_SEED = 1234  # the per-epoch sample grids use fixed inputs, so frames are comparable


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix work natively (elsewhere autocast would emulate it, slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resume_command(config: TrainConfig) -> str:
    """The make command that continues this run where it stopped (a resumed run takes its length from the
    command, so a run of other than its preset's length names it)."""
    where = ([f"PRESET={config.preset}"] if config.preset != DEFAULT_PRESET else []) + (
        [f"EPOCHS={config.epochs}"] if config.epochs != make_config(config.preset).epochs else []) + (
        [f"OUT={config.out_dir}"] if Path(config.out_dir) != Path(TrainConfig.out_dir) else [])
    return " ".join(["make train", *where, "RESUME=1"])


class Trainer:
    """Owns the networks, optimizers, EMA, RNGs, step counters and loss history of one run."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)  # weight initialisation
        self.generator = Generator(**config.generator_kwargs()).to(self.device)
        self.discriminator = Discriminator(
            config.arch, config.num_classes, config.width, aux_classifier=config.aux_classifier,
            projection=config.projection, spectral_norm=config.spectral_norm, label_blind_aux=config.label_blind_aux,
        ).to(self.device)
        self.opt_g = self._optimizer(self.generator, config.lr)
        self.opt_d = self._optimizer(self.discriminator, config.lr_d or config.lr)
        # each optimizer with its configured rate, which the schedule scales
        self.base_rates = [(opt, opt.param_groups[0]["lr"]) for opt in (self.opt_g, self.opt_d)]
        self.loss_fn = LOSSES[config.loss]() if LOSSES[config.loss] is not None else None
        self.bf16 = config.bf16 and bf16_native(self.device)
        self.total_steps = 0  # set by fit: the run's length, for the learning-rate schedule
        self.ema: Optional[AveragedModel] = None
        if config.ema_decay:
            decay = config.ema_decay

            def ema_update(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
                # Warm-up: early on, a fixed 0.999 would mostly average the random initial weights.
                d = torch.clamp((1 + updates) / (10 + updates), max=decay)
                return averaged + (current - averaged) * (1 - d)

            self.ema = AveragedModel(self.generator, avg_fn=ema_update, use_buffers=True)
        # Noise and fake labels come from their own generator, checkpointed with the run.
        self.noise_rng = torch.Generator().manual_seed(config.seed)
        self.epoch, self.step_in_epoch, self.steps, self.images_seen = 0, 0, 0, 0
        self.elapsed = 0.0  # training seconds, summed over resumed sessions
        self.history: list[dict[str, float]] = []
        self.stop_signal = 0  # set by a signal handler: fit() returns after the step in progress

    def _optimizer(self, net: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=lr)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=self.config.betas)

    def _set_learning_rates(self) -> None:
        """The schedule is a function of the step count alone, so a resumed run follows it exactly."""
        if self.config.lr_schedule == "constant" or not self.total_steps:
            return
        factor = max(0.0, 1 - self.steps / self.total_steps)
        for optimizer, lr in self.base_rates:
            for group in optimizer.param_groups:
                group["lr"] = lr * factor

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment: differentiable translation (by up to 1/8 of the image) and cutout (half the side)."""
        if not self.config.diff_augment:
            return images
        n, _, h, w = images.shape
        policies = self.config.diff_augment.split(",")
        if "translation" in policies:
            shift = max(1, h // 8)
            dx, dy = (torch.randint(-shift, shift + 1, (n,), generator=self.noise_rng) for _ in range(2))
            padded = F.pad(images, (shift, shift, shift, shift))
            rows = (torch.arange(h)[None, :] + shift - dy[:, None]).to(images.device)  # n x h
            cols = (torch.arange(w)[None, :] + shift - dx[:, None]).to(images.device)  # n x w
            batch = torch.arange(n, device=images.device)[:, None, None]
            images = padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        if "cutout" in policies:
            size = h // 2
            cy, cx = (torch.randint(0, h + 1 - size, (n,), generator=self.noise_rng) for _ in range(2))
            ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
            inside_y = (ys >= cy[:, None]) & (ys < cy[:, None] + size)
            inside_x = (xs >= cx[:, None]) & (xs < cx[:, None] + size)
            mask = ~(inside_y[:, :, None] & inside_x[:, None, :])
            images = images * mask.unsqueeze(1).to(images)
        return images

    # -- one optimisation step -------------------------------------------------------
    def _latent(self, count: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        # G learns from N(0, I); the model's noise_std only changes what is drawn from it afterwards
        noise, labels = sample_latent(self.generator, count, self.noise_rng, noise_std=1.0)
        return noise.to(self.device), None if labels is None else labels.to(self.device)

    def _loss(self, scores: torch.Tensor, target: float, labels: Optional[torch.Tensor] = None,
              aux_weight: float = 1.0, for_generator: bool = False) -> torch.Tensor:
        """The adversarial loss on column 0, plus (weighted) the digit-classification loss when D has that head."""
        adversarial = scores[:, :1]
        if self.loss_fn is None:  # hinge: D pushes real above +1 and fake below -1; G raises its fakes' score
            loss = -adversarial.mean() if for_generator else F.relu(1 - (2 * target - 1) * adversarial).mean()
        else:
            loss = self.loss_fn(adversarial, torch.full_like(adversarial, target))
        if scores.shape[1] > 1 and aux_weight:
            loss = loss + aux_weight * F.cross_entropy(scores[:, 1:], labels)
        return loss

    def _autocast(self) -> torch.autocast:
        """The forward passes' precision; backward follows it, and weights, optimizers and EMA stay float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, real: torch.Tensor, labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of D and one of G; returns their losses (detached tensors)."""
        G, D = self.generator, self.discriminator
        self._set_learning_rates()
        if self.config.step_style == "tutorial":
            self.opt_d.zero_grad()
            loss_real = self._loss(D(real, labels), 1.0)
            loss_real.backward()
            self.opt_d.step()
            self.opt_d.zero_grad()
            noise, fake_labels = self._latent(len(real))
            loss_fake = self._loss(D(G(noise, fake_labels).detach(), fake_labels), 0.0)
            loss_fake.backward()
            self.opt_d.step()
            d_loss = (loss_real.detach() + loss_fake.detach()) / 2
            noise, fake_labels = self._latent(len(real))
            fake = G(noise, fake_labels)
        else:
            noise, fake_labels = self._latent(len(real))
            self.opt_d.zero_grad()
            fake_aux = 1.0 if self.config.aux_on_fakes else 0.0
            with self._autocast():
                fake = G(noise, fake_labels)
                # A digit head that learns from real digits only need not even look at the fakes here.
                fake_scores = D(self._augment(fake.detach()), fake_labels, digits=self.config.aux_on_fakes)
                d_loss = (self._loss(D(self._augment(real), labels), 1.0, labels)
                          + self._loss(fake_scores, 0.0, fake_labels, fake_aux))
            d_loss.backward()
            self.opt_d.step()
            d_loss = d_loss.detach() / 2
        self.opt_g.zero_grad()
        # non-saturating: G wants D to say "real" (and, with D's digit head, the requested digit).
        # D's own gradients are not needed here (its next step starts from zero), so autograd skips them.
        D.requires_grad_(False)
        try:
            with self._autocast():
                g_loss = self._loss(D(self._augment(fake), fake_labels), 1.0, fake_labels, self.config.aux_weight,
                                    for_generator=True)
            g_loss.backward()
        finally:
            D.requires_grad_(True)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update_parameters(G)
        return d_loss, g_loss.detach()

    # -- the loop ----------------------------------------------------------------------
    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        cfg = self.config
        images, labels = images.to(self.device), labels.to(self.device)
        conditional = cfg.num_classes > 0
        self.total_steps = cfg.epochs * -(-len(images) // cfg.batch_size)
        while self.epoch < cfg.epochs and not self.stop_signal:
            # The order depends only on (seed, epoch): a resumed run sees the same batches.
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch))
            batches = order.split(cfg.batch_size)
            bar = tqdm(
                total=len(batches), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="step", dynamic_ncols=True, mininterval=0.5,
            )
            d_sum = g_sum = torch.zeros((), device=self.device)
            window, started = 0, time.perf_counter()
            try:
                for index in batches[self.step_in_epoch:]:
                    index = index.to(self.device)
                    d_loss, g_loss = self.train_step(images[index], labels[index] if conditional else None)
                    d_sum, g_sum, window = d_sum + d_loss, g_sum + g_loss, window + 1
                    self.step_in_epoch += 1
                    self.steps += 1
                    self.images_seen += len(index)
                    last_step = self.step_in_epoch == len(batches)
                    if window == cfg.log_every or (last_step and window):  # an epoch's tail is logged too
                        record = dict(step=self.steps, epoch=self.epoch + self.step_in_epoch / len(batches),
                                      images=self.images_seen, d_loss=d_sum.item() / window, g_loss=g_sum.item() / window)
                        self.history.append(record)
                        bar.set_postfix(d_loss=f"{record['d_loss']:.3f}", g_loss=f"{record['g_loss']:.3f}", refresh=False)
                        d_sum = g_sum = torch.zeros((), device=self.device)
                        window = 0
                    bar.update()
                    if self.stop_signal:
                        break
            finally:
                self.elapsed += time.perf_counter() - started
                bar.close()
            if self.step_in_epoch < len(batches):
                return  # stopped mid-epoch: the caller saves the checkpoint
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save_epoch_samples()
            self.save_losses()
            self.save_checkpoint()

    # -- what gets written -----------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def served_generator(self) -> Generator:
        """The network that gets served: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.generator

    @torch.inference_mode()
    def samples(self, count: int = 100) -> torch.Tensor:
        model = self.served_generator()
        was_training = model.training
        model.eval()
        rng = torch.Generator().manual_seed(SAMPLE_SEED)
        # A row per digit reads better than random labels.
        noise, labels = sample_latent(model, count, rng, digits=torch.arange(count) % max(model.num_classes, 1))
        out = model(noise.to(self.device), None if labels is None else labels.to(self.device))
        model.train(was_training)
        return out.cpu()

    def save_epoch_samples(self) -> None:
        artifacts.image_grid(self.samples(), 10, self.out_dir / "samples" / f"epoch_{self.epoch:02d}.png",
                             title=f"{self.config.preset}, epoch {self.epoch}")

    def save_losses(self) -> None:
        """losses.csv and its picture, losses.png."""
        if not self.history:
            return
        frame = pd.DataFrame(self.history)
        with files.atomic_path(self.out_dir / "losses.csv") as tmp:
            frame.to_csv(tmp, index=False)
        # Drawn like the tutorial's plot_progress: every record as a faint dot.
        axes = frame.plot(x="epoch", y=["d_loss", "g_loss"], figsize=(12, 6), alpha=0.3, marker=".",
                          linestyle="none", grid=True, ylim=(0, None), title=f"losses: {self.config.preset}")
        axes.set_xlabel("epoch")
        artifacts.save_figure(axes.get_figure(), self.out_dir / "losses.png")

    def checkpoint_state(self) -> dict[str, Any]:
        return dict(
            config=asdict(self.config), epoch=self.epoch, step_in_epoch=self.step_in_epoch, steps=self.steps,
            images_seen=self.images_seen, elapsed=self.elapsed, history=self.history,
            generator=self.generator.state_dict(), discriminator=self.discriminator.state_dict(),
            opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict(),
            ema=None if self.ema is None else self.ema.state_dict(),
            noise_rng=self.noise_rng.get_state(), torch_rng=torch.get_rng_state(),
        )

    def save_checkpoint(self) -> None:
        artifacts.save_torch(self.checkpoint_state(), self.out_dir / "checkpoint.pt")

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.noise_rng.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step_in_epoch, self.steps = state["epoch"], state["step_in_epoch"], state["steps"]
        self.images_seen, self.elapsed, self.history = state["images_seen"], state["elapsed"], state["history"]

    def metadata(self, data_dir: str, train_images: int) -> dict[str, Any]:
        cfg = self.config
        last = self.history[-1] if self.history else {}
        return dict(
            preset=cfg.preset,
            model=cfg.generator_kwargs(),
            served_weights="ema" if self.ema is not None else "generator",
            epochs=self.epoch,
            seed=cfg.seed,
            train_seconds=round(self.elapsed, 2),
            seconds_per_epoch=round(self.elapsed / max(self.epoch, 1), 2),
            steps=self.steps,
            images_seen=self.images_seen,
            final_losses=dict(d=last.get("d_loss"), g=last.get("g_loss")),
            config=asdict(cfg),
            data=dict(dir=str(Path(data_dir).resolve()), train_images=train_images, train_images_md5=data_checksum(data_dir)),
            device=str(self.device) if self.device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(self.device)})",
            precision="bf16 autocast" if self.bf16 else "float32",
            threads=torch.get_num_threads(),
            versions=dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__),
            git_commit=git_commit(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def save_final(self, data_dir: str, train_images: int) -> None:
        served = copy.deepcopy(self.served_generator()).cpu()
        artifacts.save_torch(served.state_dict(), self.out_dir / "generator.pt")
        files.save_json(self.metadata(data_dir, train_images), self.out_dir / "generator.json")
        artifacts.image_grid(self.samples(), 10, self.out_dir / "samples.png", title=f"{self.config.preset}: samples")
        self.save_losses()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    parser.add_argument("--epochs", type=int, help="override the preset's epoch count")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--out-dir", default="artifacts")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--limit", type=int, help="train on the first N images only (smoke tests)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt")
    return parser.parse_args(argv)


def run(config: TrainConfig, resume: bool = False) -> Trainer:
    """Trains (or resumes) a run and writes all its artifacts; returns the trainer."""
    checkpoint_path = Path(config.out_dir) / "checkpoint.pt"
    state = None
    if resume:
        if not checkpoint_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint_path}; start a run without RESUME first")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        try:
            saved = saved_config(state["config"])
        except ValueError as error:
            raise SystemExit(f"--resume: {checkpoint_path} cannot be continued: {error}")
        if saved.preset != config.preset:
            raise SystemExit(f"--resume: {checkpoint_path} is a {saved.preset!r} run, not {config.preset!r}")
        # The run continues as it was configured; only its length and where it runs may change.
        config = TrainConfig(**{**asdict(saved), "epochs": config.epochs, "device": config.device,
                                "threads": config.threads, "data_dir": config.data_dir, "out_dir": config.out_dir})
    threads = config.threads or (1 if config.batch_size < 16 else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    images, labels = load_mnist(config.data_dir, train=True, limit=config.limit)
    trainer = Trainer(config)
    if state is not None:
        trainer.load_checkpoint(state)
        print(f"resuming {config.preset} at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}", file=sys.stderr)
    print(f"training {config.preset} on {len(images)} images, device {trainer.device}, {threads} thread(s)", file=sys.stderr)

    def request_stop(signum: int, frame: Any) -> None:
        trainer.stop_signal = signum  # the loop stops after the step in progress, so a resume repeats nothing

    handled = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C and `kill` both save the run
    previous = {signum: signal.signal(signum, request_stop) for signum in handled}
    try:
        trainer.fit(images, labels)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if trainer.stop_signal:
        trainer.save_checkpoint()
        print(f"\ninterrupted: checkpoint saved to {checkpoint_path} (epoch {trainer.epoch + 1}, step "
              f"{trainer.step_in_epoch}); continue with `{resume_command(config)}`", file=sys.stderr)
        raise SystemExit(128 + trainer.stop_signal)
    trainer.save_final(config.data_dir, len(images))
    return trainer


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    config = make_config(args.preset, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         data_dir=args.data_dir, out_dir=args.out_dir, device=args.device, limit=args.limit,
                         threads=args.threads)
    try:
        trainer = run(config, resume=args.resume)
    except MnistMissing as error:
        raise SystemExit(f"error: {error}")
    out = Path(config.out_dir)
    print(f"wrote {out / 'generator.pt'}, {out / 'generator.json'}, {out / 'losses.csv'}, {out / 'losses.png'}, "
          f"{out / 'samples.png'} ({trainer.elapsed:.1f} s of training)")


if __name__ == "__main__":
    main()
