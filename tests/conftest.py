"""Shared fixtures: MNIST location, tiny real training runs, their real archives (built once per
session), the handler loaded from an unpacked archive by TorchServe's own worker code, and one real
TorchServe serving the tiny archive for every test module that needs a running server."""
import os
from pathlib import Path

import pytest

from scripts import ROOT, read_model_config
from scripts.archive import build_archive
from scripts.server import TorchServe, _alive, free_ports
from experiments.local_handler import LocalHandler, unpack_archive


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
def tiny_store(tiny_run, tmp_path_factory) -> Path:
    """A model store holding the tiny run's real archive (mnist_gan.mar, with its ONNX export)."""
    store = tmp_path_factory.mktemp("tiny_store")
    build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", store)
    return store


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_store, tmp_path_factory) -> Path:
    """The tiny run's archive unpacked, as TorchServe unpacks it for a worker."""
    return unpack_archive(tiny_store / "mnist_gan.mar", tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def tutorial_model_dir(tiny_tutorial_run, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("tutorial_store")
    build_archive(tiny_tutorial_run / "generator.pt", tiny_tutorial_run / "generator.json", store)
    return unpack_archive(store / "mnist_gan.mar", tmp_path_factory.mktemp("tutorial_model_dir"))


@pytest.fixture(scope="session")
def handler_client(tiny_model_dir) -> LocalHandler:
    return LocalHandler(tiny_model_dir)


@pytest.fixture(scope="session")
def tutorial_handler_client(tutorial_model_dir) -> LocalHandler:
    return LocalHandler(tutorial_model_dir)


@pytest.fixture(scope="session")
def server(tiny_store, tmp_path_factory) -> TorchServe:
    """The tiny archive in a real TorchServe on free ports, with the shipped config; stopped at the end."""
    with TorchServe(tmp_path_factory.mktemp("torchserve"), tiny_store, ports=tuple(free_ports(4))) as ts:
        yield ts
        processes = [ts.pid(), *ts.worker_pids()]
    assert len(processes) == 1 + read_model_config()["minWorkers"], processes  # the frontend and its workers
    assert not [pid for pid in processes if _alive(pid)], "stop() left processes running"
