"""The handler in-process, called as TorchServe's worker calls it (no server)."""
import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cases import BAD_REQUESTS, GOOD_REQUESTS, JSON, worker_decode
from mnist_gan_handler import ONNX_FILE, set_request_logs
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


@pytest.fixture(scope="module")
def torch_runtime_client(tiny_run, tmp_path_factory) -> LocalHandler:
    return LocalHandler(model_dir_from(tiny_run, tmp_path_factory.mktemp("torch_runtime")), {"handler": {"runtime": "torch"}})


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("count", [1, 7, 64])
def test_images_are_the_generators_on_either_runtime(handler_client, torch_runtime_client, runtime, count):
    # On a CPU the handler runs the archive's ONNX export in ONNX Runtime (the default) or the state dict
    # in PyTorch: either way the images are the generator's own, to the contract's 4 decimals plus the
    # 1e-6 by which the two runtimes' kernels can differ, and a seed repeats them bit for bit.
    from generator import sample_latent

    client = handler_client if runtime == "onnxruntime" else torch_runtime_client
    assert (client.handler.session is not None) == (runtime == "onnxruntime")
    model = client.handler.model
    noise, labels = sample_latent(model, count, torch.Generator().manual_seed(77))
    with torch.inference_mode():
        expected = model(noise, labels)[:, 0].numpy()
    first = images_of(client.post({"count": count, "seed": 77})[1])
    assert np.abs(first - expected).max() <= 5e-5 + 2e-6
    assert np.array_equal(first, images_of(client.post({"count": count, "seed": 77})[1]))


def test_the_runtimes_agree_on_the_unconditional_tutorial_generator(tutorial_handler_client, tiny_tutorial_run, tmp_path):
    via_torch = LocalHandler(model_dir_from(tiny_tutorial_run, tmp_path), {"handler": {"runtime": "torch"}})
    onnx_images = images_of(tutorial_handler_client.post({"count": 16, "seed": 3})[1])
    torch_images = images_of(via_torch.post({"count": 16, "seed": 3})[1])
    assert onnx_images.shape == (16, 28, 28)
    assert np.abs(onnx_images - torch_images).max() <= 1e-4 + 2e-6  # at most one rounding step apart


def test_an_unknown_runtime_or_a_missing_export_refuses_to_load(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        LocalHandler(model_dir_from(tiny_run, tmp_path / "a"), {"handler": {"runtime": "tensorflow"}})
    model_dir = model_dir_from(tiny_run, tmp_path / "b")
    (model_dir / ONNX_FILE).unlink()  # an archive built before the ONNX export existed
    with pytest.raises(FileNotFoundError, match="make archive"):
        LocalHandler(model_dir)


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
