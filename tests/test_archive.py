"""`make archive`: builds a real .mar, and refuses weights that would make a broken one."""
import ast
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
from scripts import ROOT
from scripts.archive import build_archive
from train.artifacts import load_run


def handler_imports() -> set[str]:
    """The handler/ modules that the files in handler/ import (as TorchServe imports them: top-level names)."""
    ours = {path.stem for path in (ROOT / "handler").glob("*.py")}
    found = set()
    for path in (ROOT / "handler").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found & ours


def test_the_served_worker_imports_every_handler_module_from_the_archive(tiny_store, handler_client, tiny_model_dir):
    assert {"generator", "request_contract", "upload"} <= handler_imports()
    packed = {Path(name).stem for name in zipfile.ZipFile(tiny_store / "mnist_gan.mar").namelist()}
    assert handler_imports() <= packed
    for name in handler_imports():  # the worker (TorchServe's own loader, in-process) took each from an unpacked archive
        module = Path(sys.modules[name].__file__)
        assert module.parent != ROOT / "handler" and module.read_bytes() == (tiny_model_dir / module.name).read_bytes()


def test_archive_packs_model_file_weights_handler_and_metadata(tiny_store, tiny_run):
    mar = tiny_store / "mnist_gan.mar"
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"generator.py", "generator.pt", "generator.json", "mnist_gan_handler.py", "request_contract.py",
            "upload.py", "model-config.yaml", "MAR-INF/MANIFEST.json"} <= names
    manifest = json.loads(zipfile.ZipFile(mar).read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelFile"] == "generator.py" and manifest["model"]["handler"] == "mnist_gan_handler.py"
    assert [p.name for p in tiny_store.iterdir()] == ["mnist_gan.mar"]  # no staging leftovers
    assert zipfile.ZipFile(mar).read("generator.pt") == (tiny_run / "generator.pt").read_bytes()


def test_archive_packs_an_onnx_export_that_draws_the_generators_images(tiny_run, tiny_store, tmp_path):
    mar = tiny_store / "mnist_gan.mar"
    (tmp_path / ONNX_FILE).write_bytes(zipfile.ZipFile(mar).read(ONNX_FILE))  # the name the handler loads
    session = onnxruntime.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    model, _ = load_run(tiny_run)
    for count in (1, 5, 300):  # any batch size, not only the one it was exported with
        noise, labels = sample_latent(model, count, torch.Generator().manual_seed(count))
        with torch.inference_mode():
            expected = model(noise, labels).numpy()
        images = session.run(None, onnx_feeds(noise, labels))[0]
        assert images.shape == (count, 1, 28, 28)
        assert np.abs(images - expected).max() < 1e-5


def test_archive_refuses_an_export_of_other_weights_at_the_real_tolerance(tiny_run, tmp_path, monkeypatch):
    # An exporter that writes the graph of another generator (same shape, other weights) into the archive.
    real_export = torch.onnx.export
    torch.manual_seed(1)
    impostor = Generator(**json.loads((tiny_run / "generator.json").read_text())["model"]).eval()
    monkeypatch.setattr(torch.onnx, "export", lambda model, *args, **kwargs: real_export(impostor, *args, **kwargs))
    with pytest.raises(ValueError, match="ONNX export of the generator is off"):
        build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _refused(weights: Path, metadata: Path, export: Path) -> str:
    """`make archive`'s main() in-process: it must exit with a message, leaving no archive."""
    with pytest.raises(SystemExit) as exit_info:
        scripts.archive.main(["--weights", str(weights), "--metadata", str(metadata), "--export-path", str(export)])
    assert exit_info.value.code != 0
    assert not (export / "mnist_gan.mar").exists()
    return str(exit_info.value.code)


def test_archive_cli_builds_and_refuses_with_a_message_not_a_traceback(tiny_run, tmp_path):
    command = [sys.executable, "-m", "scripts.archive", "--metadata", str(tiny_run / "generator.json"),
               "--export-path", str(tmp_path / "store")]
    built = subprocess.run(command + ["--weights", str(tiny_run / "generator.pt")], cwd=ROOT, capture_output=True,
                           text=True, timeout=180)
    assert built.returncode == 0 and (tmp_path / "store" / "mnist_gan.mar").is_file(), built.stderr[-1000:]
    refused = subprocess.run(command + ["--weights", str(tmp_path / "missing.pt"), "--export-path", str(tmp_path / "x")],
                             cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "refusing to build a broken archive" in refused.stderr
    assert "Traceback" not in refused.stderr


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


def test_an_archiver_failing_after_staging_keeps_the_previous_archive(tiny_run, tiny_store, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    (store / "mnist_gan.mar").write_bytes((tiny_store / "mnist_gan.mar").read_bytes())
    before = (store / "mnist_gan.mar").read_bytes()
    real_run = subprocess.run

    def archiver_dies_half_way(command, **kwargs):  # writes half an archive into staging, then fails
        staging = Path(command[command.index("--export-path") + 1])
        (staging / "mnist_gan.mar").write_bytes(before[: len(before) // 2])
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(scripts.archive.subprocess, "run", archiver_dies_half_way)
    with pytest.raises(subprocess.CalledProcessError):
        build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", store)
    monkeypatch.setattr(scripts.archive.subprocess, "run", real_run)
    assert (store / "mnist_gan.mar").read_bytes() == before
    assert [p.name for p in store.iterdir()] == ["mnist_gan.mar"]  # no staging leftovers


def test_a_build_leaves_another_builds_staging_alone(tiny_run, tmp_path, monkeypatch):
    """torch-model-archiver stages in $TMPDIR/<model name> and empties that folder first: with the machine's
    TMPDIR, two archives built at once (two test processes, two users) empty each other's."""
    shared = tmp_path / "tmp"
    another = shared / "mnist_gan" / "generator.json"
    another.parent.mkdir(parents=True)
    another.write_text("another build's staged file")
    monkeypatch.setenv("TMPDIR", str(shared))
    archive = build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", tmp_path / "store")
    assert another.read_text() == "another build's staged file"
    with zipfile.ZipFile(archive) as packed:
        assert {"generator.json", "generator.onnx", "request_contract.py", "generator.py"} <= set(packed.namelist())
