"""Integration: a real .mar in a real TorchServe on free ports, real HTTP requests, always stopped."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from cases import (BAD_REQUESTS, DARK_ON_LIGHT, HAND_BAD, JSON, MULTIPART_MESSAGE, NUMBER_PHOTO, PNG, RUNTIME_AND_ROUNDING, STROKE,
                   decode_png, generators_images, grid_size, hand_body, noisy_photo, number_rows_size)
from scripts import MODEL_NAME, ROOT, hand_route, read_model_config
from scripts.archive import build_archive
from scripts.server import FRONTEND_CLASS, TorchServe, free_ports, proc_stat
from train.artifacts import load_run

pytestmark = pytest.mark.integration
WORKERS = read_model_config()["minWorkers"]  # what the shipped archive starts, for each of its two routes


@pytest.fixture(scope="module")
def generator(tiny_run):
    return load_run(tiny_run)[0]


def post(server, body=None, raw=None, content_type=JSON, headers=None, path=None):
    headers = {**server.headers(), **({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    return requests.post(path or server.predict_url, data=data, headers=headers, timeout=30)


def assert_good(server, count=2):
    reply = post(server, {"count": count, "seed": 11})
    assert reply.status_code == 200, reply.text
    assert np.asarray(reply.json()["images"]).shape == (count, 28, 28)


def test_good_request_returns_compact_json_images(server):
    reply = post(server, {"count": 3, "seed": 1, "digit": 4})
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert b"\n" not in reply.content and b", " not in reply.content  # compact, not TorchServe's indent=2
    images = np.asarray(reply.json()["images"])
    assert images.shape == (3, 28, 28) and images.min() >= 0 and images.max() <= 1


def _cpu_ticks(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_seed_reproduces_across_requests_and_both_workers(server):
    workers = server.worker_pids(MODEL_NAME)
    assert len(workers) == WORKERS >= 2  # reproducible across workers needs more than one
    before = {pid: _cpu_ticks(pid) for pid in workers}
    bodies = [post(server, {"count": 256, "seed": 123}).content for _ in range(10)]
    assert len(set(bodies)) == 1
    # Both workers did work for these requests (an idle worker blocks on its socket and uses no CPU).
    assert all(_cpu_ticks(pid) > before[pid] for pid in workers), (before, {pid: _cpu_ticks(pid) for pid in workers})
    assert post(server, {"count": 256, "seed": 124}).content != bodies[0]


def test_a_number_is_the_same_hands_on_both_workers_as_the_single_digit_requests(server):
    workers = server.worker_pids(MODEL_NAME)
    before = {pid: _cpu_ticks(pid) for pid in workers}
    body = {"count": 8, "seed": 77, "digits": "02139"}
    bodies = [post(server, body).content for _ in range(10)]
    assert len(set(bodies)) == 1
    assert all(_cpu_ticks(pid) > before[pid] for pid in workers)  # both workers answered some of them
    number = np.asarray(json.loads(bodies[0])["images"])
    assert number.shape == (8, 5, 28, 28)
    for position, digit in enumerate(body["digits"]):  # hand i is the seed's i-th hand, whatever the digit
        alone = np.asarray(post(server, {"count": 8, "seed": 77, "digit": int(digit)}).json()["images"])
        assert np.array_equal(number[:, position], alone), position
    png = post(server, body, headers={"Accept": PNG})
    assert png.status_code == 200 and decode_png(png.content).shape == number_rows_size(8, 5)


def test_contract_points_on_the_real_server(server, generator):
    reply = post(server, {})  # the defaults: one image, a random seed
    assert reply.status_code == 200 and np.asarray(reply.json()["images"]).shape == (1, 28, 28)
    largest = post(server, {"count": 256, "seed": 2})  # stays under max_response_size
    assert largest.status_code == 200, largest.text[:200]
    images = np.asarray(largest.json()["images"])
    assert images.shape == (256, 28, 28) and np.all(np.round(images, 4) == images)  # 4 decimals
    assert np.abs(images - generators_images(generator, 256, 2)).max() <= RUNTIME_AND_ROUNDING  # the generator's own
    charset = post(server, {"count": 256, "seed": 2}, content_type="application/json; charset=utf-8")
    assert charset.status_code == 200 and charset.content == largest.content
    error = post(server, {"count": 0})
    assert error.status_code == 400 and error.json() == {"code": 400, "error": error.json()["error"]}
    # TorchServe's frontend drops the query string before the handler: the body alone decides.
    query = post(server, {"count": 2, "seed": 5}, path=server.predict_url + "?count=9&seed=1")
    assert query.status_code == 200 and query.content == post(server, {"count": 2, "seed": 5}).content


@pytest.mark.parametrize("digit", range(10))
def test_digit_d_is_the_generator_conditioned_on_label_d(server, generator, digit):
    images = np.asarray(post(server, {"count": 2, "seed": 44, "digit": digit}).json()["images"])
    distance = {label: np.abs(images - generators_images(generator, 2, 44, label)).max() for label in range(10)}
    assert distance[digit] <= RUNTIME_AND_ROUNDING
    assert min(d for label, d in distance.items() if label != digit) > 1e-3


@pytest.mark.parametrize("count", [1, 7, 16])
def test_accept_png_answers_the_json_answers_pixels(server, count):
    body = {"count": count, "seed": 21, "digit": 6}
    reply = post(server, body, headers={"Accept": PNG})
    assert reply.status_code == 200 and reply.headers["Content-Type"] == PNG
    pixels = decode_png(reply.content)
    assert pixels.shape == grid_size(count)
    expected = np.rint(255 * np.asarray(post(server, body).json()["images"])).astype(np.uint8)
    columns = math.ceil(math.sqrt(count))
    for index in range(count):
        top, left = (index // columns) * 30, (index % columns) * 30
        assert np.array_equal(pixels[top:top + 28, left:left + 28], expected[index])
    assert post(server, body, headers={"Accept": PNG}).content == reply.content  # byte-identical


def test_accept_negotiation_on_the_real_server(server):
    body = {"count": 1, "seed": 3}
    preferred = post(server, body, headers={"Accept": "image/png;q=0.9, application/json"})
    assert preferred.status_code == 200 and preferred.headers["Content-Type"] == JSON
    refused = post(server, body, headers={"Accept": "text/html"})
    assert refused.status_code == 406 and refused.headers["Content-Type"] == JSON
    assert refused.json()["code"] == 406 and "application/json nor image/png" in refused.json()["error"]
    bad = post(server, {"count": 300}, headers={"Accept": PNG})
    assert bad.status_code == 400 and bad.headers["Content-Type"] == JSON and "'count'" in bad.json()["error"]


def test_make_predict_saves_the_servers_png(server, tmp_path):
    from scripts.predict import main

    out = tmp_path / "digits.png"
    main(["--url", server.predict_url, "--key-file", str(server.workdir / "key_file.json"), "--count", "9",
          "--seed", "4", "--digit", "2", "--out", str(out)])
    direct = post(server, {"count": 9, "seed": 4, "digit": 2}, headers={"Accept": PNG})
    assert out.read_bytes() == direct.content and decode_png(direct.content).shape == grid_size(9)


def test_form_and_multipart_bodies_get_a_message_naming_their_content_type(server):
    # What `curl -d '{"count": 2}'` and `curl -F count=2` send when -H 'Content-Type: ...' is left out.
    form = post(server, raw=b'{"count": 2}', content_type="application/x-www-form-urlencoded")
    assert form.status_code == 400
    assert "got application/x-www-form-urlencoded (curl -d sends that; add -H 'Content-Type: application/json')" \
        in form.json()["error"]
    multipart = requests.post(server.predict_url, files={"count": (None, "2")}, headers=server.headers(), timeout=30)
    assert multipart.status_code == 400 and MULTIPART_MESSAGE in multipart.json()["error"]


@pytest.mark.parametrize("case_id,raw,content_type,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_400_with_message_then_good_request_works(server, case_id, raw, content_type, message):
    reply = post(server, raw=raw, content_type=content_type)
    assert reply.status_code == 400, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert message in reply.json()["error"]
    assert_good(server)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong-scheme"}],
                         ids=["no-token", "wrong-token", "malformed-header"])
def test_requests_without_the_inference_key_are_refused(server, headers):
    reply = requests.post(server.predict_url, json={"count": 1}, headers=headers, timeout=30)
    assert reply.status_code == 400 and "Token Authorization failed" in reply.text
    assert requests.get(f"{server.inference_url}/ping", headers=headers, timeout=30).status_code == 400
    assert requests.get(f"{server.inference_url}/ping", headers=server.headers(), timeout=30).status_code == 200
    assert_good(server)


def test_management_key_does_not_open_inference_and_model_api_is_off(server):
    reply = requests.post(server.predict_url, json={"count": 1}, headers=server.headers("management"), timeout=30)
    assert reply.status_code == 400
    register = requests.post(f"{server.management_url}/models?url=mnist_gan.mar", headers=server.headers("management"),
                             timeout=30)
    assert register.status_code == 405  # enable_model_api=false: no registering models over HTTP
    listing = requests.get(f"{server.management_url}/models", headers=server.headers(), timeout=30)
    assert listing.status_code == 400  # the inference key does not open the management API


def test_a_phone_photo_under_1_mib_is_taken_and_a_larger_body_is_refused_by_the_frontend(server):
    photo = hand_body(noisy_photo(1000), digits="12")
    assert 900_000 < len(photo) <= 1 << 20
    reply = post(server, raw=photo, path=server.hand_url)
    assert reply.status_code == 200, reply.text[:300]
    assert np.asarray(reply.json()["images"]).shape == (1, 2, 28, 28)
    too_large = hand_body(noisy_photo(1100))
    assert len(too_large) > 1 << 20
    refused = post(server, raw=too_large, path=server.hand_url)
    assert refused.status_code == 413 and refused.content == b""  # TorchServe's frontend (Netty) answers with no body
    assert_good(server)


@pytest.mark.parametrize("case_id,raw,message", HAND_BAD, ids=[c[0] for c in HAND_BAD])
def test_a_bad_hand_gets_400_with_a_message_on_the_real_server(server, case_id, raw, message):
    reply = post(server, raw=raw, path=server.hand_url)
    assert reply.status_code == 400 and reply.headers["Content-Type"] == JSON, reply.text[:300]
    assert message in reply.json()["error"]


def test_the_same_upload_gives_the_same_answer_on_both_workers(server):
    workers = server.worker_pids(hand_route())
    assert len(workers) == WORKERS
    before = {pid: _cpu_ticks(pid) for pid in workers}
    raw = hand_body("data:image/png;base64," + DARK_ON_LIGHT, digits="2026")
    with ThreadPoolExecutor(2) as pool:  # two at a time: both workers search
        answers = list(pool.map(lambda _: post(server, raw=raw, path=server.hand_url).content, range(8)))
    assert len(set(answers)) == 1 and all(_cpu_ticks(pid) > before[pid] for pid in workers)
    body = json.loads(answers[0])
    assert np.asarray(body["images"]).shape == (1, 4, 28, 28) and set(body["hand"]) == {"image", "copy", "error"}
    png = post(server, raw=raw, headers={"Accept": PNG}, path=server.hand_url)
    assert png.status_code == 200 and decode_png(png.content).shape == number_rows_size(1, 4)
    other = post(server, raw=hand_body(STROKE, digits="2026"), path=server.hand_url).json()
    assert other["images"] != body["images"]  # another upload, another hand
    number = hand_body(NUMBER_PHOTO, "111", digits="2026")  # a number cut into three digits, one hand for them
    with ThreadPoolExecutor(2) as pool:
        assert len(set(pool.map(lambda _: post(server, raw=number, path=server.hand_url).content, range(6)))) == 1


def test_a_photo_of_a_number_is_cut_and_written_in_its_hand_and_each_route_refuses_the_others(server):
    reply = post(server, raw=hand_body(NUMBER_PHOTO, "111", digits="2026"), path=server.hand_url)
    assert reply.status_code == 200, reply.text[:300]  # the worker read and cut it: it imported upload.py
    body = reply.json()
    assert np.asarray(body["images"]).shape == (1, 4, 28, 28) and np.asarray(body["hand"]["image"]).shape == (3, 28, 28)
    assert len(body["hand"]["error"]) == 3
    wrong = post(server, raw=hand_body(NUMBER_PHOTO, "111"))
    assert wrong.status_code == 400 and f"/predictions/{hand_route()}" in wrong.json()["error"]
    wrong = post(server, {"count": 2}, path=server.hand_url)
    assert wrong.status_code == 400 and f"/predictions/{MODEL_NAME}" in wrong.json()["error"]


def test_concurrent_mixed_requests_fail_only_the_bad_ones(server):
    bodies = [{"count": 2, "seed": i} if i % 3 else {"count": "bad"} for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: post(server, b), bodies))
    for body, reply in zip(bodies, replies):
        assert reply.status_code == (400 if body["count"] == "bad" else 200), reply.text


@pytest.fixture(scope="module")
def batching_server(tiny_run, tmp_path_factory):
    """The same model with TorchServe's server-side batching on (up to 8 requests, 200 ms window)."""
    store = tmp_path_factory.mktemp("model_store_batching")
    config = store / "model-config.yaml"
    config.write_text("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 200\nresponseTimeout: 30\n"
                      "handler:\n  request_logs: true\n")
    build_archive(tiny_run / "generator.pt", tiny_run / "generator.json", store, model_config=config)
    config.unlink()
    with TorchServe(tmp_path_factory.mktemp("torchserve_batching"), store, ports=tuple(free_ports(4))) as ts:
        yield ts


def test_png_and_json_requests_batched_together_each_get_their_own_format(batching_server):
    body = {"count": 4, "seed": 17}
    accepts = [PNG, JSON, PNG, None, "text/html", PNG, JSON, PNG]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda accept: post(batching_server, body, headers={"Accept": accept} if accept else {}),
                                accepts))
    for accept, reply in zip(accepts, replies):
        expected = {PNG: (200, PNG), "text/html": (406, JSON)}.get(accept, (200, JSON))
        assert (reply.status_code, reply.headers["Content-Type"]) == expected, reply.content[:100]
    assert len({r.content for r, a in zip(replies, accepts) if a == PNG}) == 1
    assert "handling a batch of" in (batching_server.workdir / "logs" / "model_log.log").read_text()


def test_bad_requests_fail_alone_in_a_server_side_batch(batching_server):
    bodies = [{"count": 2, "seed": i} if i % 2 else {"count": "bad", "seed": i} for i in range(8)]
    bodies[6] = {"hand": {"digit": 1, "image": "iVBORw0KGgoAAAANSUhEUg=="}}  # a PNG cut inside its header: once a 503
    alone = post(batching_server, {"count": 2, "seed": 3}).content
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: post(batching_server, b), bodies))
    for body, reply in zip(bodies, replies):
        assert reply.status_code == (200 if body.get("count") == 2 else 400), reply.text
    assert "is not a PNG that can be read" in replies[6].json()["error"]
    assert replies[3].content == alone  # a batched request keeps its own seed's images
    log = (batching_server.workdir / "logs" / "model_log.log").read_text()
    assert "handling a batch of" in log  # TorchServe really did batch them


def test_numbers_and_uploaded_hands_batched_server_side_keep_their_hands(batching_server):
    bodies = [{"count": 2, "seed": i, "digits": "90210"[: i + 1]} if i % 2 else {"count": 3, "seed": i} for i in range(8)]
    bodies[4] = json.loads(hand_body(STROKE, digits="7"))
    alone = [post(batching_server, body).content for body in bodies]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: post(batching_server, b), bodies))
    assert [r.status_code for r in replies] == [200] * 8
    assert [r.content for r in replies] == alone


def _prometheus_metrics(server) -> str:
    reply = requests.get(f"{server.metrics_url}/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.text


def test_per_request_worker_logs_are_off_unless_the_model_config_turns_them_on(server, batching_server):
    assert_good(server)
    assert_good(batching_server)
    quiet, verbose = server.workdir / "logs", batching_server.workdir / "logs"
    assert "loaded " in (quiet / "model_log.log").read_text()  # the worker's other lines still arrive
    assert "Backend received inference" not in (quiet / "model_log.log").read_text()
    assert "POST /predictions/mnist_gan" in (quiet / "access_log.log").read_text()  # the frontend still logs
    metrics = _prometheus_metrics(server)  # metrics_mode=prometheus: the frontend's own metrics, in memory
    assert "ts_inference_requests_total{" in metrics and "ts_inference_latency_microseconds{" in metrics
    assert "HandlerTime{" not in metrics and "PredictionTime{" not in metrics
    # handler: {request_logs: true} in model-config.yaml brings TorchServe's per-request lines back
    assert "Backend received inference" in (verbose / "model_log.log").read_text()
    assert "HandlerTime{" in _prometheus_metrics(batching_server)


def test_killed_workers_are_replaced_and_serving_resumes(server, record_property):
    pids = server.worker_pids()
    assert len(pids) == 2 * WORKERS, pids  # each route's
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    started, deadline = time.monotonic(), time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if post(server, {"count": 1, "seed": 0}).status_code == 200 and post(server, raw=hand_body(
                    STROKE), path=server.hand_url).status_code == 200 and len(server.worker_pids()) == 2 * WORKERS:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    recovery = time.monotonic() - started
    record_property("worker_recovery_seconds", round(recovery, 2))
    print(f"\nall workers SIGKILLed; serving again after {recovery:.1f} s")
    assert recovery < 60, f"serving resumed only after {recovery:.0f} s"
    replacements = server.worker_pids()
    assert len(replacements) == 2 * WORKERS and set(replacements).isdisjoint(pids), (pids, replacements)
    assert_good(server)


def _listening_addresses(pid: int) -> list[str]:
    """IP addresses of the TCP sockets that process `pid` listens on (from /proc: no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                # /proc prints each 32-bit word little-endian; the last word of a v4-mapped v6 address is the IPv4 one.
                addresses.append(".".join(str(b) for b in raw[-4:][::-1]) if width == 8 or raw[:12] in
                                 (bytes(10) + b"\xff\xff", bytes(8) + b"\xff\xff\x00\x00") else raw.hex())
    return addresses


def test_every_port_the_server_opens_is_on_loopback(server):
    addresses = _listening_addresses(server.pid())
    assert len(addresses) >= 5  # inference, management, metrics, gRPC inference and management
    assert all(address == "127.0.0.1" for address in addresses), addresses


def test_a_stale_pid_file_naming_another_process_is_ignored_and_that_process_survives_stop(tmp_path):
    """TorchServe's PID file outlives a crash or a reboot; its number may then belong to anything."""
    server = TorchServe(tmp_path, tmp_path, ports=(1, 2, 3, 4))
    (tmp_path / "tmp").mkdir()
    pid_file = tmp_path / "tmp" / ".model_server.pid"
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(120)"]
    with subprocess.Popen(sleep_forever) as other, \
            subprocess.Popen([*sleep_forever, FRONTEND_CLASS.decode()]) as frontend_like:
        # Popen returns once the child has begun exec, a moment before the kernel fills in its command line
        # (seen under load); a real frontend writes its PID file long after that.
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{frontend_like.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            pid_file.write_text(str(other.pid))
            assert server.pid() is None and server.worker_pids() == []
            server.stop()  # nothing of this server's is running: it must not touch the other process
            assert other.poll() is None
            pid_file.write_text(str(frontend_like.pid))  # what a real frontend's command line holds
            assert server.pid() == frontend_like.pid
        finally:
            other.kill()
            frontend_like.kill()


# The checks Schemathesis has that fail on two behaviours of TorchServe's frontend, not of the handler, which the
# pod's proxy on Kubernetes answers properly (tests/test_deploy.py): a missing or wrong key gets TorchServe's 400
# (docs/openapi.yaml describes it), where they expect 401 (ignored_auth, missing_required_header); and every method
# on the predictions path reaches the handler, so TRACE draws digits where unsupported_method expects 405.
FRONTEND_CHECKS = ("ignored_auth", "missing_required_header", "unsupported_method")
FUZZ_EXAMPLES, FUZZ_SEED = 60, 2  # a fixed run: the same requests every time


def test_schemathesis_finds_nothing_against_the_real_server(server, tmp_path):
    """Every other check Schemathesis has (no server errors; statuses, content types, headers and bodies as the
    document says; data the document forbids refused and data it allows accepted) over its examples, coverage and
    fuzzing phases, with the document's PNGs drawn by tests/openapi_hooks.py."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "openapi_hooks",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = subprocess.run([str(Path(sys.executable).with_name("schemathesis")), "--config-file",
                          str(ROOT / "tests" / "schemathesis.toml"), "run", str(ROOT / "docs" / "openapi.yaml"),
                          "--url", server.inference_url, "--header", f"Authorization: Bearer {server.keys()['inference']}",
                          "--checks", "all", "--exclude-checks", ",".join(FRONTEND_CHECKS),
                          "--max-examples", str(FUZZ_EXAMPLES), "--seed", str(FUZZ_SEED), "--generation-database", "none",
                          "--no-color", "--output-sanitize", "true"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "No issues found" in run.stdout, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"(\d+) generated, \1 passed", run.stdout), run.stdout[-2000:]
