"""The handler in-process, called the way TorchServe's worker calls it: used by the unit tests
and by the benchmark's in-process measurement (no server, no HTTP)."""
import shutil
import sys
from pathlib import Path
from typing import Optional

import orjson
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from scripts.archive import HANDLER_DIR, ONNX_FILE, export_onnx
from train.artifacts import load_generator

MODEL_DIR_FILES = ("generator.py", "mnist_gan_handler.py", "request_contract.py")


def model_dir_from(run_dir: Path, target: Path) -> Path:
    """Lays out a model directory the way TorchServe unpacks a .mar."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("generator.pt", "generator.json"):
        shutil.copy(Path(run_dir) / name, target / name)
    for name in MODEL_DIR_FILES:
        shutil.copy(HANDLER_DIR / name, target / name)
    export_onnx(load_generator(target / "generator.pt", target / "generator.json")[0], target / ONNX_FILE)
    return target


def make_context(model_dir: Path, batch_size: int = 8, model_yaml_config: Optional[dict] = None) -> Context:
    import ts

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "mnist_gan"  # as TorchServe's worker sets it
    manifest = {"model": {"modelName": "mnist_gan", "serializedFile": "generator.pt",
                          "modelFile": "generator.py", "handler": "mnist_gan_handler.py"}}
    return Context("mnist_gan", str(model_dir), manifest, batch_size, None, "0.12.0", metrics=metrics,
                   model_yaml_config=model_yaml_config or {})


class LocalHandler:
    """initialize() once, then handle() batches of rows plus their per-request headers."""

    def __init__(self, model_dir: Path, model_yaml_config: Optional[dict] = None) -> None:
        if str(model_dir) not in sys.path:
            sys.path.insert(0, str(model_dir))  # TorchServe puts the model dir on the path too
        from mnist_gan_handler import DigitGANHandler

        self.context = make_context(model_dir, model_yaml_config=model_yaml_config)
        self.handler = DigitGANHandler()
        self.handler.initialize(self.context)

    def handle_raw(self, rows: list[dict], content_types: list[Optional[str]]) -> list[bytes]:
        self.context.request_processor = [RequestProcessor({"body": {"content-type": ct}} if ct else {})
                                          for ct in content_types]
        self.context.request_ids = {i: f"req-{i}" for i in range(len(rows))}
        self.context.metrics.request_ids = self.context.request_ids  # as TorchServe's service.predict does
        return self.handler.handle(rows, self.context)

    def batch(self, rows: list[dict], content_types: list[Optional[str]]) -> list[tuple[int, dict]]:
        """(status, parsed JSON body) per request."""
        outputs = self.handle_raw(rows, content_types)
        assert len(outputs) == len(rows)
        results = []
        for idx, body in enumerate(outputs):
            assert self.context.get_response_content_type(idx) == "application/json"
            results.append((self.context.get_response_status(idx)[0], orjson.loads(body)))
        return results

    def post(self, body, content_type: Optional[str] = "application/json") -> tuple[int, dict]:
        """One request; `body` is what TorchServe's worker hands over (parsed JSON or raw bytes)."""
        return self.batch([{"body": body}], [content_type])[0]
