"""Deployment, checked offline: the Kubernetes manifests against the real API schemas, the KServe
bundle's layout, and the Open Inference Protocol (KServe v2) path against a real TorchServe.

What this cannot check (no cluster, no container engine here): that the image builds, that the
pods schedule and the probes pass in a cluster, and KServe's own controller and wrapper.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from scripts.kserve_bundle import REQUIRED_KEYS, build_bundle, read_properties
from scripts.server import MODEL_NAME, TorchServe, free_ports

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The Kubernetes release whose OpenAPI schemas the manifests must pass (strict: unknown fields fail).
K8S_VERSION = "1.30.0"


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


MANIFESTS = manifests()
KUBERNETES = [(name, doc) for name, doc in MANIFESTS if doc["apiVersion"] != "serving.kserve.io/v1beta1"]
INFERENCE_SERVICES = [doc for _, doc in MANIFESTS if doc["kind"] == "InferenceService"]


def test_deploy_has_every_kind():
    kinds = sorted(doc["kind"] for _, doc in MANIFESTS)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"])


@pytest.mark.parametrize("name,doc", KUBERNETES, ids=[n for n, _ in KUBERNETES])
def test_manifest_passes_the_kubernetes_schema(name, doc):
    import kubernetes_validate

    # Raises ValidationError (with the offending path) unless the document matches the schema.
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught_by_the_validator():
    """The validator really checks: a typo and a wrong type both fail."""
    import kubernetes_validate

    deployment = next(doc for _, doc in KUBERNETES if doc["kind"] == "Deployment")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["replicas"] = "two"
    for doc in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _container(deployment: dict) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "torchserve"]
    return container


def test_deployment_probes_use_the_token_and_the_service_stays_internal():
    docs = {doc["kind"]: doc for _, doc in KUBERNETES}
    container = _container(docs["Deployment"])
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "key_file.json" in command and "/ping" in command  # the real health endpoint, with the key
    assert docs["Service"]["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in docs["Service"]["spec"]["ports"]] == ["inference"]  # no management port
    config = docs["ConfigMap"]["data"]["config.properties"]
    props = dict(line.split("=", 1) for line in config.splitlines() if line and not line.startswith("#"))
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["management_address"].startswith("http://127.0.0.1:")  # management never leaves the pod
    limits, requests_ = container["resources"]["limits"], container["resources"]["requests"]
    assert requests_["cpu"] == limits["cpu"] == "2"  # one worker per core, 2 workers
    assert props["default_workers_per_model"] == "2"
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


# The InferenceService is a KServe CRD, not in kubernetes-validate's schemas: this hand-written
# JSON schema covers exactly the fields the manifest uses (names and types from KServe's v1beta1 API).
INFERENCE_SERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False, "properties": {
            "predictor": {"type": "object", "required": ["pytorch"], "additionalProperties": False, "properties": {
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                "scaleTarget": {"type": "integer", "minimum": 1},
                "containerConcurrency": {"type": "integer", "minimum": 0},
                "timeout": {"type": "integer", "minimum": 1},
                "pytorch": {"type": "object", "required": ["storageUri", "protocolVersion"],
                            "additionalProperties": False, "properties": {
                                "storageUri": {"type": "string", "minLength": 1},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                                "runtimeVersion": {"type": "string"},
                                "image": {"type": "string", "minLength": 1},
                                "resources": {"type": "object", "additionalProperties": False, "properties": {
                                    "requests": {"type": "object"}, "limits": {"type": "object"}}},
                                "env": {"type": "array", "items": {
                                    "type": "object", "required": ["name"], "additionalProperties": False,
                                    "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
                            }}}}}},
    },
}


def test_inference_service_matches_the_fields_it_uses():
    import jsonschema  # installed with kubernetes-validate

    (isvc,) = INFERENCE_SERVICES
    jsonschema.validate(isvc, INFERENCE_SERVICE_SCHEMA)
    pytorch = isvc["spec"]["predictor"]["pytorch"]
    assert pytorch["protocolVersion"] == "v2"
    # KServe reads config/config.properties and model-store/ from under storageUri.
    assert pytorch["storageUri"].rstrip("/").endswith("kserve")
    # Container quantities are checked against the real Kubernetes schema, inside a Pod.
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [{"name": "c", "image": "x", "resources": pytorch["resources"]}]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**isvc, "spec": {"predictor": {"pytorch": {**pytorch, "protocol": "v2"}}}},
                            INFERENCE_SERVICE_SCHEMA)


@pytest.fixture(scope="module")
def mar_store(tiny_store) -> Path:
    return tiny_store


def test_kserve_bundle_layout(mar_store, tmp_path):
    out = build_bundle(mar_store / f"{MODEL_NAME}.mar", tmp_path / "kserve")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["config/config.properties", f"model-store/{MODEL_NAME}.mar"]
    assert (out / "model-store" / f"{MODEL_NAME}.mar").read_bytes() == (mar_store / f"{MODEL_NAME}.mar").read_bytes()
    props = read_properties(out / "config" / "config.properties")
    assert set(REQUIRED_KEYS) <= set(props)
    assert props["enable_envvars_config"] == "true" and props["service_envelope"] == "kservev2"
    assert props["inference_address"] == "http://127.0.0.1:8085"  # KServe's wrapper owns 8080
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["enable_model_api"] == "false"
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 1
    version = snapshot["models"][MODEL_NAME]["1.0"]
    assert version["marName"] == f"{MODEL_NAME}.mar" and version["defaultVersion"] is True
    assert version["batchSize"] == 1  # the kservev2 envelope only reads a batch's first request


def test_kserve_bundle_refuses_a_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="make archive"):
        build_bundle(tmp_path / "nope.mar", tmp_path / "kserve")
    assert not (tmp_path / "kserve").exists()


# --- the Open Inference Protocol (KServe v2) against a real TorchServe -----------------------

def v2_body(**fields) -> dict:
    return {"id": "req-1", "inputs": [{"name": name, "datatype": "INT64", "shape": [1], "data": [value]}
                                      for name, value in fields.items()]}


class V2TorchServe(TorchServe):
    """The project's TorchServe, ready once a v2 request answers (the envelope refuses plain JSON)."""

    @property
    def v2_url(self) -> str:
        return f"{self.inference_url}/v2/models/{MODEL_NAME}/infer"

    def probe(self) -> requests.Response:
        return requests.post(self.v2_url, json=v2_body(count=1, seed=0), headers=self.headers(), timeout=10)


ENVELOPE_SETTINGS = {
    # As KServe's runtime does it: enable_envvars_config=true plus TS_SERVICE_ENVELOPE in the environment.
    "env": ({"enable_envvars_config": "true"}, {"TS_SERVICE_ENVELOPE": "kservev2"}),
    # As the bundle's config.properties says it.
    "config": ({"service_envelope": "kservev2"}, {}),
}


@pytest.fixture(scope="module", params=sorted(ENVELOPE_SETTINGS))
def v2_server(request, mar_store, tmp_path_factory):
    overrides, env = ENVELOPE_SETTINGS[request.param]
    with V2TorchServe(tmp_path_factory.mktemp("torchserve_v2"), mar_store, ports=tuple(free_ports(4)),
                      overrides=overrides, env=env) as ts:
        yield ts
    assert ts.pid() is None


@pytest.mark.integration
def test_v2_infer_returns_open_inference_protocol_images(v2_server):
    reply = requests.post(v2_server.v2_url, json=v2_body(count=3, seed=5, digit=7), headers=v2_server.headers(),
                          timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "1.0" and body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "images" and output["datatype"] == "FP64"
    assert output["shape"] == [3 * 28 * 28]  # the envelope flattens; clients reshape to count x 28 x 28
    images = np.asarray(output["data"]).reshape(3, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    # Same seed, same images: the v2 route gives exactly the plain contract's numbers.
    again = requests.post(v2_server.v2_url, json=v2_body(seed=5, digit=7, count=3), headers=v2_server.headers(),
                          timeout=30).json()["outputs"][0]["data"]
    assert again == output["data"]
    # Every input is optional: defaults as in the plain contract (count 1, random seed).
    reply = requests.post(v2_server.v2_url, json=v2_body(digit=2), headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["shape"] == [784]


@pytest.mark.integration
def test_v2_gives_the_plain_contracts_numbers(v2_server, handler_client):
    """handler_client serves the same tiny run's weights through the plain JSON contract."""
    status, plain = handler_client.post({"count": 2, "seed": 9, "digit": 1})
    assert status == 200
    reply = requests.post(v2_server.v2_url, json=v2_body(count=2, seed=9, digit=1), headers=v2_server.headers(),
                          timeout=30)
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(np.asarray(reply.json()["outputs"][0]["data"]).reshape(2, 28, 28),
                                  np.asarray(plain["images"]))


BAD_V2 = [
    ("count-too-big", v2_body(count=1000), "'count' must be an integer from 1 to 256, got 1000"),
    ("float-count", {"inputs": [{"name": "count", "datatype": "FP32", "shape": [1], "data": [2.5]}]},
     "must have datatype INT64"),
    ("unknown-input", v2_body(colour=3), "unknown field(s) 'colour'"),
    ("two-values", {"inputs": [{"name": "count", "datatype": "INT64", "shape": [2], "data": [1, 2]}]},
     "must hold one value"),
    ("digit-out-of-range", v2_body(digit=10), "'digit' must be an integer from 0 to 9"),
    ("no-inputs-key", {"count": 4}, "'inputs' list"),
    ("empty-inputs", {"inputs": []}, "non-empty list"),
    ("input-not-object", {"inputs": [5]}, "must be an object"),
    ("shape-mismatch", {"inputs": [{"name": "count", "datatype": "INT64", "shape": [3], "data": [1]}]},
     "not a valid Open Inference Protocol request"),
]


@pytest.mark.integration
@pytest.mark.parametrize("case_id,body,message", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_request_gets_400_with_message(v2_server, case_id, body, message):
    reply = requests.post(v2_server.v2_url, json=body, headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["message"]
    good = requests.post(v2_server.v2_url, json=v2_body(count=1, seed=1), headers=v2_server.headers(), timeout=30)
    assert good.status_code == 200


@pytest.mark.integration
def test_v2_body_that_is_not_json_gets_400(v2_server):
    reply = requests.post(v2_server.v2_url, data=b"{not json", headers={**v2_server.headers(),
                                                                        "Content-Type": "application/json"},
                          timeout=30)
    assert 400 <= reply.status_code < 500, reply.text


@pytest.mark.integration
def test_plain_json_under_the_envelope_gets_400(v2_server):
    reply = requests.post(v2_server.predict_url, json={"count": 2}, headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 400 and "'inputs' list" in reply.json()["message"]


@pytest.mark.integration
def test_v2_needs_the_inference_token(v2_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, v2_server.headers("management")):
        reply = requests.post(v2_server.v2_url, json=v2_body(count=1), headers=headers, timeout=30)
        assert reply.status_code == 400 and "Token Authorization failed" in reply.text
