"""The handler in-process, loaded from the real archive and called by TorchServe's own worker code (no server)."""
import ast
import json
import logging
import sys
import math

import numpy as np
import pytest
import torch

from cases import (BAD_REQUESTS, GOOD_REQUESTS, JSON, MULTIPART, MULTIPART_MESSAGE, NEGOTIATION, PNG,
                   RUNTIME_AND_ROUNDING, decode_png, generators_images, grid_size, number_rows_size)
from handler.generator import ONNX_FILE
from handler.request_contract import NotAcceptable, answer_type
from train.config import make_config
from experiments.local_handler import LocalHandler, copy_model_dir
from scripts import HANDLER_DIR


def json_body(fields: dict) -> bytes:
    return json.dumps(fields).encode()


def images_of(body: dict) -> np.ndarray:
    assert set(body) == {"images"}
    return np.asarray(body["images"], dtype=np.float64)


@pytest.mark.parametrize("fields,shape", GOOD_REQUESTS)
def test_good_requests_return_count_images_in_unit_range(handler_client, fields, shape):
    code, body = handler_client.post(fields)
    assert code == 200
    images = images_of(body)
    assert images.shape == (*shape, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.all(np.round(images, 4) == images)  # the contract's 4 decimals


@pytest.mark.parametrize("case_id,raw,content_type,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_400_with_a_message(handler_client, case_id, raw, content_type, message):
    code, body = handler_client.post(raw, content_type)
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


def test_seeded_images_are_the_generators_own(handler_client):
    model = handler_client.handler.model
    for count, seed in ((1, 0), (5, 123), (3, 2**63 - 1)):
        served = images_of(handler_client.post({"count": count, "seed": seed})[1])
        assert np.abs(served - generators_images(model, count, seed)).max() <= RUNTIME_AND_ROUNDING


def test_noise_has_the_spread_the_run_recorded(handler_client, tiny_model_dir):
    # Written out here rather than through sample_latent, so a handler that drops the run's noise_std fails.
    noise_std = json.loads((tiny_model_dir / "generator.json").read_text())["model"]["noise_std"]
    assert noise_std == make_config().noise_std != 1
    model = handler_client.handler.model
    noise = noise_std * torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(noise, torch.full((3,), 4))[:, 0].numpy()
    served = images_of(handler_client.post({"count": 3, "seed": 5, "digit": 4})[1])
    assert np.abs(served - expected).max() <= RUNTIME_AND_ROUNDING


@pytest.mark.parametrize("digit", range(10))
def test_digit_d_is_the_generator_conditioned_on_label_d(handler_client, digit):
    # A mapping shifted by one (or any other) would match another label's images instead.
    model = handler_client.handler.model
    served = images_of(handler_client.post({"count": 3, "seed": 31, "digit": digit})[1])
    distance = {label: np.abs(served - generators_images(model, 3, 31, label)).max() for label in range(10)}
    assert distance[digit] <= RUNTIME_AND_ROUNDING
    assert min(d for label, d in distance.items() if label != digit) > 1e-3


def test_seed_is_independent_of_what_is_batched_with_it(handler_client):
    alone = images_of(handler_client.post({"count": 3, "seed": 5, "digit": 7})[1])
    batched = handler_client.batch([(b'{"count": 64, "seed": 1}', {"Content-Type": JSON}),
                                    (b'{"count": 3, "seed": 5, "digit": 7}', {"Content-Type": JSON}),
                                    (b'{"count": 1}', {"Content-Type": JSON})])
    assert [reply.status for reply in batched] == [200, 200, 200]
    assert np.array_equal(images_of(batched[1].json()), alone)


def test_a_bad_request_fails_alone_in_its_batch(handler_client):
    replies = handler_client.batch([(b'{"count": 2}', {"Content-Type": JSON}), (b"{oops", {"Content-Type": JSON}),
                                    (b'{"count": "two"}', {"Content-Type": JSON}), (b'{"count": 1}', {"Content-Type": JSON})])
    assert [reply.status for reply in replies] == [200, 400, 400, 200]
    assert images_of(replies[0].json()).shape == (2, 28, 28)
    assert images_of(replies[3].json()).shape == (1, 28, 28)
    assert "not valid JSON" in replies[1].json()["error"]


def test_charset_parameter_and_header_case_are_accepted(handler_client):
    code, body = handler_client.post(b'{"count": 2, "seed": 1}', "application/json; charset=utf-8")
    assert code == 200 and images_of(body).shape == (2, 28, 28)
    (reply,) = handler_client.batch([(b'{"count": 1}', {"content-type": JSON, "accept": PNG})])  # lower-case names
    assert reply.status == 200 and reply.content_type == PNG


def test_multipart_body_gets_a_message_naming_its_content_type(handler_client):
    code, body = handler_client.post(*MULTIPART)
    assert code == 400 and MULTIPART_MESSAGE in body["error"]


# --- content negotiation: Accept: image/png -------------------------------------------------------

@pytest.mark.parametrize("accept,expected", NEGOTIATION)
def test_accept_header_picks_the_answer_format(accept, expected):
    if expected is None:
        with pytest.raises(NotAcceptable, match="application/json nor image/png"):
            answer_type(accept)
    else:
        assert answer_type(accept) == expected


@pytest.mark.parametrize("count", [1, 2, 7, 16, 256])
def test_png_answer_is_the_json_answers_pixels_in_a_grid(handler_client, count):
    request = b'{"count": %d, "seed": 8, "digit": 4}' % count
    png = handler_client.request(request, accept=PNG)
    assert png.status == 200 and png.content_type == PNG
    pixels = decode_png(png.body)
    assert pixels.shape == grid_size(count)
    columns = math.ceil(math.sqrt(count))
    expected = np.rint(255 * images_of(handler_client.request(request).json())).astype(np.uint8)
    for index in range(count):
        top, left = (index // columns) * 30, (index % columns) * 30
        assert np.array_equal(pixels[top:top + 28, left:left + 28], expected[index]), index
    assert handler_client.request(request, accept=PNG).body == png.body  # byte-identical for a seed


def test_bad_fields_answer_400_json_even_when_png_is_asked_for(handler_client):
    reply = handler_client.request(b'{"count": 0}', accept=PNG)
    assert reply.status == 400 and reply.content_type == JSON
    assert "'count' must be an integer" in reply.json()["error"]


# --- a number in one hand: "digits" --------------------------------------------------------------

def test_a_hands_digits_are_the_single_digit_requests_images_bit_for_bit(handler_client):
    number = images_of(handler_client.post({"count": 3, "seed": 7, "digits": "02139"})[1])
    assert number.shape == (3, 5, 28, 28)
    for position, digit in enumerate("02139"):
        alone = images_of(handler_client.post({"count": 3, "seed": 7, "digit": int(digit)})[1])
        assert np.array_equal(number[:, position], alone), position
    repeated = images_of(handler_client.post({"count": 2, "seed": 7, "digits": "1001"})[1])
    assert np.array_equal(repeated[:, 0], repeated[:, 3])  # a hand writes a digit the same way each time
    one = images_of(handler_client.post({"digits": "3", "seed": 11})[1])
    assert np.array_equal(one[:, 0], images_of(handler_client.post({"digit": 3, "seed": 11})[1]))


def test_a_seed_is_a_set_of_hands_whatever_the_number(handler_client):
    first = images_of(handler_client.post({"count": 2, "seed": 5, "digits": "18"})[1])
    other = images_of(handler_client.post({"count": 2, "seed": 5, "digits": "8821"})[1])
    assert np.array_equal(first[:, 0], other[:, 3]) and np.array_equal(first[:, 1], other[:, 0])  # the same hands
    assert np.abs(first[0] - first[1]).max() > 0.1  # two hands differ
    assert not np.array_equal(first, images_of(handler_client.post({"count": 2, "seed": 6, "digits": "18"})[1]))
    unseeded = [images_of(handler_client.post({"digits": "42"})[1]) for _ in range(2)]
    assert not np.array_equal(*unseeded)


def test_a_hands_digits_are_the_generators_own(handler_client):
    model = handler_client.handler.model
    number = images_of(handler_client.post({"count": 4, "seed": 21, "digits": "509"})[1])
    for position, digit in enumerate((5, 0, 9)):
        assert np.abs(number[:, position] - generators_images(model, 4, 21, digit)).max() <= RUNTIME_AND_ROUNDING


def test_the_longest_number_works_and_one_digit_more_is_refused(handler_client):
    longest = "31415926535897932384626433832795" * 8
    code, body = handler_client.post({"seed": 1, "digits": longest})
    assert code == 200 and images_of(body).shape == (1, 256, 28, 28)
    code, body = handler_client.post({"seed": 1, "digits": longest + "0"})
    assert code == 400 and "got 257" in body["error"]
    code, body = handler_client.post({"count": 2, "seed": 1, "digits": longest[:129]})
    assert code == 400 and "2 hands x 129 digits = 258" in body["error"]


@pytest.mark.parametrize("hands,number", [(1, "7"), (1, "02139"), (3, "2026"), (2, "0" * 12)])
def test_a_numbers_png_is_one_row_per_hand_of_the_json_answers_pixels(handler_client, hands, number):
    request = json_body({"count": hands, "seed": 8, "digits": number})
    png = handler_client.request(request, accept=PNG)
    assert png.status == 200 and png.content_type == PNG
    pixels = decode_png(png.body)
    assert pixels.shape == number_rows_size(hands, len(number))
    expected = np.rint(255 * images_of(handler_client.request(request).json())).astype(np.uint8)
    for hand in range(hands):
        row = pixels[hand * 30:hand * 30 + 28]
        assert np.array_equal(row, np.concatenate(list(expected[hand]), axis=1)), hand  # side by side, no gap
        if hand:
            assert (pixels[hand * 30 - 2:hand * 30] == 128).all()  # the gray gap between hands
    assert handler_client.request(request, accept=PNG).body == png.body


def test_a_number_batched_with_other_requests_keeps_its_images(handler_client):
    body = b'{"count": 2, "seed": 5, "digits": "8675309"}'
    alone = images_of(handler_client.post(body)[1])
    batched = handler_client.batch([(b'{"count": 64, "seed": 1}', {"Content-Type": JSON}),
                                    (body, {"Content-Type": JSON}),
                                    (b'{"digits": "12x"}', {"Content-Type": JSON}),
                                    (b'{"count": 3, "digits": "11"}', {"Content-Type": JSON, "Accept": PNG})])
    assert [reply.status for reply in batched] == [200, 200, 400, 200]
    assert np.array_equal(images_of(batched[1].json()), alone)


def test_unacceptable_accept_gets_406_json_naming_both_formats(handler_client):
    reply = handler_client.request(b'{"count": 1}', accept="text/html")
    assert reply.status == 406 and reply.content_type == JSON
    assert reply.json() == {"code": 406, "error": reply.json()["error"]}
    assert "application/json" in reply.json()["error"] and "image/png" in reply.json()["error"]


def test_each_request_in_a_batch_gets_its_own_format_and_status(handler_client):
    body = b'{"count": 4, "seed": 3}'
    replies = handler_client.batch([(body, {"Content-Type": JSON, "Accept": PNG}), (body, {"Content-Type": JSON}),
                                    (body, {"Content-Type": JSON, "Accept": "text/csv"}),
                                    (b'{"count": -1}', {"Content-Type": JSON, "Accept": PNG})])
    assert [(r.status, r.content_type) for r in replies] == [(200, PNG), (200, JSON), (406, JSON), (400, JSON)]
    assert np.array_equal(decode_png(replies[0].body)[:28, :28],
                          np.rint(255 * images_of(replies[1].json())[0]).astype(np.uint8))


def test_unconditional_model_rejects_digit_and_serves_the_rest(tutorial_handler_client):
    code, body = tutorial_handler_client.post({"count": 2, "seed": 1})
    assert code == 200 and images_of(body).shape == (2, 28, 28)
    code, body = tutorial_handler_client.post({"digit": 3})
    assert code == 400 and "unconditional" in body["error"]
    code, body = tutorial_handler_client.post({"digits": "314"})
    assert code == 400 and "unknown field(s) 'digits' (this model is unconditional)" in body["error"]


@pytest.mark.parametrize("filename", ["generator.py", "mnist_gan_handler.py"])
def test_torchserve_loadable_files_define_exactly_one_class(filename):
    # BaseHandler and TorchServe's model loader refuse a model file or handler with more than one class.
    tree = ast.parse((HANDLER_DIR / filename).read_text())
    assert len([node for node in tree.body if isinstance(node, ast.ClassDef)]) == 1


@pytest.fixture(scope="module")
def torch_runtime_client(tiny_model_dir, tmp_path_factory) -> LocalHandler:
    return LocalHandler(copy_model_dir(tiny_model_dir, tmp_path_factory.mktemp("torch") / "dir", {"handler": {"runtime": "torch"}}))


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("count", [1, 7, 64])
def test_images_are_the_generators_on_either_runtime(handler_client, torch_runtime_client, runtime, count):
    # On a CPU the handler runs the archive's ONNX export in ONNX Runtime (the default) or the state dict
    # in PyTorch: either way the images are the generator's own, to the contract's 4 decimals plus the
    # 1e-6 by which the two runtimes' kernels can differ, and a seed repeats them bit for bit.
    client = handler_client if runtime == "onnxruntime" else torch_runtime_client
    assert (client.handler.session is not None) == (runtime == "onnxruntime")
    expected = generators_images(client.handler.model, count, 77)
    first = images_of(client.post({"count": count, "seed": 77})[1])
    assert np.abs(first - expected).max() <= RUNTIME_AND_ROUNDING
    assert np.array_equal(first, images_of(client.post({"count": count, "seed": 77})[1]))


def test_the_runtimes_agree_on_the_unconditional_tutorial_generator(tutorial_handler_client, tutorial_model_dir, tmp_path):
    via_torch = LocalHandler(copy_model_dir(tutorial_model_dir, tmp_path / "dir", {"handler": {"runtime": "torch"}}))
    onnx_images = images_of(tutorial_handler_client.post({"count": 16, "seed": 3})[1])
    torch_images = images_of(via_torch.post({"count": 16, "seed": 3})[1])
    assert onnx_images.shape == (16, 28, 28)
    assert np.abs(onnx_images - torch_images).max() <= 1e-4 + 2e-6  # at most one rounding step apart


def test_an_unknown_runtime_or_a_missing_export_refuses_to_load(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        LocalHandler(copy_model_dir(tiny_model_dir, tmp_path / "a", {"handler": {"runtime": "tensorflow"}}))
    model_dir = copy_model_dir(tiny_model_dir, tmp_path / "b")
    (model_dir / ONNX_FILE).unlink()  # an archive built before the ONNX export existed
    with pytest.raises(FileNotFoundError, match="make archive"):
        LocalHandler(model_dir)


@pytest.mark.parametrize("threads", ["two", "0", "-1", ""])
def test_a_bad_worker_thread_count_refuses_to_load_naming_the_setting(tiny_model_dir, monkeypatch, threads):
    monkeypatch.setenv("GAN_WORKER_THREADS", threads)
    with pytest.raises(ValueError, match="GAN_WORKER_THREADS must be a whole number"):
        LocalHandler(tiny_model_dir)


def _per_request_records(client, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        client.post({"count": 1, "seed": 1})
        logging.info("Backend received inference at: %d", 0)  # what TorchServe's worker logs per request
    return [r.getMessage() for r in caplog.records
            if "HandlerTime" in r.getMessage() or r.getMessage().startswith("Backend received inference")]


def test_per_request_worker_logs_follow_the_model_config(handler_client, tiny_model_dir, tmp_path, caplog):
    try:
        verbose = LocalHandler(copy_model_dir(tiny_model_dir, tmp_path / "verbose", {"handler": {"request_logs": True}}))
        lines = _per_request_records(verbose, caplog)
        assert any("HandlerTime" in line for line in lines) and any("Backend" in line for line in lines)
        quiet = LocalHandler(copy_model_dir(tiny_model_dir, tmp_path / "quiet"))  # the default: off
        assert _per_request_records(quiet, caplog) == []
        logging.warning("other lines still pass")
        assert "other lines still pass" in caplog.text
    finally:
        sys.modules[type(handler_client.handler).__module__].set_request_logs(False)  # the served module's own
