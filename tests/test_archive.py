"""`make archive`: builds a real .mar, and refuses weights that would make a broken one."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import numpy as np
import onnxruntime

import scripts.archive
from handler.generator import ONNX_FILE, Generator, onnx_feeds, sample_latent
from scripts.archive import build_archive
from train.artifacts import load_generator

ROOT = Path(__file__).resolve().parent.parent


def test_archive_packs_model_file_weights_handler_and_metadata(tiny_run, tmp_path):
    mar = build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", tmp_path)
    assert mar == tmp_path / "mnist_gan.mar"
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"generator.py", "generator.pt", "generator.json", "mnist_gan_handler.py", "request_contract.py",
            "model-config.yaml", "MAR-INF/MANIFEST.json"} <= names
    manifest = json.loads(zipfile.ZipFile(mar).read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelFile"] == "generator.py" and manifest["model"]["handler"] == "mnist_gan_handler.py"
    assert [p.name for p in tmp_path.iterdir()] == ["mnist_gan.mar"]  # no staging leftovers


def test_archive_packs_an_onnx_export_that_draws_the_generators_images(tiny_run, tmp_path):
    mar = build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", tmp_path)
    (tmp_path / ONNX_FILE).write_bytes(zipfile.ZipFile(mar).read(ONNX_FILE))  # the name the handler loads
    session = onnxruntime.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    model, _ = load_generator(tiny_run / "generator.pt", tiny_run / "generator.json")
    for count in (1, 5, 300):  # any batch size, not only the one it was exported with
        noise, labels = sample_latent(model, count, torch.Generator().manual_seed(count))
        with torch.inference_mode():
            expected = model(noise, labels).numpy()
        images = session.run(None, onnx_feeds(noise, labels))[0]
        assert images.shape == (count, 1, 28, 28)
        assert np.abs(images - expected).max() < 1e-5


def test_archive_refuses_an_export_that_does_not_match(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(scripts.archive, "EXPORT_TOLERANCE", -1.0)  # no export can pass: the check must refuse
    with pytest.raises(ValueError, match="ONNX export of the generator is off"):
        build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _refused(weights: Path, metadata: Path, export: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "scripts.archive", "--weights", str(weights), "--metadata",
                             str(metadata), "--export-path", str(export)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert not (export / "mnist_gan.mar").exists()
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("case", ["wrong-architecture", "truncated", "pickled-model", "missing", "not-tensors"])
def test_archive_refuses_a_bad_state_dict(case, tiny_run, tmp_path):
    weights = tmp_path / "generator.pt"
    if case == "wrong-architecture":
        torch.save(Generator(arch="mlp", num_classes=0).state_dict(), weights)
        expected = "does not fit the generator"
    elif case == "truncated":
        data = (tiny_run / "generator.pt").read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        expected = "not a readable PyTorch state dict"
    elif case == "pickled-model":
        torch.save(Generator(), weights)  # the whole module, not its state dict
        expected = "not a readable PyTorch state dict"
    elif case == "missing":
        expected = "does not exist"
    else:
        torch.save({"weights": [1, 2, 3]}, weights)
        expected = "not a plain state dict"
    message = _refused(weights, tiny_run / "generator.json", tmp_path / "store")
    assert "refusing to build a broken archive" in message and expected in message


def test_archive_refuses_missing_or_broken_metadata(tiny_run, tmp_path):
    broken = tmp_path / "generator.json"
    broken.write_text("{not json")
    assert "not valid generator metadata" in _refused(tiny_run / "generator.pt", broken, tmp_path / "store")
    assert "does not exist" in _refused(tiny_run / "generator.pt", tmp_path / "none.json", tmp_path / "store")


def test_failed_archive_keeps_the_previous_good_one(tiny_run, tmp_path):
    store = tmp_path / "store"
    good = build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", store)
    before = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "scripts.archive", "--weights", str(bad), "--metadata",
                             str(tiny_run / "generator.json"), "--export-path", str(store)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert good.read_bytes() == before
