"""Shared fixtures: MNIST location, one tiny real training run, a handler with a hand-made context."""
import os
from pathlib import Path

import pytest

from scripts.local_handler import LocalHandler, model_dir_from

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """MNIST for the tests: $DATA_DIR, else data/, else ../shared/data."""
    candidates = [os.environ.get("DATA_DIR"), ROOT / "data", ROOT.parent / "shared" / "data"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return Path(candidate)
    pytest.fail("MNIST not found: set DATA_DIR to a directory with MNIST/raw/ (e.g. DATA_DIR=../shared/data)")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A real (tiny) training run of the default preset: its output directory."""
    from train.config import make_config
    from train.train import run

    out = tmp_path_factory.mktemp("tiny_run")
    run(make_config("cdcgan", epochs=1, limit=256, batch_size=64, data_dir=str(data_dir), out_dir=str(out)))
    return out


@pytest.fixture(scope="session")
def tiny_tutorial_run(tmp_path_factory, data_dir) -> Path:
    """A real (tiny) run of the unconditional tutorial preset."""
    from train.config import make_config
    from train.train import run

    out = tmp_path_factory.mktemp("tiny_tutorial")
    run(make_config("tutorial", epochs=1, limit=64, data_dir=str(data_dir), out_dir=str(out)))
    return out


@pytest.fixture(scope="session")
def handler_client(tiny_run, tmp_path_factory) -> LocalHandler:
    return LocalHandler(model_dir_from(tiny_run, tmp_path_factory.mktemp("model_dir")))


@pytest.fixture(scope="session")
def tutorial_handler_client(tiny_tutorial_run, tmp_path_factory) -> LocalHandler:
    return LocalHandler(model_dir_from(tiny_tutorial_run, tmp_path_factory.mktemp("tutorial_model_dir")))
