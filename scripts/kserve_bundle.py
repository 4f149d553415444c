"""Lays out the model the way KServe's TorchServe predictor reads it from storageUri:

    artifacts/kserve/config/config.properties
    artifacts/kserve/model-store/mnist_gan.mar

    python -m scripts.kserve_bundle [--store model_store] [--out artifacts/kserve]

Upload artifacts/kserve/ to the bucket/PVC that deploy/inferenceservice.yaml's storageUri names.
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from scripts import CONFIG, MODEL_NAME, ROOT, hand_route, read_model_config, read_properties

MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri's contents


def model_snapshot() -> dict:
    """Registers the archive the way KServe's TorchServe reads it, as config.properties does: under its own name
    (digits) and the hand route's (hands), with handler/model-config.yaml's workers."""
    model_config = read_model_config()
    version = {key: model_config[key] for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout")}
    # batchSize 1 whatever the plain route uses: the kservev2 envelope only reads a batch's first request.
    version.update(defaultVersion=True, marName=f"{MODEL_NAME}.mar", batchSize=1)
    routes = (MODEL_NAME, hand_route())
    return {"name": "startup.cfg", "modelCount": len(routes), "models": {route: {"1.0": version} for route in routes}}


# The bundle's config is the repository's config.properties with these changes, for KServe's documented
# TorchServe layout (pytorch/serve kubernetes/kserve/README.md):
OVERRIDES = {
    # KServe's wrapper in the same container owns 8080 and forwards to 8085. Only it calls TorchServe,
    # so everything stays on 127.0.0.1.
    "inference_address": "http://127.0.0.1:8085",
    "management_address": "http://127.0.0.1:8085",
    # Prometheus scraping (KServe's prometheus.kserve.io/port annotation): read-only, no inference.
    "metrics_address": "http://0.0.0.0:8082",
    "enable_metrics_api": "true",
    "metrics_format": "prometheus",
    # KServe's runtime sets TS_SERVICE_ENVELOPE=kservev2 for protocolVersion v2; the file says the same.
    "enable_envvars_config": "true",
    "service_envelope": "kservev2",
    # The wrapper sends no Authorization header (pytorch/serve#3301): TorchServe's token cannot stay on;
    # authorization is KServe's (Istio/Knative in front of the wrapper; see deploy/README.md).
    "disable_token_authorization": "true",
    # v2 responses are JSON tensors written with json.dumps: larger than the plain route's.
    "max_response_size": "8388608",
    "model_store": f"{MOUNT}/model-store",
}
REMOVED = ("load_models",)  # the model_snapshot registers the model instead
REQUIRED_KEYS = ("inference_address", "management_address", "metrics_address", "enable_envvars_config",
                 "service_envelope", "model_store", "model_snapshot", "disable_token_authorization",
                 "enable_model_api")


def render_config() -> str:
    """config.properties with OVERRIDES applied, REMOVED dropped and the model_snapshot added (the
    repository's comments explain the repository's values, so they are not copied)."""
    props = {key: value for key, value in read_properties(CONFIG).items() if key not in REMOVED}
    props.update(OVERRIDES, model_snapshot=json.dumps(model_snapshot(), separators=(",", ":")))
    header = ("# TorchServe inside KServe, written by `make kserve-bundle` from config.properties (see\n"
              "# scripts/kserve_bundle.py for each change and deploy/README.md for the route).\n")
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


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
    parser.add_argument("--store", type=Path, default=ROOT / "model_store", help="the model store holding mnist_gan.mar")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "kserve")
    args = parser.parse_args()
    try:
        out = build_bundle(args.store / f"{MODEL_NAME}.mar", args.out)
    except FileNotFoundError as error:
        raise SystemExit(f"kserve-bundle: {error}")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
