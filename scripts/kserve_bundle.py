"""Lays out the model the way KServe's TorchServe predictor reads it from storageUri:

    artifacts/kserve/config/config.properties
    artifacts/kserve/model-store/mnist_gan.mar

    python -m scripts.kserve_bundle [--mar model_store/mnist_gan.mar] [--out artifacts/kserve]

Upload artifacts/kserve/ to the bucket/PVC that deploy/inferenceservice.yaml's storageUri names.
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "mnist_gan"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri's contents

# KServe's documented TorchServe config (pytorch/serve kubernetes/kserve/README.md), tightened:
# - inference on 8085: KServe's wrapper in the same container owns 8080 and forwards to 8085.
# - Everything TorchServe serves binds to 127.0.0.1: only that wrapper, in the same container, calls
#   it. The wrapper sends no Authorization header (pytorch/serve#3301), so TorchServe's token auth is
#   off here and authorization is KServe's job (Istio/Knative in front of the wrapper; see deploy/README.md).
# - enable_envvars_config=true: KServe's runtime sets TS_SERVICE_ENVELOPE=kservev2 for protocolVersion v2;
#   service_envelope=kservev2 says the same in the file, so the bundle works with either.
# - batchSize 1: the kservev2 envelope only reads the first request of a batch.
SNAPSHOT = {
    "name": "startup.cfg",
    "modelCount": 1,
    "models": {MODEL_NAME: {"1.0": {
        "defaultVersion": True, "marName": f"{MODEL_NAME}.mar",
        "minWorkers": 2, "maxWorkers": 2, "batchSize": 1, "maxBatchDelay": 2, "responseTimeout": 30,
    }}},
}
CONFIG = {
    "inference_address": "http://127.0.0.1:8085",
    "management_address": "http://127.0.0.1:8085",
    # Prometheus scraping (KServe's prometheus.kserve.io/port annotation): read-only, no inference.
    "metrics_address": "http://0.0.0.0:8082",
    "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1",
    "enable_metrics_api": "true",
    "metrics_format": "prometheus",
    "metrics_mode": "prometheus",
    "enable_envvars_config": "true",
    "service_envelope": "kservev2",
    "disable_token_authorization": "true",
    "enable_model_api": "false",
    "install_py_dep_per_model": "false",
    "number_of_netty_threads": "2",
    "netty_client_threads": "2",
    "job_queue_size": "256",
    "max_request_size": "65536",
    # v2 responses are JSON tensors (json.dumps): count=256 is ~1.7 MB.
    "max_response_size": "8388608",
    "default_response_timeout": "30",
    "model_store": f"{MOUNT}/model-store",
    "model_snapshot": json.dumps(SNAPSHOT, separators=(",", ":")),
}
REQUIRED_KEYS = ("inference_address", "management_address", "metrics_address", "enable_envvars_config",
                 "service_envelope", "model_store", "model_snapshot", "disable_token_authorization",
                 "enable_model_api")


def render_config() -> str:
    header = ("# TorchServe inside KServe (written by `make kserve-bundle`; see deploy/README.md).\n"
              "# Loopback only: KServe's wrapper (port 8080, same container) is the only caller; token auth\n"
              "# is off because that wrapper cannot send a token, and authorization happens in front of KServe.\n")
    return header + "".join(f"{key}={value}\n" for key, value in CONFIG.items())


def read_properties(path: Path) -> dict[str, str]:
    """A config.properties as TorchServe (java.util.Properties) and KServe's wrapper read it."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: not a key=value line: {line!r}")
            props[key.strip()] = value.strip()
    return props


def build_bundle(mar: Path, out: Path) -> Path:
    """Writes <out>/config/config.properties and <out>/model-store/<name>.mar; replaces `out` whole."""
    mar, out = Path(mar), Path(out)
    if not mar.is_file():
        raise FileNotFoundError(f"{mar} does not exist: run `make archive` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        (staging / "config").mkdir()
        (staging / "model-store").mkdir()
        (staging / "config" / "config.properties").write_text(render_config())
        shutil.copyfile(mar, staging / "model-store" / f"{MODEL_NAME}.mar")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # never a half-written bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Lay out the KServe bundle (config + model store).")
    parser.add_argument("--mar", type=Path, default=ROOT / "model_store" / f"{MODEL_NAME}.mar")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "kserve")
    args = parser.parse_args()
    try:
        out = build_bundle(args.mar, args.out)
    except FileNotFoundError as error:
        raise SystemExit(f"kserve-bundle: {error}")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
