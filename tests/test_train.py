"""Training: presets, artifacts, missing data, reproducibility, checkpoints and resuming."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from handler.generator import Generator
from train.config import PRESETS, make_config, saved_config
from train.data import MnistMissing, load_mnist
from scripts import ROOT
from train.train import Trainer, bf16_native, main, resume_command, run


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
    assert (cfg.arch, cfg.latent_dim, cfg.noise, cfg.noise_std, cfg.loss, cfg.optimizer, cfg.lr, cfg.batch_size,
            cfg.epochs) == ("mlp", 100, "normal", 1.0, "bce", "adam", 1e-4, 1, 4)
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


def test_only_the_conditional_default_samples_wider_than_it_trains():
    # The spread was chosen on the conditional model's measures; every other preset samples N(0, I).
    assert make_config("cdcgan").noise_std > 1
    assert {name: make_config(name).noise_std for name in PRESETS if name != "cdcgan"} == {
        name: 1.0 for name in PRESETS if name != "cdcgan"}


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
    settings = dict(epochs=1, limit=64, batch_size=32, data_dir=str(data_dir), seed=7)
    run(make_config("cdcgan", out_dir=str(tmp_path / "a"), **settings))
    run(make_config("cdcgan", out_dir=str(tmp_path / "b"), **settings))
    run(make_config("cdcgan", out_dir=str(tmp_path / "c"), **{**settings, "seed": 8}))
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# A run long enough to interrupt mid-epoch (32 steps an epoch, about a second), short enough for the suite.
RESUME_RUN = dict(preset="cdcgan", limit=512, batch_size=16, epochs=2, seed=5, threads=1)
STEPS_PER_EPOCH = RESUME_RUN["limit"] // RESUME_RUN["batch_size"]


def _cli(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "train", "--preset", RESUME_RUN["preset"], "--limit", str(RESUME_RUN["limit"]),
            "--batch-size", str(RESUME_RUN["batch_size"]), "--epochs", str(RESUME_RUN["epochs"]),
            "--seed", str(RESUME_RUN["seed"]), "--threads", "1", "--data-dir", str(data_dir), "--out-dir", str(out)]


def _resume_config(data_dir: Path, out: Path):
    settings = {k: v for k, v in RESUME_RUN.items() if k != "preset"}
    return make_config(RESUME_RUN["preset"], data_dir=str(data_dir), out_dir=str(out), **settings)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    run(_resume_config(data_dir, out))
    return _weights(out)


def _signal_on_progress(command: list[str], epoch: int, signum: int) -> tuple[int, str]:
    """Starts training and sends `signum` once its progress bar shows a finished step of `epoch`
    (a real progress signal, not a sleep); returns the exit code and everything it wrote to stderr."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = re.compile(rb"epoch %d/\d+:.*?\| *([1-9]\d*)/(\d+) " % epoch)
    seen = b""
    try:
        while chunk := os.read(process.stderr.fileno(), 65536):
            seen += chunk
            match = progress.search(seen)
            if match and int(match.group(1)) < int(match.group(2)):
                process.send_signal(signum)
                break
        seen += process.stderr.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert match, f"training ended before epoch {epoch} showed progress: {seen[-1500:].decode()}"
    return process.returncode, seen.decode(errors="replace")


def test_the_resume_hint_names_the_runs_preset_and_folder():
    assert resume_command(make_config()) == "make train RESUME=1"
    assert resume_command(make_config("tutorial", out_dir="artifacts/presets/tutorial")) == \
        "make train PRESET=tutorial OUT=artifacts/presets/tutorial RESUME=1"
    # make demo's one-epoch run must not resume as an 11-epoch one
    assert resume_command(make_config(epochs=1, out_dir="artifacts/demo")) == \
        "make train EPOCHS=1 OUT=artifacts/demo RESUME=1"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_saves_mid_epoch_and_resumes_to_the_same_weights(signum, uninterrupted, data_dir, tmp_path):
    code, stderr = _signal_on_progress(_cli(data_dir, tmp_path), epoch=1, signum=signum)
    assert code == 128 + signum, stderr[-1500:]
    assert "checkpoint saved" in stderr
    # this run's length and folder, not the default's
    assert f"continue with `make train EPOCHS={RESUME_RUN['epochs']} OUT={tmp_path} RESUME=1`" in stderr
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert 0 < state["steps"] < RESUME_RUN["epochs"] * STEPS_PER_EPOCH
    assert state["epoch"] * STEPS_PER_EPOCH + state["step_in_epoch"] == state["steps"]
    assert not (tmp_path / "generator.pt").exists()
    run(_resume_config(data_dir, tmp_path), resume=True)
    resumed = _weights(tmp_path)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)  # bit for bit


def test_sigkilled_run_resumes_from_its_last_checkpoint_to_the_same_weights(uninterrupted, data_dir, tmp_path):
    code, _ = _signal_on_progress(_cli(data_dir, tmp_path), epoch=2, signum=signal.SIGKILL)
    assert code == -signal.SIGKILL
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # whole, never half-written
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)  # the end of epoch 1: nothing later survives
    assert not (tmp_path / "generator.pt").exists()
    run(_resume_config(data_dir, tmp_path), resume=True)
    resumed = _weights(tmp_path)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert json.loads((tmp_path / "generator.json").read_text())["steps"] == RESUME_RUN["epochs"] * STEPS_PER_EPOCH


def test_a_run_killed_before_its_first_checkpoint_cannot_be_resumed_and_leaves_nothing(data_dir, tmp_path):
    code, _ = _signal_on_progress(_cli(data_dir, tmp_path), epoch=1, signum=signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "generator.pt").exists()
    with pytest.raises(SystemExit, match="no checkpoint at .*start a run without RESUME"):
        main(["--resume", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])


def test_resume_refuses_another_presets_checkpoint(tiny_tutorial_run, data_dir):
    with pytest.raises(SystemExit, match="is a 'tutorial' run, not 'cdcgan'"):
        main(["--resume", "--preset", "cdcgan", "--data-dir", str(data_dir), "--out-dir", str(tiny_tutorial_run)])


def test_saved_config_reads_this_versions_and_older_checkpoints():
    config = make_config("cdcgan", epochs=3, seed=4)
    saved = {**asdict(config), "betas": list(config.betas)}  # as a checkpoint may hold them
    assert saved_config(saved) == config
    older = {key: value for key, value in saved.items() if key not in ("bf16", "noise_std")}
    assert saved_config(older) == replace(config, bf16=False, noise_std=1.0)  # how such runs were trained and served
    assert saved_config({**saved, "imle_weight": 0.0}) == config  # a since-removed option that was off changes nothing
    with pytest.raises(ValueError, match="no longer has: imle_weight=10.0"):
        saved_config({**saved, "imle_weight": 10.0})
    with pytest.raises(ValueError, match="does not record the settings aux_weight"):
        saved_config({key: value for key, value in saved.items() if key != "aux_weight"})


def test_a_checkpoint_from_before_bf16_and_noise_std_resumes_as_it_was_trained(data_dir, tmp_path):
    settings = dict(limit=64, batch_size=32, data_dir=str(data_dir), out_dir=str(tmp_path))
    run(make_config("cdcgan", epochs=1, **settings))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["config"]["bf16"], state["config"]["noise_std"]
    torch.save(state, tmp_path / "checkpoint.pt")
    run(make_config("cdcgan", epochs=2, **settings), resume=True)
    meta = json.loads((tmp_path / "generator.json").read_text())
    assert (meta["epochs"], meta["config"]["bf16"], meta["precision"]) == (2, False, "float32")
    assert meta["model"]["noise_std"] == 1.0


def test_resume_refuses_a_checkpoint_with_a_removed_setting_without_a_traceback(data_dir, tmp_path):
    run(make_config("cdcgan", epochs=1, limit=64, batch_size=32, data_dir=str(data_dir), out_dir=str(tmp_path)))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["config"]["recon_weight"] = 10.0
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match="cannot be continued: .*no longer has: recon_weight=10.0"):
        main(["--resume", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    assert state["config"] == torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]  # left as it was


@pytest.mark.parametrize("ema_decay", [0.999, 0.0])
def test_generator_pt_holds_the_served_network(ema_decay, data_dir, tmp_path):
    # The EMA copy when there is one (and not the raw G), else the raw G: what the checkpoint says.
    run(make_config("cdcgan", epochs=1, limit=128, batch_size=32, data_dir=str(data_dir), out_dir=str(tmp_path),
                    ema_decay=ema_decay))
    served, state = _weights(tmp_path), torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    if ema_decay:
        expected = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
        assert not all(torch.equal(served[k], state["generator"][k]) for k in served)
    else:
        expected = state["generator"]
    assert served.keys() == expected.keys()
    assert all(torch.equal(served[k], expected[k]) for k in served)
    assert json.loads((tmp_path / "generator.json").read_text())["served_weights"] == ("ema" if ema_decay else "generator")


def test_training_draws_standard_noise_and_records_the_serving_spread(tiny_run):
    trainer = Trainer(make_config("cdcgan", noise_std=2.0))
    assert trainer.generator.noise_std == trainer.served_generator().noise_std == 2.0
    noise, _ = trainer._latent(20_000)
    assert noise.std().item() == pytest.approx(1.0, abs=0.01)  # what G learns from, whatever it serves
    model = json.loads((tiny_run / "generator.json").read_text())["model"]
    assert model["noise_std"] == make_config("cdcgan").noise_std == Generator(**model).noise_std


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from train.files import atomic_path

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
                              out_dir=str(tmp_path), lr_schedule="linear", lr=2e-4, lr_d=4e-4))
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


@pytest.mark.parametrize("preset", ["cdcgan", "tutorial"])
def test_every_weight_of_both_networks_learns_at_every_step(preset):
    # The G step freezes D (its gradients there are thrown away): D must come back trainable.
    trainer = Trainer(make_config(preset, batch_size=64))
    nets = ("generator", "discriminator")
    # sparse strokes, unlike G's first grey fakes: D's outputs for the two must differ, or in bf16 the
    # real and fake halves of its bias gradient can cancel exactly
    images, labels = (torch.rand(64, 1, 28, 28) > 0.8).float(), torch.arange(64) % 10
    for step in range(2):
        before = {name: p.detach().clone() for net in nets for name, p in getattr(trainer, net).named_parameters(prefix=net)}
        trainer.train_step(images, labels)
        after = dict(p for net in nets for p in getattr(trainer, net).named_parameters(prefix=net))
        unchanged = [name for name, p in after.items() if torch.equal(p, before[name])]
        assert not unchanged, f"step {step + 1}: {unchanged} did not move"
        assert all(p.requires_grad for p in after.values())


@pytest.mark.skipif(not bf16_native(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_default_runs_its_forward_passes_in_bf16_and_keeps_float32_weights(data_dir):
    trainer = Trainer(make_config("cdcgan", batch_size=16))
    seen = []
    hooks = [net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
             for net in (trainer.generator, trainer.discriminator)]
    trainer.train_step(torch.rand(16, 1, 28, 28), torch.arange(16) % 10)
    for hook in hooks:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    for net in (trainer.generator, trainer.discriminator, trainer.ema.module):
        assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert trainer.metadata(str(data_dir), 16)["precision"] == "bf16 autocast"
    # the tutorial's steps are the baseline: they stay float32
    tutorial = Trainer(make_config("tutorial"))
    assert not tutorial.bf16 and tutorial.metadata(str(data_dir), 1)["precision"] == "float32"
    # and a run asked for float32 gets it
    assert not Trainer(make_config("cdcgan", bf16=False)).bf16
