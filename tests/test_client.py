"""scripts.client against a real TorchServe whose keys expire within seconds: make predict, make dataset and the
playground's backend keep working past an expired key; a wrong key is reported, not renewed."""
import json
import time
from datetime import datetime, timezone

import pytest
import requests

from cases import decode_png, grid_size
from scripts.client import REFUSED_KEY, Client, expiry
from scripts.server import TorchServe, free_ports

pytestmark = pytest.mark.integration
LIFETIME_MIN = 0.02  # token_expiration_min: each key lives 1 second (TorchServe keeps the whole seconds of 60 x it)


@pytest.fixture(scope="module")
def short_keys(tiny_store, tmp_path_factory):
    with TorchServe(tmp_path_factory.mktemp("torchserve_short_keys"), tiny_store, ports=tuple(free_ports(4)),
                    overrides={"token_expiration_min": str(LIFETIME_MIN)}) as server:
        yield server


def wait_until_expired(server: TorchServe) -> str:
    """Waits until the inference key in key_file.json has expired (TorchServe refuses it); returns that key."""
    entry = json.loads((server.workdir / "key_file.json").read_text())["inference"]
    time.sleep(max(0.0, (expiry(entry["expiration time"]) - datetime.now(timezone.utc)).total_seconds()) + 0.25)
    refused = requests.post(server.predict_url, json={"count": 1}, headers={"Authorization": f"Bearer {entry['key']}"},
                            timeout=30)
    assert refused.status_code == 400 and REFUSED_KEY in refused.text  # TorchServe's own answer to an expired key
    return entry["key"]


def args_for(server: TorchServe) -> list[str]:
    return ["--url", server.predict_url, "--management-url", server.management_url,
            "--key-file", str(server.workdir / "key_file.json")]


def test_expiry_reads_javas_instants():
    assert expiry("2026-12-06T10:23:51.123456789Z") == datetime(2026, 12, 6, 10, 23, 51, 123457, timezone.utc)
    assert expiry("2026-12-06T10:23:51Z") == datetime(2026, 12, 6, 10, 23, 51, tzinfo=timezone.utc)


def test_make_predict_gets_a_new_key_when_the_old_one_expired(short_keys, tmp_path):
    from scripts.predict import main

    old = wait_until_expired(short_keys)
    main([*args_for(short_keys), "--count", "4", "--seed", "2", "--out", str(tmp_path / "digits.png")])
    assert decode_png((tmp_path / "digits.png").read_bytes()).shape == grid_size(4)
    assert short_keys.keys()["inference"] != old  # TorchServe wrote the new key into key_file.json


def test_make_dataset_outlasts_its_keys(short_keys, tmp_path, monkeypatch):
    from scripts import dataset

    asked = []
    real = Client.png

    def slow(client, body, timeout=30):  # each request outlives a key: the data set takes longer than its keys last
        asked.append(body)
        if len(asked) > 1:
            wait_until_expired(short_keys)
        return real(client, body, timeout)

    monkeypatch.setattr(Client, "png", slow)
    dataset.main([*args_for(short_keys), "--count", "60", "--test-count", "10", "--out", str(tmp_path / "set")])
    assert len(asked) == 2 and (tmp_path / "set" / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 16 + 60 * 784


def test_the_pages_backend_keeps_drawing_past_an_expired_key(short_keys):
    from playground.app import Backend

    backend = Backend(short_keys)
    first = backend.fetch({"count": 2, "seed": 5, "digits": "42"})
    wait_until_expired(short_keys)
    assert backend.fetch({"count": 2, "seed": 5, "digits": "42"}) == first


def test_a_key_another_client_renewed_is_taken_not_renewed_again(short_keys):
    first, second = short_keys.client(), short_keys.client()
    old = wait_until_expired(short_keys)
    assert first.renew(old)
    new = short_keys.keys()["inference"]
    # The second client had sent the old key too: the file's new one is what it tries, and a second renewal
    # would end the first client's new key.
    assert second.renew(old) and short_keys.keys()["inference"] == new
    assert [client.post({"count": 1, "seed": 1}).status_code for client in (first, second)] == [200, 200]


def test_a_wrong_key_is_reported_not_renewed(short_keys, tmp_path):
    keys = short_keys.keys()
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps({"inference": {"key": "wrong", "expiration time": "2999-01-01T00:00:00Z"},
                                 "API": {"key": keys["API"]}}))
    client = Client(short_keys.predict_url, wrong, short_keys.management_url)
    with pytest.raises(RuntimeError, match=f"(?s)400 from .*{REFUSED_KEY}"):
        client.png({"count": 1})
    assert short_keys.keys()["inference"] == keys["inference"]  # no new key was made for it


def _renewing_process(server: TorchServe, old: str, first: bool, results) -> None:
    """A client in a process of its own renewing the expired key `old`, slowed so that without a lock across
    processes the two renewals interleave: the first reads the file, then waits while the second reads it too; the
    second waits before asking for its new key, so that it ends the first's new key; the first sends its request
    after that. Puts (its answer's status, whether it asked for a new key) into `results`."""
    import scripts.client as client_module

    client, asked, real_keys, real_post = server.client(), [], Client.keys, requests.post

    def keys(self):
        found = real_keys(self)
        if first and not asked:
            time.sleep(0.5)  # the second client reads the same expired key meanwhile, unless a lock keeps it out
        return found

    def post(url, *args, **kwargs):
        if url.endswith("/token"):
            asked.append(url)
            if not first:
                time.sleep(1.0)  # asks only after the first client has its new key
        return real_post(url, *args, **kwargs)

    Client.keys, client_module.requests.post = keys, post
    client.renew(old)
    if first:
        time.sleep(2.0)  # sends its request after the second client's renewal, were there one
    key = real_keys(client)["inference"]["key"]
    reply = real_post(server.predict_url, json={"count": 1}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    results.put((reply.status_code, bool(asked)))


@pytest.fixture(scope="module")
def three_second_keys(tiny_store, tmp_path_factory):
    """Keys that outlive the renewals below (1 s would not), and expire soon enough to wait for."""
    with TorchServe(tmp_path_factory.mktemp("torchserve_3s_keys"), tiny_store, ports=tuple(free_ports(4)),
                    overrides={"token_expiration_min": "0.05"}) as server:
        yield server


def test_two_processes_renewing_at_once_ask_for_one_new_key_and_both_keep_working(three_second_keys):
    import multiprocessing

    server = three_second_keys
    context = multiprocessing.get_context("fork")
    results, old = context.SimpleQueue(), wait_until_expired(server)
    processes = [context.Process(target=_renewing_process, args=(server, old, first, results)) for first in (True, False)]
    processes[0].start()
    time.sleep(0.1)
    processes[1].start()
    for process in processes:
        process.join(30)
    answers = sorted(results.get() for _ in processes)
    assert [status for status, _ in answers] == [200, 200], answers  # without the lock the first's key is ended
    assert sum(renewed for _, renewed in answers) == 1  # one new key: the second client found it in the file
