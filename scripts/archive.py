"""Builds model_store/mnist_gan.mar with torch-model-archiver, after checking the weights load.

    python -m scripts.archive --weights artifacts/generator.pt --metadata artifacts/generator.json
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from train.artifacts import load_generator

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
MODEL_NAME = "mnist_gan"


def build_archive(weights: Path, metadata: Path, export_path: Path, model_name: str = MODEL_NAME,
                  model_config: Path = HANDLER_DIR / "model-config.yaml") -> Path:
    """Checks the weights, then writes <export_path>/<model_name>.mar atomically and returns its path."""
    load_generator(weights, metadata)  # refuse weights that would make a broken archive
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=export_path, prefix=".archive-") as staging:
        staged_meta = Path(staging) / "generator.json"  # packed under the name the handler reads
        shutil.copyfile(metadata, staged_meta)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", model_name,
            "--version", "1.0",
            "--model-file", str(HANDLER_DIR / "generator.py"),
            "--serialized-file", str(weights),
            "--handler", str(HANDLER_DIR / "mnist_gan_handler.py"),
            "--extra-files", f"{staged_meta},{HANDLER_DIR / 'request_contract.py'}",
            "--config-file", str(model_config),
            "--export-path", staging,
        ]
        subprocess.run(command, check=True)
        target = export_path / f"{model_name}.mar"
        os.replace(Path(staging) / f"{model_name}.mar", target)  # never a half-written .mar in the store
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the TorchServe archive (.mar) of the trained generator.")
    parser.add_argument("--weights", type=Path, default=Path("artifacts/generator.pt"))
    parser.add_argument("--metadata", type=Path, default=Path("artifacts/generator.json"))
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--model-name", default=MODEL_NAME)
    args = parser.parse_args()
    try:
        target = build_archive(args.weights, args.metadata, args.export_path, args.model_name)
    except ValueError as error:
        raise SystemExit(f"archive: refusing to build a broken archive: {error}")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
