"""Deployment, checked offline: the Kubernetes manifests against the real API schemas, the pod's own
configs run for real (HAProxy in front of TorchServe, two "pods" on loopback), the KServe bundle's
layout and config, and the Open Inference Protocol (KServe v2) path against a real TorchServe.

What this cannot check (no cluster, no container engine here): that the image builds, that the
pods schedule and the probes pass in a cluster, and KServe's own controller and wrapper.
"""
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pytest
import requests
import yaml

from cases import STROKE, THREE, hand_body, noisy_photo
from scripts import CONFIG, MODEL_NAME, ROOT, hand_route, parse_properties, read_model_config, read_properties
from scripts.kserve_bundle import REQUIRED_KEYS, build_bundle
from scripts.server import TorchServe, free_ports

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


def _container(deployment: dict, name: str) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def configmap_data() -> dict[str, str]:
    return next(doc for _, doc in KUBERNETES if doc["kind"] == "ConfigMap")["data"]


# The ConfigMap's config.properties is the repository's with exactly these keys changed (its header says why).
POD_CONFIG_CHANGES = {"inference_address", "disable_token_authorization", "model_store", "vmargs"}


def test_pod_config_is_the_repositorys_with_only_the_listed_changes():
    pod, repository = parse_properties(configmap_data()["config.properties"]), read_properties(CONFIG)
    changed = {key for key in pod.keys() | repository.keys() if pod.get(key) != repository.get(key)}
    assert changed == POD_CONFIG_CHANGES
    # the name the tools post to, and the hand route's: two registrations of one archive
    assert repository["load_models"] == f"{MODEL_NAME}={MODEL_NAME}.mar,{hand_route()}={MODEL_NAME}.mar"
    header = (DEPLOY / "configmap.yaml").read_text().split("apiVersion:")[0]
    assert all(f"#   {key}" in header for key in POD_CONFIG_CHANGES)  # each change is explained
    assert all(pod[key].startswith("http://127.0.0.1:") for key in ("inference_address", "management_address",
                                                                    "metrics_address"))


def test_only_the_proxy_leaves_the_pod_and_the_token_comes_from_the_secret():
    docs = {doc["kind"]: doc for _, doc in KUBERNETES}
    deployment = docs["Deployment"]
    proxy, torchserve = _container(deployment, "proxy"), _container(deployment, "torchserve")
    assert "ports" not in torchserve  # nothing of TorchServe's is a pod port
    assert [p["containerPort"] for p in proxy["ports"]] == [8080]
    env = {e["name"]: e for e in proxy["env"]}
    assert env["CLIENT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mnist-gan-client-token", "key": "token"}
    inference = parse_properties(configmap_data()["config.properties"])["inference_address"]
    assert env["TORCHSERVE_ADDRESS"]["value"] == inference.removeprefix("http://")
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/ping"  # through the proxy to TorchServe's real health
    for probe in ("startupProbe", "livenessProbe"):  # TorchServe's own /ping, at the address it listens on
        assert f"'{inference}/ping'" in " ".join(torchserve[probe]["exec"]["command"])
    assert docs["Service"]["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in docs["Service"]["spec"]["ports"]] == ["http"]
    limits, requests_ = torchserve["resources"]["limits"], torchserve["resources"]["requests"]
    assert requests_["cpu"] == limits["cpu"] == str(read_model_config()["minWorkers"])  # each route's workers, a core each
    # The hand uploads a client may send a minute: the Deployment says it, the proxy falls back to the same number,
    # and the API's document gives it as the default.
    limit = env["HAND_UPLOADS_PER_MINUTE"]["value"]
    assert f'"${{HAND_UPLOADS_PER_MINUTE-{limit}}}"' in configmap_data()["haproxy.cfg"]
    assert f"({limit} by default)" in " ".join((ROOT / "docs" / "openapi.yaml").read_text().split())
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2


# --- two "pods" on loopback: the real HAProxy with deploy/'s haproxy.cfg in front of a real TorchServe
# with deploy/'s config.properties, each, as the Deployment runs them -----------------------------------

class PodTorchServe(TorchServe):
    """TorchServe as the pod runs it: no token (disable_token_authorization=true), loopback only."""

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {}


def start_proxy(config: Path, address: str, upstream: str, token: str, log: Path, **env: str) -> subprocess.Popen:
    """The pod's proxy with its Deployment's environment (and `env`: HAND_UPLOADS_PER_MINUTE, say)."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed: apt-get install haproxy (make install does)")
    env = {"PATH": os.environ["PATH"], "PROXY_ADDRESS": address, "TORCHSERVE_ADDRESS": upstream, "CLIENT_TOKEN": token,
           **env}
    process = subprocess.Popen([haproxy, "-f", str(config), "-db"], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"haproxy did not listen on {address}: {log.read_text()}")


class Pod(NamedTuple):
    url: str  # the pod port, as the Service reaches it
    server: PodTorchServe
    proxy_log: Path


@pytest.fixture(scope="module")
def pod_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def pods(mar_store, pod_token, tmp_path_factory):
    data = configmap_data()
    workdir = tmp_path_factory.mktemp("pods")
    (workdir / "config.properties").write_text(data["config.properties"])
    (workdir / "haproxy.cfg").write_text(data["haproxy.cfg"])
    with ExitStack() as stack:
        servers = [PodTorchServe(workdir / f"torchserve-{i}", mar_store, config=workdir / "config.properties",
                                 ports=tuple(free_ports(4))) for i in range(2)]
        with ThreadPoolExecutor(2) as pool:  # both JVMs start at once
            list(pool.map(lambda server: server.start(), servers))
        for server in servers:
            stack.callback(server.stop)
        result = []
        deployment = next(doc for _, doc in KUBERNETES if doc["kind"] == "Deployment")
        limit = {e["name"]: e["value"] for e in _container(deployment, "proxy")["env"] if "value" in e}
        for i, server in enumerate(servers):
            address, log = f"127.0.0.1:{free_ports(1)[0]}", workdir / f"haproxy-{i}.log"
            proxy = start_proxy(workdir / "haproxy.cfg", address, f"127.0.0.1:{server.ports[0]}", pod_token, log,
                                HAND_UPLOADS_PER_MINUTE=limit["HAND_UPLOADS_PER_MINUTE"])
            stack.callback(proxy.wait, 10)
            stack.callback(proxy.terminate)
            result.append(Pod(f"http://{address}", server, log))
        yield result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.integration
def test_one_client_token_works_on_every_pod(pods, pod_token):
    replies = [requests.post(f"{pods[i % 2].url}/predictions/{MODEL_NAME}", json={"count": 2, "seed": 3},
                             headers=bearer(pod_token), timeout=30) for i in range(6)]  # alternating pods
    assert [r.status_code for r in replies] == [200] * 6, [r.text[:200] for r in replies]
    assert len({r.content for r in replies}) == 1  # the same model and seed on both
    for pod in pods:  # each TorchServe really answered (its own access log)
        assert (pod.server.workdir / "logs" / "access_log.log").read_text().count("POST /predictions/mnist_gan") >= 3


@pytest.mark.integration
@pytest.mark.parametrize("case", ["missing", "wrong-token", "other-scheme", "token-prefix", "empty-bearer",
                                  "another-servers-key"])
def test_missing_or_wrong_credential_gets_401_from_every_pod(pods, pod_token, case):
    headers = {"missing": {}, "wrong-token": bearer(secrets.token_hex(32)), "other-scheme": {"Authorization": f"Basic {pod_token}"},
               "token-prefix": bearer(pod_token[:-1]), "empty-bearer": {"Authorization": "Bearer "},
               # A TorchServe key (the kind each pod's TorchServe would make for itself): not the cluster credential.
               "another-servers-key": bearer("AlXIhwRz")}[case]
    for pod in pods:
        reply = requests.post(f"{pod.url}/predictions/{MODEL_NAME}", json={"count": 1}, headers=headers, timeout=30)
        assert reply.status_code == 401, reply.text
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.json()["code"] == 401 and "Authorization: Bearer" in reply.json()["error"]


@pytest.mark.integration
def test_the_proxy_passes_only_the_prediction_route_and_the_health_probe(pods, pod_token):
    pod = pods[0]
    ping = requests.get(f"{pod.url}/ping", timeout=30)  # what the kubelet's probe sends: no credential
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"  # TorchServe's own answer
    for path in ("/models", "/api-description", f"/predictions/{MODEL_NAME}/2.0", "/metrics"):
        reply = requests.get(f"{pod.url}{path}", headers=bearer(pod_token), timeout=30)
        assert reply.status_code == 404 and reply.json()["code"] == 404, (path, reply.text)
    for method, path, allowed in (("GET", f"/predictions/{MODEL_NAME}", "POST"), ("PUT", f"/predictions/{MODEL_NAME}", "POST"),
                                  ("DELETE", f"/predictions/{MODEL_NAME}", "POST"), ("POST", "/ping", "GET"),
                                  ("GET", f"/predictions/{hand_route()}", "POST")):
        reply = requests.request(method, f"{pod.url}{path}", headers=bearer(pod_token), timeout=30)
        assert reply.status_code == 405 and reply.json()["code"] == 405, (method, path, reply.text)
        assert reply.headers["Allow"] == allowed
    bad = requests.post(f"{pod.url}/predictions/{MODEL_NAME}", json={"count": 0}, headers=bearer(pod_token), timeout=30)
    assert bad.status_code == 400 and "'count'" in bad.json()["error"]  # the handler's own errors pass through
    hand = requests.post(f"{pod.url}/predictions/{hand_route()}", data=hand_body(STROKE, digits="1"),
                         headers={**bearer(pod_token), "Content-Type": "application/json"}, timeout=30)
    assert hand.status_code == 200 and np.asarray(hand.json()["images"]).shape == (1, 1, 28, 28)  # the hand route passes


@pytest.mark.integration
def test_a_hands_photo_up_to_the_limit_passes_the_proxy_and_a_larger_body_gets_its_413_message(pods, pod_token):
    url, headers = f"{pods[1].url}/predictions/{hand_route()}", {**bearer(pod_token), "Content-Type": "application/json"}
    limit = int(parse_properties(configmap_data()["config.properties"])["max_request_size"])
    photo = hand_body(noisy_photo(1000))
    assert 900_000 < len(photo) <= limit
    reply = requests.post(url, data=photo, headers=headers, timeout=60)
    assert reply.status_code == 200 and np.asarray(reply.json()["images"]).shape == (1, 10, 28, 28), reply.text[:200]
    reply = requests.post(url, data=b" " * (limit + 1), headers=headers, timeout=60)
    assert reply.status_code == 413 and reply.json() == {"code": 413, "error": reply.json()["error"]}
    assert f"over 1 MiB ({limit} bytes)" in reply.json()["error"]


def send_from(address: str, source: str, path: str, body: bytes, token: str) -> tuple[int, Optional[str], dict]:
    """POSTs `body` to the proxy at `address` from the client address `source` (on loopback, any of 127.0.0.0/8):
    (status, Retry-After, the JSON answer)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), source_address=(source, 0), timeout=60)
    try:
        connection.request("POST", path, body=body, headers={**bearer(token), "Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.getheader("Retry-After"), json.loads(reply.read())
    finally:
        connection.close()


@pytest.mark.integration
def test_the_proxy_limits_hand_uploads_per_client_address_and_says_when_to_retry(pods, pod_token, tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(configmap_data()["haproxy.cfg"])
    upstream, hand, plain = f"127.0.0.1:{pods[0].server.ports[0]}", f"/predictions/{hand_route()}", f"/predictions/{MODEL_NAME}"
    address = f"127.0.0.1:{free_ports(1)[0]}"
    proxy = start_proxy(config, address, upstream, pod_token, tmp_path / "limited.log", HAND_UPLOADS_PER_MINUTE="3")
    try:
        upload = hand_body(STROKE, digits="1")
        assert [send_from(address, "127.0.0.1", hand, upload, pod_token)[0] for _ in range(3)] == [200] * 3
        status, retry_after, body = send_from(address, "127.0.0.1", hand, upload, pod_token)
        assert (status, retry_after) == (429, "20") and body["code"] == 429  # 60 s / 3 uploads
        assert "too many hand uploads from your address: at most 3 a minute" in body["error"]
        assert [send_from(address, "127.0.0.1", plain, b'{"count": 1}', pod_token)[0] for _ in range(5)] == [200] * 5
        assert send_from(address, "127.0.0.2", hand, upload, pod_token)[0] == 200  # another client's own count
    finally:
        proxy.terminate()
        proxy.wait(10)
    # Without the setting the proxy allows 30 a minute (cheap refusals count as uploads too).
    address = f"127.0.0.1:{free_ports(1)[0]}"
    proxy = start_proxy(config, address, upstream, pod_token, tmp_path / "default.log")
    try:
        statuses = [send_from(address, "127.0.0.3", hand, b'{"hand": 3}', pod_token)[0] for _ in range(31)]
        assert statuses == [400] * 30 + [429]
        assert send_from(address, "127.0.0.3", hand, upload, pod_token)[1] == "2"
    finally:
        proxy.terminate()
        proxy.wait(10)


@pytest.mark.integration
def test_the_token_is_never_logged(pods, pod_token):
    requests.post(f"{pods[0].url}/predictions/{MODEL_NAME}", json={"count": 1}, headers=bearer(pod_token), timeout=30)
    requests.post(f"{pods[0].url}/predictions/{MODEL_NAME}", json={"count": 1}, headers=bearer(pod_token[:-1]), timeout=30)
    logs = [pod.proxy_log for pod in pods] + [p for pod in pods for p in (pod.server.workdir / "logs").glob("*.log")]
    assert "POST /predictions/mnist_gan" in pods[0].proxy_log.read_text()  # the proxy does keep an access log
    for log in logs:
        assert pod_token[:16] not in log.read_text(), log


@pytest.mark.integration
def test_a_proxy_without_a_token_serves_nothing(pods, tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(configmap_data()["haproxy.cfg"])
    address = f"127.0.0.1:{free_ports(1)[0]}"
    for token in ("", "short"):
        proxy = start_proxy(config, address, f"127.0.0.1:{pods[0].server.ports[0]}", token, tmp_path / "log")
        try:
            for headers in ({}, bearer(token), {"Authorization": "Bearer"}):
                reply = requests.post(f"http://{address}/predictions/{MODEL_NAME}", json={"count": 1}, headers=headers,
                                      timeout=30)
                assert reply.status_code == 503 and "mnist-gan-client-token" in reply.json()["error"]
        finally:
            proxy.terminate()
            proxy.wait(10)


@pytest.mark.integration
def test_a_pod_whose_torchserve_stops_leaves_the_other_serving(pods, pod_token):
    # Runs last of the pod tests: stopping one server must stop that one only.
    pods[0].server.stop()
    assert pods[0].server.pid() is None and pods[1].server.pid() is not None
    down = requests.post(f"{pods[0].url}/predictions/{MODEL_NAME}", json={"count": 1}, headers=bearer(pod_token), timeout=30)
    assert down.status_code == 503  # the proxy's answer for a backend that is gone
    assert requests.get(f"{pods[0].url}/ping", timeout=30).status_code == 503  # readiness fails: no traffic sent here
    up = requests.post(f"{pods[1].url}/predictions/{MODEL_NAME}", json={"count": 1}, headers=bearer(pod_token), timeout=30)
    assert up.status_code == 200


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
    assert snapshot["modelCount"] == 2 and list(snapshot["models"]) == [MODEL_NAME, hand_route()]  # the two routes
    for route in snapshot["models"].values():
        version = route["1.0"]
        assert version["marName"] == f"{MODEL_NAME}.mar" and version["defaultVersion"] is True
        assert version["batchSize"] == 1  # the kservev2 envelope only reads a batch's first request


def test_kserve_bundle_refuses_a_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="make archive"):
        build_bundle(tmp_path / "nope.mar", tmp_path / "kserve")
    assert not (tmp_path / "kserve").exists()


# --- the Open Inference Protocol (KServe v2) against a real TorchServe -----------------------

def v2_body(**fields) -> dict:
    """An Open Inference Protocol request: each field a one-element tensor, BYTES for a string, else INT64."""
    return {"id": "req-1", "inputs": [{"name": name, "datatype": "BYTES" if isinstance(value, str) else "INT64",
                                       "shape": [1], "data": [value]} for name, value in fields.items()]}


class V2TorchServe(TorchServe):
    """The project's TorchServe, ready once a v2 request answers (the envelope refuses plain JSON)."""

    @property
    def v2_url(self) -> str:
        return f"{self.inference_url}/v2/models/{MODEL_NAME}/infer"

    @property
    def v2_hand_url(self) -> str:
        return f"{self.inference_url}/v2/models/{hand_route()}/infer"

    def probe(self) -> requests.Response:
        return requests.post(self.v2_url, json=v2_body(count=1, seed=0), headers=self.headers(), timeout=10)


class BundleTorchServe(V2TorchServe):
    """TorchServe started with the config.properties that `make kserve-bundle` writes (no token: loopback only)."""

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {}


@pytest.fixture(scope="module", params=["bundle", "env"])
def v2_server(request, mar_store, tmp_path_factory):
    if request.param == "bundle":  # the bundle's own config and layout, as KServe mounts them
        bundle = build_bundle(mar_store / f"{MODEL_NAME}.mar", tmp_path_factory.mktemp("bundle") / "kserve")
        server = BundleTorchServe(tmp_path_factory.mktemp("torchserve_bundle"), bundle / "model-store",
                                  config=bundle / "config" / "config.properties", ports=tuple(free_ports(4)))
    else:  # the repository's config with the envelope set as KServe's runtime does: env vars
        server = V2TorchServe(tmp_path_factory.mktemp("torchserve_v2"), mar_store, ports=tuple(free_ports(4)),
                              overrides={"enable_envvars_config": "true"}, env={"TS_SERVICE_ENVELOPE": "kservev2"})
    with server:
        yield server
    assert server.pid() is None


@pytest.mark.integration
def test_v2_infer_returns_open_inference_protocol_images(v2_server):
    reply = requests.post(v2_server.v2_url, json=v2_body(count=3, seed=5, digit=7), headers=v2_server.headers(),
                          timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "1.0" and body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "images" and output["datatype"] == "FP64"
    assert output["shape"] == [3, 28, 28]  # the real shape: the envelope alone would write [2352]
    images = np.asarray(output["data"]).reshape(output["shape"])
    assert images.min() >= 0 and images.max() <= 1
    # Same seed, same images: the v2 route gives exactly the plain contract's numbers.
    again = requests.post(v2_server.v2_url, json=v2_body(seed=5, digit=7, count=3), headers=v2_server.headers(),
                          timeout=30).json()["outputs"][0]["data"]
    assert again == output["data"]
    # Every input is optional: defaults as in the plain contract (count 1, random seed).
    reply = requests.post(v2_server.v2_url, json=v2_body(digit=2), headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["shape"] == [1, 28, 28]


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


@pytest.mark.integration
def test_v2_digits_input_draws_a_number_in_one_hand(v2_server, handler_client):
    reply = requests.post(v2_server.v2_url, json=v2_body(count=2, seed=9, digits="0905"), headers=v2_server.headers(),
                          timeout=30)
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    assert output["shape"] == [2, 4, 28, 28]
    plain = handler_client.post({"count": 2, "seed": 9, "digits": "0905"})[1]["images"]
    np.testing.assert_array_equal(np.asarray(output["data"]).reshape(output["shape"]), np.asarray(plain))


def v2_hand(image, digit: int, **fields) -> dict:
    """A v2 request with a hand: `image` as the FP32 [28, 28] input `hand` (flat, row-major), `hand_digit`, and `fields`."""
    body = v2_body(hand_digit=digit, **fields)
    body["inputs"].append({"name": "hand", "datatype": "FP32", "shape": [28, 28],
                           "data": np.asarray(image, dtype=np.float64).ravel().tolist()})
    return body


@pytest.mark.integration
def test_v2_hand_input_writes_the_number_as_the_plain_contract_does(v2_server, hand_client):
    reply = requests.post(v2_server.v2_hand_url, json=v2_hand(STROKE, 1, digits="42"), headers=v2_server.headers(),
                          timeout=30)
    assert reply.status_code == 200, reply.text
    outputs = {output["name"]: output for output in reply.json()["outputs"]}
    assert [(name, o["datatype"], o["shape"]) for name, o in outputs.items()] == [
        ("images", "FP64", [1, 2, 28, 28]), ("hand_copy", "FP64", [28, 28]), ("hand_error", "FP64", [1])]
    plain = hand_client.post(hand_body(STROKE, digits="42"))[1]
    np.testing.assert_array_equal(np.asarray(outputs["images"]["data"]).reshape(1, 2, 28, 28), np.asarray(plain["images"]))
    np.testing.assert_array_equal(np.asarray(outputs["hand_copy"]["data"]).reshape(28, 28), np.asarray(plain["hand"]["copy"]))
    assert outputs["hand_error"]["data"] == [plain["hand"]["error"]]


@pytest.mark.integration
def test_v2_hand_of_several_digits_writes_the_number_as_the_plain_contract_does(v2_server, hand_client):
    body = v2_body(hand_digits="111", digits="2026")
    body["inputs"].append({"name": "hand", "datatype": "FP32", "shape": [3, 28, 28],
                           "data": np.stack(THREE).astype(np.float64).ravel().tolist()})
    reply = requests.post(v2_server.v2_hand_url, json=body, headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 200, reply.text
    outputs = {output["name"]: output for output in reply.json()["outputs"]}
    assert [(name, o["shape"]) for name, o in outputs.items()] == [
        ("images", [1, 4, 28, 28]), ("hand_copy", [3, 28, 28]), ("hand_error", [3])]
    plain = hand_client.post(hand_body(np.stack(THREE), "111", digits="2026"))[1]
    np.testing.assert_array_equal(np.asarray(outputs["images"]["data"]).reshape(1, 4, 28, 28), np.asarray(plain["images"]))
    assert outputs["hand_error"]["data"] == plain["hand"]["error"]
    wrong = requests.post(v2_server.v2_url, json=body, headers=v2_server.headers(), timeout=30)
    assert wrong.status_code == 400 and f"/predictions/{hand_route()}" in wrong.json()["error"]


_NAN_IMAGE = np.zeros((28, 28))
_NAN_IMAGE[3, 4] = float("nan")  # requests writes it as NaN, which TorchServe's envelope (Python's json) reads

BAD_V2_HANDS = [
    ("hand-without-its-digit", {"inputs": v2_hand(STROKE, 1)["inputs"][1:]}, "input 'hand' goes with 'hand_digit'"),
    ("hand-digit-alone", v2_body(hand_digit=3), "input 'hand' goes with 'hand_digit'"),
    ("hand-as-integers", {"inputs": [{**v2_hand(STROKE, 1)["inputs"][1], "datatype": "INT64"}, v2_body(hand_digit=1)["inputs"][0]]},
     "input 'hand' must have datatype FP32"),
    ("hand-flat", {"inputs": [{**v2_hand(STROKE, 1)["inputs"][1], "shape": [784]}, v2_body(hand_digit=1)["inputs"][0]]},
     "input 'hand' must have shape [28, 28] (one digit, with 'hand_digit') or [k, 28, 28]"),
    ("hand-nan", v2_hand(_NAN_IMAGE, 1), "row 3, column 4 is nan"),
    ("hand-blank", v2_hand(np.zeros((28, 28)), 1), "nothing is drawn"),
    ("hand-digit-eleven", v2_hand(STROKE, 11), "'hand'.'digit' must be an integer from 0 to 9, got 11"),
    ("hand-count-2", v2_hand(STROKE, 1, count=2), "'count' must be 1 with 'hand'"),
    ("hand-given-twice", {"inputs": v2_hand(STROKE, 1)["inputs"] + v2_hand(STROKE, 1)["inputs"][1:]},
     "input 'hand' is given twice"),
    ("hand-digits-with-one-image", {"inputs": [v2_hand(STROKE, 1)["inputs"][1], *v2_body(hand_digits="11")["inputs"]]},
     "must be a list of 2 28x28 arrays"),
    ("plain-at-the-hand-route", v2_body(count=2), "needs 'hand'"),
]
BAD_V2 = [
    ("count-too-big", v2_body(count=1000), "'count' must be an integer from 1 to 256, got 1000"),
    ("float-count", {"inputs": [{"name": "count", "datatype": "FP32", "shape": [1], "data": [2.5]}]},
     "must have datatype INT64"),
    ("unknown-input", v2_body(colour=3), "unknown field(s) 'colour'"),
    ("two-values", {"inputs": [{"name": "count", "datatype": "INT64", "shape": [2], "data": [1, 2]}]},
     "must hold one value"),
    ("digit-out-of-range", v2_body(digit=10), "'digit' must be an integer from 0 to 9"),
    ("digits-as-integer", {"inputs": [{"name": "digits", "datatype": "INT64", "shape": [1], "data": [905]}]},
     "input 'digits' must have datatype BYTES"),
    ("digits-letter", v2_body(digits="9o5"), "got 'o' at position 2"),
    ("digit-and-digits", v2_body(digit=3, digits="3"), "not both"),
    ("no-inputs-key", {"count": 4}, "'inputs' list"),
    ("empty-inputs", {"inputs": []}, "non-empty list"),
    ("input-not-object", {"inputs": [5]}, "must be an object"),
    ("shape-mismatch", {"inputs": [{"name": "count", "datatype": "INT64", "shape": [3], "data": [1]}]},
     "not a valid Open Inference Protocol request"),
]


@pytest.mark.integration
@pytest.mark.parametrize("case_id,body,message,hands", [(*case, False) for case in BAD_V2] +
                         [(*case, True) for case in BAD_V2_HANDS], ids=[c[0] for c in BAD_V2 + BAD_V2_HANDS])
def test_bad_v2_request_gets_400_with_message(v2_server, case_id, body, message, hands):
    url = v2_server.v2_hand_url if hands else v2_server.v2_url
    reply = requests.post(url, data=json.dumps(body), timeout=30,  # json.dumps writes NaN; requests' json= won't
                          headers={**v2_server.headers(), "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"error": reply.json()["error"]} and message in reply.json()["error"]  # the protocol's body
    good = requests.post(v2_server.v2_url, json=v2_body(count=1, seed=1), headers=v2_server.headers(), timeout=30)
    assert good.status_code == 200


@pytest.mark.integration
def test_v2_body_that_is_not_json_gets_400(v2_server):
    reply = requests.post(v2_server.v2_url, data=b"{not json", headers={**v2_server.headers(),
                                                                        "Content-Type": "application/json"},
                          timeout=30)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"], reply.text


@pytest.mark.integration
def test_plain_json_under_the_envelope_gets_400(v2_server):
    reply = requests.post(v2_server.predict_url, json={"count": 2}, headers=v2_server.headers(), timeout=30)
    assert reply.status_code == 400 and "'inputs' list" in reply.json()["error"]


@pytest.mark.integration
def test_v2_needs_the_inference_token(v2_server):
    if isinstance(v2_server, BundleTorchServe):
        # No token here: KServe's wrapper cannot send one, so the bundle keeps TorchServe on loopback instead.
        props = read_properties(v2_server.config)
        assert props["disable_token_authorization"] == "true"
        assert props["inference_address"].startswith("http://127.0.0.1:") and props["grpc_inference_address"] == "127.0.0.1"
        return
    for headers in ({}, {"Authorization": "Bearer wrong"}, v2_server.headers("management")):
        reply = requests.post(v2_server.v2_url, json=v2_body(count=1), headers=headers, timeout=30)
        assert reply.status_code == 400 and "Token Authorization failed" in reply.text


# --- the same route with a real Open Inference Protocol client ------------------------------------

def triton_client(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.inference_url.removeprefix("http://"), connection_timeout=30,
                                            network_timeout=30)


def triton_inputs(binary: bool, **fields):
    import tritonclient.http as httpclient

    inputs = []
    for name, value in fields.items():
        text = isinstance(value, str)
        tensor = httpclient.InferInput(name, [1], "BYTES" if text else "INT64")
        tensor.set_data_from_numpy(np.array([value], dtype=object if text else np.int64), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.integration
def test_tritonclient_json_tensors_give_the_plain_contracts_images(v2_server, handler_client):
    import tritonclient.http as httpclient

    client = triton_client(v2_server)
    outputs = [httpclient.InferRequestedOutput("images", binary_data=False)]
    result = client.infer(MODEL_NAME, triton_inputs(False, count=2, seed=9, digit=1), outputs=outputs,
                          headers=v2_server.headers())
    images = result.as_numpy("images")
    np.testing.assert_array_equal(images, np.asarray(handler_client.post({"count": 2, "seed": 9, "digit": 1})[1]["images"]))
    number = client.infer(MODEL_NAME, triton_inputs(False, count=3, seed=9, digits="42"), outputs=outputs,
                          headers=v2_server.headers()).as_numpy("images")
    np.testing.assert_array_equal(number, np.asarray(handler_client.post({"count": 3, "seed": 9, "digits": "42"})[1]["images"]))


@pytest.mark.integration
def test_tritonclient_sends_a_hand_and_reads_the_number_and_the_copy(v2_server, hand_client):
    import tritonclient.http as httpclient

    hand = httpclient.InferInput("hand", [28, 28], "FP32")
    hand.set_data_from_numpy(STROKE, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("images", "hand_copy", "hand_error")]
    result = triton_client(v2_server).infer(hand_route(), [hand, *triton_inputs(False, hand_digit=1, digits="07")],
                                            outputs=outputs, headers=v2_server.headers())
    plain = hand_client.post(hand_body(STROKE, digits="07"))[1]
    np.testing.assert_array_equal(result.as_numpy("images"), np.asarray(plain["images"]))
    np.testing.assert_array_equal(result.as_numpy("hand_copy"), np.asarray(plain["hand"]["copy"]))
    assert result.as_numpy("hand_error").tolist() == [plain["hand"]["error"]]


def deploy_readme_json(marker: str) -> dict:
    """The JSON block after `<!-- marker -->` in deploy/README.md."""
    after = (ROOT / "deploy" / "README.md").read_text().split(f"<!-- {marker} -->", 1)[1]
    return json.loads(after.split("```json", 1)[1].split("```", 1)[0])


def deploy_readme_table(first_header: str) -> list[list[str]]:
    """The rows of deploy/README.md's table whose first column is `first_header`, each a list of cells."""
    lines = (ROOT / "deploy" / "README.md").read_text().split(f"| {first_header} |", 1)[1].splitlines()[2:]
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[:lines.index("")]]


def test_deploy_readme_names_the_inputs_the_contract_takes_and_the_outputs_it_gives():
    from handler.request_contract import (V2_FLOAT_TYPES, V2_HAND, V2_HAND_DIGIT, V2_HAND_DIGITS, V2_OUTPUT,
                                          V2_STRING_INPUTS, v2_outputs)

    inputs = {row[0]: row[1] for row in deploy_readme_table("input")}
    assert inputs == {"count": "INT64", "seed": "INT64", "digit": "INT64", V2_STRING_INPUTS[0]: "BYTES",
                      V2_HAND: V2_FLOAT_TYPES[0], V2_HAND_DIGIT: "INT64", V2_HAND_DIGITS: "BYTES"}
    assert V2_HAND_DIGITS in V2_STRING_INPUTS
    images = np.zeros((1, 2, 28, 28))
    outputs = v2_outputs(images, {"hand": {"copy": np.zeros((28, 28)), "error": 0.5}})
    assert [(row[0], row[1]) for row in deploy_readme_table("output")] == [(name, "FP64") for name in outputs]
    assert next(iter(outputs)) == V2_OUTPUT


@pytest.mark.integration
def test_tritonclient_gets_the_answer_deploy_readme_shows_for_its_example(v2_server):
    import tritonclient.http as httpclient

    request, answer = deploy_readme_json("v2 example request"), deploy_readme_json("v2 example answer")
    inputs = []
    for tensor in request["inputs"]:
        text = tensor["datatype"] == "BYTES"
        entry = httpclient.InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
        entry.set_data_from_numpy(np.array(tensor["data"], dtype=object if text else np.int64).reshape(tensor["shape"]),
                                  binary_data=False)
        inputs.append(entry)
    outputs = [httpclient.InferRequestedOutput(output["name"], binary_data=False) for output in answer["outputs"]]
    response = triton_client(v2_server).infer(MODEL_NAME, inputs, outputs=outputs, request_id=request["id"],
                                              headers=v2_server.headers()).get_response()
    assert {key: response[key] for key in ("id", "model_name", "model_version")} == \
        {key: answer[key] for key in ("id", "model_name", "model_version")}
    assert [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]] == \
        [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]]
    assert len(response["outputs"][0]["data"]) == int(np.prod(answer["outputs"][0]["shape"]))


@pytest.mark.integration
def test_tritonclient_reads_the_handlers_error_message(v2_server):
    from tritonclient.utils import InferenceServerException

    client = triton_client(v2_server)
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL_NAME, triton_inputs(False, count=1000), headers=v2_server.headers())
    assert "'count' must be an integer from 1 to 256, got 1000" in error.value.message()
    assert error.value.status() == "400"


@pytest.mark.integration
def test_tritonclient_binary_tensors_get_a_clear_message(v2_server):
    from tritonclient.utils import InferenceServerException

    client = triton_client(v2_server)
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL_NAME, triton_inputs(True, count=1), headers=v2_server.headers())  # the client's default
    assert "binary_data=False" in error.value.message()


# What TorchServe's images bring (torch with torchvision, so numpy and Pillow, and TorchServe itself, ts).
IMAGE_PROVIDES = {"torch", "torchvision", "numpy", "PIL", "ts"}
PIP_NAMES = {"PIL": "pillow"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.kserve"])
def test_each_image_installs_every_package_the_handler_imports(dockerfile):
    import ast
    import sys

    imported = set()
    for source in (ROOT / "handler").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    handler_files = {path.stem for path in (ROOT / "handler").glob("*.py")}
    third_party = imported - set(sys.stdlib_module_names) - handler_files - IMAGE_PROVIDES
    assert third_party >= {"orjson", "onnxruntime", "scipy"}, third_party  # the check reads lazy imports too
    installed = (ROOT / "deploy" / dockerfile).read_text()
    missing = [name for name in third_party if f'"{PIP_NAMES.get(name, name)}' not in installed]
    assert not missing, f"deploy/{dockerfile} does not install {missing}, which handler/ imports"
