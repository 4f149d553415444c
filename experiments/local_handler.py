"""The handler in-process, loaded and called by TorchServe's own worker code: used by the unit tests
and by the benchmark's in-process measurement (no server, no HTTP).

A request travels as it does inside a real worker: encoded in the frontend's binary frame, decoded by
`ts.protocol.otf_message_handler`, handed to the handler by `ts.service.Service.predict` (which also
turns exceptions into 503s and checks the batch size), and encoded back into the worker's reply
frame. Only the Java frontend is stood in for: `frontend_frame` writes what it would send (the body
as one "body" parameter whose content type is the header's media type, and every header).
"""
import io
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import orjson
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.protocol import otf_message_handler

JSON = "application/json"


def unpack_archive(mar: Path, target: Path, model_yaml_config: Optional[dict] = None) -> Path:
    """Extracts a .mar as TorchServe does; `model_yaml_config` is merged into its model-config.yaml."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(target)
    return _merge_model_config(target, model_yaml_config)


def copy_model_dir(model_dir: Path, target: Path, model_yaml_config: Optional[dict] = None) -> Path:
    """Another model directory with the same files, its model config merged with `model_yaml_config`."""
    shutil.copytree(model_dir, target)
    return _merge_model_config(target, model_yaml_config)


def _merge_model_config(model_dir: Path, changes: Optional[dict]) -> Path:
    if changes:
        path = model_dir / "model-config.yaml"
        config = yaml.safe_load(path.read_text()) or {}
        for key, value in changes.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        path.write_text(yaml.safe_dump(config))
    return model_dir


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else bytes(value)
    return struct.pack("!i", len(data)) + data


def frontend_frame(requests: list[tuple[bytes, dict[str, str]]]) -> bytes:
    """A batch of (body, headers) as TorchServe's frontend sends it to a worker (after the command byte)."""
    frame = b""
    for idx, (body, headers) in enumerate(requests):
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        frame += _string(f"req-{idx}")
        for name, value in headers.items():
            frame += _string(name) + _string(value)
        frame += struct.pack("!i", -1)
        media_type = content_type.split(";")[0].strip().lower()  # the frontend drops parameters
        frame += _string("body") + _string(media_type) + _string(body) + struct.pack("!i", -1)
    return frame + struct.pack("!i", -1)


class Reply(NamedTuple):
    status: int
    content_type: Optional[str]
    body: bytes

    def json(self):
        return orjson.loads(self.body)


def _read_reply(frame: bytes) -> list[Reply]:
    """The worker's reply frame (ts.protocol.otf_message_handler.create_predict_response), as the frontend reads it."""
    reader = io.BytesIO(frame)

    def integer() -> int:
        return struct.unpack("!i", reader.read(4))[0]

    def string() -> bytes:
        return reader.read(integer())

    code, message = integer(), string()
    replies = []
    while (length := integer()) != -1:
        reader.read(length)  # the request id
        content_type = string().decode() or None
        status = integer()
        string()  # the reason phrase
        for _ in range(integer()):  # response headers
            string(), string()
        body = string()
        replies.append(Reply(status if code == 200 else code, content_type, body if code == 200 else message))
    return replies


class _Socket:
    """What otf_message_handler reads from: recv(n)."""

    def __init__(self, data: bytes) -> None:
        self.reader = io.BytesIO(data)

    def recv(self, length: int) -> bytes:
        return self.reader.read(length)


class LocalHandler:
    """A model directory loaded as TorchServe's worker loads it; `batch` sends requests through it."""

    def __init__(self, model_dir: Path, batch_size: int = 8, model_name: Optional[str] = None) -> None:
        """`model_name`: the name the model is registered under (the archive's own by default; the hand route's
        to load the worker that route gets)."""
        import ts

        if str(model_dir) not in sys.path:
            sys.path.insert(0, str(model_dir))  # TorchServe puts the model dir on the path too
        metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
        metrics.initialize_cache()
        manifest = orjson.loads((Path(model_dir) / "MAR-INF" / "MANIFEST.json").read_bytes())
        model_name = model_name or manifest["model"]["modelName"]
        metrics.model_name = model_name  # as TorchServe's worker sets it
        self.service = TsModelLoader().load(model_name, str(model_dir),
                                            manifest["model"]["handler"], None, batch_size, None, True, metrics)
        self.service.set_cl_socket(None)
        self.context = self.service.context
        self.handler = self.service._entry_point.__self__  # the loader hands over the bound handle()

    def batch(self, requests: list[tuple[bytes, dict[str, str]]]) -> list[Reply]:
        """(raw body, headers) per request, handled as one TorchServe batch: a Reply per request."""
        batch = otf_message_handler._retrieve_inference_msg(_Socket(frontend_frame(requests)))
        replies = _read_reply(bytes(self.service.predict(batch)))
        assert len(replies) == len(requests)
        return replies

    def request(self, body: bytes, content_type: Optional[str] = JSON, accept: Optional[str] = None) -> Reply:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        return self.batch([(body, headers)])[0]

    def post(self, fields, content_type: Optional[str] = JSON, accept: Optional[str] = None) -> tuple[int, dict]:
        """One request (`fields` as JSON, or raw bytes): (status, the parsed JSON answer)."""
        body = fields if isinstance(fields, (bytes, bytearray)) else orjson.dumps(fields)
        reply = self.request(bytes(body), content_type, accept)
        assert reply.content_type == JSON, reply
        return reply.status, reply.json()
