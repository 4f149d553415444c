"""Shared fixtures: MNIST location, one tiny real training run, a handler with a hand-made context."""
import os
import shutil
from pathlib import Path

import pytest
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"


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


def model_dir_from(run_dir: Path, target: Path) -> Path:
    """Lays out a model directory the way TorchServe unpacks a .mar."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("generator.pt", "generator.json"):
        shutil.copy(run_dir / name, target / name)
    for name in ("generator.py", "mnist_gan_handler.py", "request_contract.py"):
        shutil.copy(HANDLER_DIR / name, target / name)
    return target


def make_context(model_dir: Path) -> Context:
    import ts

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "mnist_gan", "serializedFile": "generator.pt",
                          "modelFile": "generator.py", "handler": "mnist_gan_handler.py"}}
    return Context("mnist_gan", str(model_dir), manifest, 8, None, "0.12.0", metrics=metrics, model_yaml_config={})


class HandlerClient:
    """Calls the handler the way TorchServe's worker does: a batch of input rows plus their headers."""

    def __init__(self, model_dir: Path) -> None:
        from mnist_gan_handler import DigitGANHandler

        self.context = make_context(model_dir)
        self.handler = DigitGANHandler()
        self.handler.initialize(self.context)

    def batch(self, rows: list[dict], content_types: list) -> list[tuple[int, dict | bytes]]:
        import orjson

        self.context.request_processor = [RequestProcessor({"body": {"content-type": ct}} if ct else {})
                                          for ct in content_types]
        self.context.request_ids = {i: f"req-{i}" for i in range(len(rows))}
        outputs = self.handler.handle(rows, self.context)
        assert len(outputs) == len(rows)
        results = []
        for idx, body in enumerate(outputs):
            assert self.context.get_response_content_type(idx) == "application/json"
            code = self.context.get_response_status(idx)[0]
            results.append((code, orjson.loads(body)))
        return results

    def post(self, body, content_type: str | None = "application/json") -> tuple[int, dict]:
        """One request; `body` is what TorchServe's worker hands over (parsed JSON or raw bytes)."""
        return self.batch([{"body": body}], [content_type])[0]


@pytest.fixture(scope="session")
def handler_client(tiny_run, tmp_path_factory) -> HandlerClient:
    return HandlerClient(model_dir_from(tiny_run, tmp_path_factory.mktemp("model_dir")))


@pytest.fixture(scope="session")
def tutorial_handler_client(tiny_tutorial_run, tmp_path_factory) -> HandlerClient:
    return HandlerClient(model_dir_from(tiny_tutorial_run, tmp_path_factory.mktemp("tutorial_model_dir")))
