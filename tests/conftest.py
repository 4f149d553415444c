"""Shared fixtures: MNIST location, tiny real training runs, their real archives (built once per
session), the handler loaded from an unpacked archive by TorchServe's own worker code, and one real
TorchServe serving the tiny archive for every test module that needs a running server."""
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from scripts import ROOT, read_model_config
from scripts.archive import build_archive
from scripts.server import TorchServe, _alive, free_ports
from experiments.local_handler import LocalHandler, copy_model_dir, unpack_archive

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # One test process per core (make test): a second thread each would only spin-wait for a core.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """MNIST for the tests: $DATA_DIR, else data/, else ../shared/data."""
    candidates = [os.environ.get("DATA_DIR"), ROOT / "data", ROOT.parent / "shared" / "data"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return Path(candidate)
    pytest.fail("MNIST not found: set DATA_DIR to a directory with MNIST/raw/ (e.g. DATA_DIR=../shared/data)")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by build(folder) once for the whole run: `make test` runs the test files in
    several processes (pytest-xdist), and these runs and archives are read-only inputs they can share."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each process's own folder sits in this run's: the same for all of them
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (shared / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a process that failed half-way left
            folder.mkdir()
            build(folder)
            (shared / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A real (tiny) training run of the default preset: its output directory."""
    from train.config import make_config
    from train.train import run

    return built_once(tmp_path_factory, "tiny_run", lambda out: run(make_config(
        "cdcgan", epochs=1, limit=256, batch_size=64, data_dir=str(data_dir), out_dir=str(out))))


@pytest.fixture(scope="session")
def tiny_tutorial_run(tmp_path_factory, data_dir) -> Path:
    """A real (tiny) run of the unconditional tutorial preset."""
    from train.config import make_config
    from train.train import run

    return built_once(tmp_path_factory, "tiny_tutorial", lambda out: run(make_config(
        "tutorial", epochs=1, limit=64, data_dir=str(data_dir), out_dir=str(out))))


@pytest.fixture(scope="session")
def tiny_store(tiny_run, tmp_path_factory) -> Path:
    """A model store holding the tiny run's real archive (mnist_gan.mar, with its ONNX export)."""
    return built_once(tmp_path_factory, "tiny_store", lambda store: build_archive(
        tiny_run / "generator.pt", tiny_run / "generator.json", store))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_store, tmp_path_factory) -> Path:
    """The tiny run's archive unpacked, as TorchServe unpacks it for a worker."""
    return unpack_archive(tiny_store / "mnist_gan.mar", tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def tutorial_model_dir(tiny_tutorial_run, tmp_path_factory) -> Path:
    store = built_once(tmp_path_factory, "tutorial_store", lambda store: build_archive(
        tiny_tutorial_run / "generator.pt", tiny_tutorial_run / "generator.json", store))
    return unpack_archive(store / "mnist_gan.mar", tmp_path_factory.mktemp("tutorial_model_dir"))


@pytest.fixture(scope="session")
def small_classifier(tmp_path_factory, data_dir):
    """(classifier, its test accuracy): the evaluation's recipe on the first 6,000 training digits, 2 epochs, seed 0;
    a stand-in for `make evaluate`'s classifier that trains in seconds, trained once for the whole run."""
    import json

    import torch

    from experiments.classifier import MnistClassifier
    from experiments.evaluate import train_classifier

    def train(folder: Path) -> None:
        torch.manual_seed(0)
        classifier, accuracy = train_classifier(data_dir, epochs=2, limit=6000)
        torch.save(classifier.state_dict(), folder / "classifier.pt")
        (folder / "accuracy.json").write_text(json.dumps(accuracy))

    folder = built_once(tmp_path_factory, "small_classifier", train)
    classifier = MnistClassifier()
    classifier.load_state_dict(torch.load(folder / "classifier.pt", weights_only=True))
    return classifier.eval(), json.loads((folder / "accuracy.json").read_text())


@pytest.fixture(scope="session")
def handler_client(tiny_model_dir) -> LocalHandler:
    return LocalHandler(tiny_model_dir)


@pytest.fixture(scope="session")
def hand_client(tiny_model_dir, tmp_path_factory) -> LocalHandler:
    """The tiny archive's worker as the hand route gets it; at the test process's own CPU priority (a worker's is
    low, which would starve this process beside the suite's other one)."""
    handler = read_model_config()["handler"]
    model_dir = copy_model_dir(tiny_model_dir, tmp_path_factory.mktemp("hand") / "model_dir", {"handler": {"hand_nice": 0}})
    return LocalHandler(model_dir, model_name=handler["hand_route"])


@pytest.fixture(scope="session")
def tutorial_handler_client(tutorial_model_dir) -> LocalHandler:
    return LocalHandler(tutorial_model_dir)


@pytest.fixture(scope="session")
def server(tiny_store, tmp_path_factory) -> TorchServe:
    """The tiny archive in a real TorchServe on free ports, with the shipped config; stopped at the end."""
    with TorchServe(tmp_path_factory.mktemp("torchserve"), tiny_store, ports=tuple(free_ports(4))) as ts:
        yield ts
        processes = [ts.pid(), *ts.worker_pids()]
    # The frontend and at least its workers (after the tests that kill workers, a replacement can still be starting).
    assert len(processes) >= 1 + read_model_config()["minWorkers"], processes
    assert not [pid for pid in processes if _alive(pid)], "stop() left processes running"


# make test runs the files in two processes (pytest-xdist, a file whole in one): the longest ones go first, so that
# the short ones fill in at the end instead of one process finishing a long file alone. (xdist's own order is by
# the number of tests in a file, which says little about how long it runs.)
LONGEST_FIRST = ("test_train.py", "test_server.py", "test_evaluate.py", "test_deploy.py", "test_demo.py",
                 "test_playground.py", "test_archive.py", "test_client.py", "test_hand.py")
# Files that use the session's `server` run in the process of the file named here, so that it starts once.
SAME_PROCESS = {"test_dataset.py": "test_server.py", "test_bench.py": "test_server.py"}


def pytest_collection_modifyitems(items: list) -> None:
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(SAME_PROCESS.get(item.path.name, item.path.name), len(order)))


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, in the collection's order, with the SAME_PROCESS files as one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = Path(super()._split_scope(nodeid))
            return str(path.with_name(SAME_PROCESS.get(path.name, path.name)))

    config.option.loadscopereorder = False
    return Scheduling(config, log)
