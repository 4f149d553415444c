"""Builds model_store/mnist_gan.mar with torch-model-archiver, after checking the weights load.

The archive carries the generator twice: its state dict (the serialized file, which PyTorch serves on
a GPU) and an ONNX export of the same module, which ONNX Runtime serves on a CPU (the handler picks).

    python -m scripts.archive --weights artifacts/generator.pt --metadata artifacts/generator.json
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from scripts import HANDLER_DIR, MODEL_CONFIG, MODEL_NAME
from handler.generator import METADATA_FILE, ONNX_FILE, ONNX_INPUTS, Generator, sample_latent
from handler.request_contract import MAX_HAND_DIGITS
from handler.search import SEARCH_INPUTS, SEARCH_ONNX_FILE, LossAndGradient
from train.artifacts import load_generator
from train.files import atomic_path

# ONNX Runtime's kernels sum in another order than PyTorch's, so the two differ in the last bits;
# anything as large as the contract's rounding step means the export went wrong.
EXPORT_TOLERANCE = 1e-4
# What the handler imports beside the model file: the request contract, the uploads' image processing, the search.
HANDLER_MODULES = tuple(HANDLER_DIR / name for name in ("request_contract.py", "upload.py", "search.py"))


def export_onnx(model: Generator, path: Path) -> None:
    """Writes `model` (eval mode) as an ONNX graph with a free batch size, atomically, after checking
    that ONNX Runtime draws the same images from it as PyTorch (ValueError if it does not)."""
    noise, labels = sample_latent(model, 3, torch.Generator().manual_seed(0))
    inputs = (noise,) if labels is None else (noise, labels)
    checks = [tuple(t for t in sample_latent(model, count, torch.Generator().manual_seed(count)) if t is not None)
              for count in (1, 64)]
    _export(model, inputs, [{0: torch.export.Dim("batch")}] * len(inputs), ONNX_INPUTS[:len(inputs)], ["images"],
            path, checks, "the generator")


def export_search_onnx(model: Generator, path: Path) -> bool:
    """Writes the search for a hand's loss and gradient (search.LossAndGradient) for `model` as an ONNX graph with
    a free number of digits, checked as export_onnx checks; False (nothing written) for a generator it does not
    cover (an unconditional one, which finds no hands)."""
    try:
        graph = LossAndGradient(model).eval()
    except ValueError:
        return False
    rng = torch.Generator().manual_seed(0)

    def case(count: int) -> tuple[torch.Tensor, ...]:
        noise, labels = sample_latent(model, count, rng)
        return noise[:1], labels, torch.rand(count, 1, 28, 28, generator=rng)

    digits = torch.export.Dim("digits", min=1, max=MAX_HAND_DIGITS)
    _export(graph, case(3), [{}, {0: digits}, {0: digits}], SEARCH_INPUTS, ["loss", "gradient"], path,
            [case(1), case(5), case(MAX_HAND_DIGITS)], "the search's loss and gradient")
    return True


def _export(module: torch.nn.Module, inputs: tuple, dynamic_shapes: list, input_names: Sequence[str],
            output_names: list[str], path: Path, checks: list[tuple], what: str) -> None:
    """torch.onnx.export of `module` to `path`, atomically, once ONNX Runtime gives PyTorch's outputs for each of the
    input tuples `checks` (ValueError naming `what` if it does not)."""
    import onnxruntime

    with warnings.catch_warnings(), redirect_stdout(StringIO()), torch.no_grad():  # the exporter narrates every step
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=list(input_names), output_names=output_names)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for check in checks:
            with torch.inference_mode():
                expected = [t.numpy() for t in torch.utils._pytree.tree_leaves(module(*check))]
            got = session.run(None, {name: t.numpy() for name, t in zip(input_names, check)})
            error = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
            if not error <= EXPORT_TOLERANCE:
                raise ValueError(f"the ONNX export of {what} is off by {error:.2g} at {len(check[-1])} images")


def build_archive(weights: Path, metadata: Path, export_path: Path, model_config: Path = MODEL_CONFIG) -> Path:
    """Checks the weights, then writes <export_path>/mnist_gan.mar atomically and returns its path (one name:
    config.properties registers it, as mnist_gan and as the hand route). It holds the generator's weights, its ONNX
    export, and for a conditional generator the search for a hand's ONNX export."""
    model, _ = load_generator(weights, metadata)  # refuse weights that would make a broken archive
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=export_path, prefix=".archive-") as staging:
        staged_meta = Path(staging) / METADATA_FILE  # packed under the name the handler reads
        shutil.copyfile(metadata, staged_meta)
        staged_onnx = [Path(staging) / ONNX_FILE]
        export_onnx(model, staged_onnx[0])
        if export_search_onnx(model, Path(staging) / SEARCH_ONNX_FILE):
            staged_onnx.append(Path(staging) / SEARCH_ONNX_FILE)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", MODEL_NAME,
            "--version", "1.0",
            "--model-file", str(HANDLER_DIR / "generator.py"),
            "--serialized-file", str(weights),
            "--handler", str(HANDLER_DIR / "mnist_gan_handler.py"),
            "--extra-files", ",".join(map(str, [staged_meta, *staged_onnx, *HANDLER_MODULES])),
            "--config-file", str(model_config),
            "--export-path", staging,
        ]
        # The archiver stages files in $TMPDIR/<model name>, one folder for every run on the machine: two
        # archives built at once (two tests, two users) would empty each other's. Each build gets its own.
        private_tmp = Path(staging) / "tmp"
        private_tmp.mkdir()
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(private_tmp)})
        target = export_path / f"{MODEL_NAME}.mar"
        os.replace(Path(staging) / f"{MODEL_NAME}.mar", target)  # never a half-written .mar in the store
    return target


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Build the TorchServe archive (.mar) of the trained generator.")
    parser.add_argument("--weights", type=Path, default=Path("artifacts/generator.pt"))
    parser.add_argument("--metadata", type=Path, default=Path("artifacts/generator.json"))
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    args = parser.parse_args(argv)
    try:
        target = build_archive(args.weights, args.metadata, args.export_path)
    except ValueError as error:
        raise SystemExit(f"archive: refusing to build a broken archive: {error}")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
