"""Training: presets, artifacts, missing data, reproducibility, checkpoints and resuming."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from handler.generator import Generator
from train.config import PRESETS, make_config
from train.data import MnistMissing, load_mnist
from train.train import Trainer, run

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_every_artifact(tiny_run):
    for name in ("generator.pt", "generator.json", "losses.csv", "losses.png", "samples.png",
                 "checkpoint.pt", "samples/epoch_01.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    meta = json.loads((tiny_run / "generator.json").read_text())
    assert meta["preset"] == "cdcgan" and meta["epochs"] == 1 and meta["data"]["train_images"] == 256
    for key in ("seed", "train_seconds", "final_losses", "versions", "device", "git_commit", "config"):
        assert key in meta
    assert meta["data"]["train_images_md5"] == "6bbc9ace898e44ae57da46a324031adb"
    model = Generator(**meta["model"])
    state = torch.load(tiny_run / "generator.pt", weights_only=True)
    model.load_state_dict(state)  # a plain state dict of exactly this generator
    losses = pd.read_csv(tiny_run / "losses.csv")
    assert list(losses.columns) == ["step", "epoch", "images", "d_loss", "g_loss"] and len(losses) >= 1
    assert losses[["d_loss", "g_loss"]].notna().all().all()


def test_tutorial_preset_is_the_tutorial_recipe():
    cfg = make_config("tutorial")
    assert (cfg.arch, cfg.latent_dim, cfg.noise, cfg.loss, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == \
        ("mlp", 100, "normal", "bce", "adam", 1e-4, 1, 4)
    trainer = Trainer(cfg)
    g_layers = [type(m) for m in trainer.generator.net]
    assert g_layers == [nn.Linear, nn.LeakyReLU, nn.LayerNorm, nn.Linear, nn.Sigmoid, nn.Unflatten]
    assert (trainer.generator.net[0].in_features, trainer.generator.net[0].out_features) == (100, 200)
    assert trainer.generator.net[1].negative_slope == 0.02
    d_layers = [type(m) for m in [*trainer.discriminator.features, *trainer.discriminator.score]]
    assert d_layers == [nn.Flatten, nn.Linear, nn.LeakyReLU, nn.LayerNorm, nn.Linear, nn.Sigmoid]
    assert isinstance(trainer.loss_fn, nn.BCELoss) and isinstance(trainer.opt_g, torch.optim.Adam)
    assert trainer.opt_g.defaults["lr"] == 1e-4


def test_presets_and_settings_are_validated():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("tutorial-v9")
    with pytest.raises(ValueError, match="unknown settings"):
        make_config("cdcgan", batchsize=3)
    assert "cdcgan" in PRESETS and "tutorial" in PRESETS


def test_missing_mnist_fails_fast_with_where_to_put_the_files(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    # No network in tests: point the real download code at a closed local port.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    started = time.monotonic()
    with pytest.raises(MnistMissing) as error:
        load_mnist(tmp_path / "nowhere")
    message = str(error.value)
    assert time.monotonic() - started < 30
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "DATA_DIR" in message


def test_cli_reports_missing_mnist_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("from torchvision.datasets import MNIST; MNIST.mirrors = ['http://127.0.0.1:9/']; "
            "import sys; from train.train import main; main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode != 0
    assert "Place the four raw MNIST files" in result.stderr and "Traceback" not in result.stderr


def _weights(out: Path) -> dict:
    return torch.load(out / "generator.pt", weights_only=True)


def test_same_seed_gives_bit_identical_weights(tmp_path, data_dir):
    settings = dict(epochs=1, limit=128, batch_size=32, data_dir=str(data_dir), seed=7)
    run(make_config("cdcgan", out_dir=str(tmp_path / "a"), **settings))
    run(make_config("cdcgan", out_dir=str(tmp_path / "b"), **settings))
    run(make_config("cdcgan", out_dir=str(tmp_path / "c"), **{**settings, "seed": 8}))
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resumed_run_equals_uninterrupted_run(tmp_path, data_dir):
    settings = dict(limit=128, batch_size=32, data_dir=str(data_dir), seed=3)
    run(make_config("cdcgan", epochs=2, out_dir=str(tmp_path / "straight"), **settings))
    run(make_config("cdcgan", epochs=1, out_dir=str(tmp_path / "split"), **settings))
    run(make_config("cdcgan", epochs=2, out_dir=str(tmp_path / "split"), **settings), resume=True)
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    meta = json.loads((tmp_path / "split" / "generator.json").read_text())
    assert meta["epochs"] == 2 and meta["steps"] == 8


def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "train", "--preset", "cdcgan", "--limit", "1024", "--batch-size", "16",
               "--epochs", "6", "--data-dir", str(data_dir), "--out-dir", str(out), "--threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    state = torch.load(checkpoint, weights_only=True)  # the checkpoint is whole, never half-written
    killed_at = state["epoch"]
    assert 1 <= killed_at < 6
    assert not (out / "generator.pt").exists()
    result = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming cdcgan at epoch {killed_at + 1}" in result.stderr
    meta = json.loads((out / "generator.json").read_text())
    assert meta["epochs"] == 6 and meta["steps"] == 6 * 64
    assert len(list((out / "samples").glob("epoch_*.png"))) == 6


def test_interrupted_run_saves_a_mid_epoch_checkpoint_and_resumes(tmp_path, data_dir):
    out = tmp_path / "run"
    steps_per_epoch = 4096 // 16
    command = [sys.executable, "-m", "train", "--preset", "cdcgan", "--limit", "4096", "--batch-size", "16",
               "--epochs", "4", "--data-dir", str(data_dir), "--out-dir", str(out), "--threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in iter(process.stderr.readline, ""):  # wait until training has really started
            if "training cdcgan" in line or time.monotonic() > deadline:
                break
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-1000:]
    assert "RESUME=1" in stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 0 < state["steps"] < 4 * steps_per_epoch
    assert state["epoch"] * steps_per_epoch + state["step_in_epoch"] == state["steps"]
    result = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "generator.json").read_text())["steps"] == 4 * steps_per_epoch


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from train.artifacts import atomic_path

    target = tmp_path / "generator.json"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["generator.json"]  # no temporary leftovers


def test_default_ds_digit_head_is_label_blind_and_learns_from_real_digits_only():
    cfg = make_config("cdcgan")
    assert cfg.aux_classifier and cfg.label_blind_aux and not cfg.aux_on_fakes
    trainer = Trainer(cfg)
    assert trainer.discriminator.aux_head is not None and trainer.discriminator.label_map is not None


def test_linear_schedule_takes_both_learning_rates_to_zero(tmp_path, data_dir):
    trainer = run(make_config("cdcgan", epochs=1, limit=128, batch_size=32, data_dir=str(data_dir),
                              out_dir=str(tmp_path), lr_schedule="linear", lr_d=4e-4))
    # the last of 4 steps ran at a quarter of each rate
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(2e-4 / 4)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4 / 4)


def test_diff_augment_moves_and_cuts_out_but_keeps_gradients():
    trainer = Trainer(make_config("cdcgan", diff_augment="translation"))
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0  # a centred square: translation by <= 3 pixels keeps all of it
    images.requires_grad_(True)
    moved = trainer._augment(images)
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert not torch.equal(moved, images)
    moved.sum().backward()
    assert images.grad is not None
    trainer = Trainer(make_config("cdcgan", diff_augment="cutout"))
    cut = trainer._augment(torch.ones(8, 1, 28, 28))
    assert ((cut == 0).sum(dim=(1, 2, 3)) == 14 * 14).all()
    assert torch.equal(Trainer(make_config("cdcgan"))._augment(images), images)  # off by default
