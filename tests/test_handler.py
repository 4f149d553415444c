"""The handler in-process, called as TorchServe's worker calls it (no server)."""
import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cases import BAD_REQUESTS, GOOD_REQUESTS, JSON, worker_decode
from mnist_gan_handler import ONEDNN_MIN_COUNT, set_request_logs
from scripts.local_handler import LocalHandler, model_dir_from

HANDLER_DIR = Path(__file__).resolve().parent.parent / "handler"


def images_of(body: dict) -> np.ndarray:
    assert set(body) == {"images"}
    return np.asarray(body["images"], dtype=np.float64)


@pytest.mark.parametrize("fields,count", GOOD_REQUESTS)
def test_good_requests_return_count_images_in_unit_range(handler_client, fields, count):
    code, body = handler_client.post(fields)
    assert code == 200
    images = images_of(body)
    assert images.shape == (count, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.all(np.round(images, 4) == images)  # the contract's 4 decimals


@pytest.mark.parametrize("case_id,raw,content_type,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_400_with_a_message(handler_client, case_id, raw, content_type, message):
    code, body = handler_client.post(worker_decode(raw, content_type), content_type)
    assert code == 400, body
    assert body["code"] == 400
    assert message in body["error"]


def test_same_seed_same_images_and_no_seed_differs(handler_client):
    first = images_of(handler_client.post({"count": 4, "seed": 42})[1])
    again = images_of(handler_client.post({"count": 4, "seed": 42})[1])
    other = images_of(handler_client.post({"count": 4, "seed": 43})[1])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    unseeded = [images_of(handler_client.post({"count": 1})[1]) for _ in range(2)]
    assert not np.array_equal(*unseeded)


def test_seed_is_independent_of_what_is_batched_with_it(handler_client):
    alone = images_of(handler_client.post({"count": 3, "seed": 5, "digit": 7})[1])
    batched = handler_client.batch(
        [{"body": {"count": 64, "seed": 1}}, {"body": {"count": 3, "seed": 5, "digit": 7}}, {"body": {"count": 1}}],
        [JSON] * 3,
    )
    assert [code for code, _ in batched] == [200, 200, 200]
    assert np.array_equal(images_of(batched[1][1]), alone)


def test_a_bad_request_fails_alone_in_its_batch(handler_client):
    results = handler_client.batch(
        [{"body": {"count": 2}}, {"body": bytearray(b"{oops")}, {"body": {"count": "two"}}, {"body": {"count": 1}}],
        [JSON, JSON, JSON, JSON],
    )
    assert [code for code, _ in results] == [200, 400, 400, 200]
    assert images_of(results[0][1]).shape == (2, 28, 28)
    assert images_of(results[3][1]).shape == (1, 28, 28)
    assert "not valid JSON" in results[1][1]["error"]


def test_raw_bytes_with_charset_are_parsed(handler_client):
    code, body = handler_client.post(bytearray(b'{"count": 2, "seed": 1}'), "application/json; charset=utf-8")
    assert code == 200 and images_of(body).shape == (2, 28, 28)


def test_query_parameters_are_not_silently_ignored(handler_client):
    results = handler_client.batch([{"body": {"count": 1}, "count": b"3"}], [JSON])
    assert results[0][0] == 400 and "'count'" in results[0][1]["error"]


def test_digit_selects_the_conditioning_label(handler_client):
    # Same seed and noise, different digit: only the label differs, so the images must too.
    three = images_of(handler_client.post({"count": 2, "seed": 9, "digit": 3})[1])
    eight = images_of(handler_client.post({"count": 2, "seed": 9, "digit": 8})[1])
    assert not np.array_equal(three, eight)


def test_unconditional_model_rejects_digit_and_serves_the_rest(tutorial_handler_client):
    code, body = tutorial_handler_client.post({"count": 2, "seed": 1})
    assert code == 200 and images_of(body).shape == (2, 28, 28)
    code, body = tutorial_handler_client.post({"digit": 3})
    assert code == 400 and "unconditional" in body["error"]


@pytest.mark.parametrize("filename", ["generator.py", "mnist_gan_handler.py"])
def test_torchserve_loadable_files_define_exactly_one_class(filename):
    # BaseHandler and TorchServe's model loader refuse a model file or handler with more than one class.
    tree = ast.parse((HANDLER_DIR / filename).read_text())
    assert len([node for node in tree.body if isinstance(node, ast.ClassDef)]) == 1


@pytest.mark.parametrize("count", [1, ONEDNN_MIN_COUNT - 1, ONEDNN_MIN_COUNT, 32])
def test_images_are_the_generators_on_both_kernel_paths(handler_client, count):
    # Below ONEDNN_MIN_COUNT images the handler runs PyTorch's native kernels, from it up oneDNN:
    # either way the images are the generator's own (to the contract's 4 decimals), and repeatable.
    from generator import sample_latent

    model = handler_client.handler.model
    noise, labels = sample_latent(model, count, torch.Generator().manual_seed(77))
    with torch.inference_mode():
        expected = model(noise, labels)[:, 0].numpy()
    first = images_of(handler_client.post({"count": count, "seed": 77})[1])
    assert np.abs(first - expected).max() <= 5e-5 + 1e-6  # rounding to 4 decimals, plus kernel differences
    assert np.array_equal(first, images_of(handler_client.post({"count": count, "seed": 77})[1]))


@pytest.mark.parametrize("onednn", [True, False])
def test_the_kernel_switch_is_restored_after_a_request(handler_client, onednn):
    # The handler flips the process-wide oneDNN switch around its forward pass; whatever else runs
    # in the process (the bench, these tests) must find it as it was, after any request.
    previous = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = onednn
        for body in ({"count": 1}, {"count": ONEDNN_MIN_COUNT}, {"count": "many"}):
            handler_client.post(body)
            assert torch.backends.mkldnn.enabled is onednn
    finally:
        torch.backends.mkldnn.enabled = previous


def _per_request_records(client, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        client.post({"count": 1, "seed": 1})
        logging.info("Backend received inference at: %d", 0)  # what TorchServe's worker logs per request
    return [r.getMessage() for r in caplog.records
            if "HandlerTime" in r.getMessage() or r.getMessage().startswith("Backend received inference")]


def test_per_request_worker_logs_follow_the_model_config(handler_client, tiny_run, tmp_path, caplog):
    try:
        verbose = LocalHandler(model_dir_from(tiny_run, tmp_path), {"handler": {"request_logs": True}})
        lines = _per_request_records(verbose, caplog)
        assert any("HandlerTime" in line for line in lines) and any("Backend" in line for line in lines)
        quiet = LocalHandler(model_dir_from(tiny_run, tmp_path / "quiet"))  # the default: off
        assert _per_request_records(quiet, caplog) == []
        logging.warning("other lines still pass")
        assert "other lines still pass" in caplog.text
    finally:
        set_request_logs(False)
