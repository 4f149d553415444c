"""The `hand` field in-process: an upload prepared as MNIST's digits were (request_contract), the hand found from
it (search.find_hand), and the handler's answers, loaded from the real archive by TorchServe's worker code."""
import base64
import io
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from cases import (DARK_ON_LIGHT, HAND_BAD, HAND_GOOD, JSON, NUMBER_PHOTO, PNG, RUNTIME_AND_ROUNDING, STROKE, decode_png,
                   hand_body, number_rows_size, png_base64, stroke)
from handler.generator import sample_noise
from scripts import ROOT, read_model_config
from handler.search import find_hand
from handler.upload import UnusableImage, mnist_box, prepare_digit
from experiments.one_hand import style_measures


def prepared(image_b64: str) -> np.ndarray:
    return prepare_digit(base64.b64decode(image_b64))


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows = np.arange(image.shape[0])
    return ((image.sum(1) * rows).sum() / image.sum(), (image.sum(0) * rows).sum() / image.sum())


# --- an upload, prepared as MNIST prepared its digits ------------------------------------------------

def on_paper(ink: np.ndarray, scale: int = 10, light=(0.60, 0.95)) -> np.ndarray:
    """`ink` (white on black, [0, 1]) enlarged `scale` times as dark ink on paper lit unevenly from left to right
    (a shadow over one side)."""
    big = np.kron(ink, np.ones((scale, scale)))
    paper = np.linspace(*light, big.shape[1])[None, :].repeat(big.shape[0], 0)
    return np.rint(255 * paper * (1 - big)).astype(np.uint8)


def test_a_photo_of_dark_ink_on_unevenly_lit_paper_is_prepared_as_its_white_on_black_digit():
    photo = prepared(png_base64(on_paper(STROKE)))
    assert photo.shape == (28, 28) and photo.dtype == np.float32 and photo.max() == 1.0
    assert np.abs(photo - mnist_box(STROKE)).max() < 0.1  # the paper's light is gone, the ink is the ink
    assert np.allclose(center_of_mass(photo), (14, 14), atol=0.5)  # MNIST's centering
    rows, columns = np.nonzero(photo > 0.2)
    assert rows.max() - rows.min() + 1 == 20  # the longest side fits MNIST's 20-pixel box


def test_every_way_of_sending_the_same_drawing_prepares_alike():
    pixels = np.rint(255 * STROKE).astype(np.uint8)
    ways = {
        "white on black": png_base64(pixels),
        "rgb": png_base64(np.stack([pixels] * 3, axis=-1), "RGB"),
        # a transparent canvas (Gradio's sketchpad): black strokes, and the alpha is the ink
        "transparent canvas": png_base64(np.dstack([np.zeros((28, 28, 3), np.uint8), pixels]), "RGBA"),
        "dark on white": png_base64(255 - pixels),
        "16-bit": base64.b64encode(_png16(pixels.astype(np.uint16) * 257)).decode(),
        "large photo": png_base64(np.pad(on_paper(STROKE, scale=40, light=(0.8, 0.8)), 600, constant_values=204)),
    }
    reference = mnist_box(STROKE)
    for name, image in ways.items():
        assert np.abs(prepared(image) - reference).max() < 0.12, name


def _png16(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint16: a 16-bit grayscale PNG
    return buffer.getvalue()


def test_a_wide_digit_fits_its_width_into_the_box_and_keeps_its_shape():
    bar = np.zeros((60, 200), np.float32)
    bar[25:35, 10:190] = 1.0  # 180 x 10: a dash
    image = mnist_box(bar)
    rows, columns = np.nonzero(image > 0.5)
    assert columns.max() - columns.min() + 1 == 20 and rows.max() - rows.min() + 1 <= 2


def test_a_digit_touching_the_edge_of_the_paper_is_still_ink():
    pixels = on_paper(np.pad(STROKE[4:24], ((0, 8), (0, 0))))  # the stroke starts on the top edge
    image = prepared(png_base64(pixels))
    assert image.max() == 1.0 and (image > 0.5).sum() > 20


def test_a_png_is_refused_before_it_is_decoded_when_too_large(monkeypatch):
    def never(*args):
        raise AssertionError("decoded a PNG that was too large")

    too_wide = base64.b64decode(png_base64(np.zeros((10, 4097), np.uint8)))
    monkeypatch.setattr(Image.Image, "load", never)
    with pytest.raises(UnusableImage, match="4097x10 pixels: at most 4096 a side"):
        prepare_digit(too_wide)


# --- the search: search.find_hand ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model(hand_client):
    return hand_client.handler.model


def test_a_drawn_digit_finds_a_hand_that_copies_it_far_better_than_random_hands(model):
    rng = torch.Generator().manual_seed(4)
    for digit in (0, 3, 8):
        hand = sample_noise(model, 1, rng)
        with torch.inference_mode():
            drawn = model(hand, torch.full((1,), digit))[0, 0]
            random_hands = sample_noise(model, 256, torch.Generator().manual_seed(99))
            random_errors = ((model(random_hands, torch.full((256,), digit))[:, 0] - drawn) ** 2).mean((1, 2))
        found = find_hand(model, drawn, digit)
        assert found.shape == (model.latent_dim,) and torch.isfinite(found).all()
        with torch.inference_mode():
            copy = model(found[None], torch.full((1,), digit))[0, 0]
        assert ((copy - drawn) ** 2).mean() < 0.2 * random_errors.min(), digit


def test_the_search_is_the_same_under_inference_mode_and_repeats_bit_for_bit(model):
    with torch.inference_mode():
        first = find_hand(model, torch.from_numpy(STROKE), 1)
    assert torch.equal(first, find_hand(model, torch.from_numpy(STROKE), 1))
    assert not torch.equal(first, find_hand(model, torch.from_numpy(stroke(shear=-0.3)), 1))
    assert first.abs().max() > 0.1  # it searched away from the mean hand it starts at
    assert all(p.grad is None for p in model.parameters())  # the weights took no gradient


# --- the handler's answers -------------------------------------------------------------------------

@pytest.mark.parametrize("case_id,raw,message", HAND_BAD, ids=[c[0] for c in HAND_BAD])
def test_a_bad_hand_gets_400_with_a_message(hand_client, case_id, raw, message):
    code, body = hand_client.post(raw)
    assert code == 400, body
    assert message in body["error"]


@pytest.mark.parametrize("raw,shape,pieces", HAND_GOOD, ids=[f"{s}-{p}" for _, s, p in HAND_GOOD])
def test_a_hand_writes_the_number_with_the_upload_as_prepared_its_copy_and_their_error(hand_client, raw, shape,
                                                                                       pieces):
    code, body = hand_client.post(raw)
    assert code == 200 and set(body) == {"images", "hand"} and set(body["hand"]) == {"image", "copy", "error"}
    images = np.asarray(body["images"])
    upload, copy = np.asarray(body["hand"]["image"]), np.asarray(body["hand"]["copy"])
    fields = orjson.loads(raw)
    shown = fields["hand"].get("digits", str(fields["hand"].get("digit")))
    one = "digit" in fields["hand"]  # one digit: 28 x 28 and one error, as before numbers were taken
    assert images.shape == (*shape, 28, 28)
    assert upload.shape == copy.shape == ((28, 28) if one else (pieces, 28, 28)) and len(shown) == pieces
    assert images.min() >= 0 and images.max() <= 1 and np.all(np.round(images, 4) == images)
    errors = ((upload - copy) ** 2).mean((-2, -1))
    assert np.asarray(body["hand"]["error"]) == pytest.approx(errors, abs=1e-6)
    number = fields.get("digits", str(fields["digit"]) if "digit" in fields else "0123456789")
    copies = copy.reshape(-1, 28, 28)
    for position, digit in enumerate(number):
        for piece, drawn in zip(shown, copies):
            if digit == piece:
                assert np.array_equal(images[0, position], drawn)  # the copy is the hand's own digit


def test_the_hand_is_find_hand_on_the_upload_and_writes_the_generators_digits(hand_client, model):
    code, body = hand_client.post(hand_body(STROKE, digits="4071"))
    found = find_hand(model, torch.from_numpy(STROKE), 1)
    with torch.inference_mode():
        expected = torch.stack([model(found[None], torch.full((1,), int(d)))[0, 0] for d in "4071"]).numpy()
    assert np.abs(np.asarray(body["images"])[0] - expected).max() <= RUNTIME_AND_ROUNDING
    assert np.array_equal(np.asarray(body["hand"]["image"]), STROKE)  # an array is used as given


def test_the_same_upload_gives_the_same_answer_whatever_it_is_batched_with(hand_client):
    raw = hand_body("data:image/png;base64," + DARK_ON_LIGHT, digits="90210")
    number = hand_body(NUMBER_PHOTO, "111", digits="90210")  # three digits cut from a photo: one hand for them
    alone = [hand_client.request(raw).body, hand_client.request(number).body]
    batched = hand_client.batch([(b'{"count": 64, "seed": 1}', {"Content-Type": JSON}),
                                 (raw, {"Content-Type": JSON}),
                                 (hand_body(stroke(shear=-0.2)), {"Content-Type": JSON}),
                                 (number, {"Content-Type": JSON}),
                                 (hand_body(STROKE, count=2), {"Content-Type": JSON})])
    assert [reply.status for reply in batched] == [400, 200, 200, 200, 400]  # a seed's number belongs to the other route
    assert [batched[1].body, batched[3].body] == alone
    hand_client.handler.found_hands.clear()  # searched again, not remembered
    assert [hand_client.request(raw).body, hand_client.request(number).body] == alone


def test_a_hands_png_is_the_written_number_in_one_row(hand_client):
    raw = hand_body(STROKE, digits="2026")
    png = hand_client.request(raw, accept=PNG)
    assert png.status == 200 and png.content_type == PNG
    pixels = decode_png(png.body)
    assert pixels.shape == number_rows_size(1, 4)
    written = np.asarray(hand_client.request(raw).json()["images"])[0]
    assert np.array_equal(pixels, np.rint(255 * np.concatenate(list(written), axis=1)).astype(np.uint8))


def test_two_hands_write_the_same_number_differently(hand_client):
    thin = np.asarray(hand_client.post(hand_body(stroke(thickness=1, shear=0.3), digits="0"))[1]["images"])
    thick = np.asarray(hand_client.post(hand_body(stroke(thickness=5, shear=-0.3), digits="0"))[1]["images"])
    assert np.abs(thin - thick).max() > 0.1


def test_an_unconditional_model_refuses_a_hand(tutorial_handler_client):
    code, body = tutorial_handler_client.post(hand_body(STROKE))
    assert code == 400 and "unknown field(s) 'hand' (this model is unconditional)" in body["error"]


def test_style_of_the_test_strokes_is_what_their_names_say():
    # The strokes above differ in the style measures the evaluation reads: the cases cover both ends.
    measures = style_measures(torch.from_numpy(np.stack([stroke(1, 0.3), stroke(5, -0.3)]))[:, None])
    assert measures["slant"][0] > 0 > measures["slant"][1] and measures["ink"][1] > 3 * measures["ink"][0]


def test_a_worker_searches_once_for_an_upload_it_has_seen_lately(hand_client, monkeypatch):
    handler = hand_client.handler
    module = sys.modules[type(handler).__module__]  # the handler as TorchServe's worker imported it
    searches = []
    real = module.find_hand
    monkeypatch.setattr(module, "find_hand", lambda *args, **kwargs: searches.append(args[2]) or real(*args, **kwargs))
    monkeypatch.setattr(handler, "found_hands", type(handler.found_hands)())
    upload = stroke(thickness=2, shear=0.1)
    first = hand_client.request(hand_body(upload, digits="12")).body
    again = hand_client.request(hand_body(upload, digits="0")).body  # another number, the same hand
    assert len(searches) == 1
    assert orjson.loads(again)["hand"] == orjson.loads(first)["hand"]
    assert hand_client.request(hand_body(upload, digits="12")).body == first and len(searches) == 1
    monkeypatch.setattr(module, "HANDS_KEPT", 2)
    for shear in (0.0, -0.1, -0.2):  # three other uploads: the first one is forgotten
        hand_client.request(hand_body(stroke(thickness=2, shear=shear)))
    assert hand_client.request(hand_body(upload, digits="12")).body == first and len(searches) == 5


def test_a_kept_hand_is_looked_up_by_the_upload_and_the_digits_it_shows(hand_client, monkeypatch):
    handler = hand_client.handler
    module = sys.modules[type(handler).__module__]
    searches = []
    real = module.find_hand
    monkeypatch.setattr(module, "find_hand", lambda *args, **kwargs: searches.append(args[2]) or real(*args, **kwargs))
    monkeypatch.setattr(handler, "found_hands", type(handler.found_hands)())
    drawing = stroke(thickness=3, shear=-0.1)
    as_one = hand_client.post(hand_body(drawing, 1, digits="0"))[1]
    as_seven = hand_client.post(hand_body(drawing, 7, digits="0"))[1]  # the same drawing, said to be a 7
    assert searches == [[1], [7]]  # searched again, as a 7
    assert as_one["images"] != as_seven["images"] and as_one["hand"]["copy"] != as_seven["hand"]["copy"]
    hand_client.post(hand_body(np.stack([drawing, drawing]), "17"))
    hand_client.post(hand_body(np.stack([drawing, drawing]), "71"))  # the same pieces, said to be another number
    assert searches[2:] == [[1, 7], [7, 1]]


@pytest.mark.parametrize("digit", [0, 3, 7])
def test_the_search_takes_the_digit_the_upload_shows(hand_client, model, digit):
    # A digit the model drew, uploaded as what it is: a search for any other digit would copy it far worse.
    hand = sample_noise(model, 1, torch.Generator().manual_seed(digit))
    with torch.inference_mode():
        drawn = model(hand, torch.full((1,), digit))[0, 0].numpy()
        strangers = model(sample_noise(model, 64, torch.Generator().manual_seed(99)), torch.full((64,), digit))
    best_stranger = ((strangers[:, 0].numpy() - drawn) ** 2).mean((1, 2)).min()
    error = hand_client.post(hand_body(drawn.round(4), digit))[1]["hand"]["error"]
    assert error < 0.3 * best_stranger


class ShowsFiveOfTheNoise(torch.nn.Module):
    """A stand-in generator whose digit shows only the first five numbers of the noise, as a real digit shows only
    part of a hand: the search must leave the rest of the hand as the mean hand has it."""

    latent_dim, noise, noise_std = 20, "normal", 1.0

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(784, 5, generator=torch.Generator().manual_seed(0)) / 3)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(noise[:, :5] @ self.weight.T).view(-1, 1, 28, 28)


def test_what_the_digit_does_not_show_of_a_hand_stays_the_mean_hands():
    model = ShowsFiveOfTheNoise()
    hand = torch.tensor([[0.8, -0.5, 1.2, 0.3, -1.0] + [1.5] * 15])
    with torch.inference_mode():
        drawn = model(hand, torch.zeros(1, dtype=torch.long))[0, 0]
    found = find_hand(model, drawn, 0, iterations=100)
    assert torch.equal(found[5:], torch.zeros(15))  # not made up: nothing in the digit asks for them
    assert torch.allclose(found[:5], hand[0, :5], atol=0.05)  # what the digit shows is found


def test_the_worker_keeps_scipys_blas_to_its_own_thread_count(hand_client):
    # SciPy's OpenBLAS reads this when it loads, at a worker's first hand: unset, each worker's search would start
    # a thread per core, and two workers' threads spin against each other.
    assert os.environ["OPENBLAS_NUM_THREADS"] == str(torch.get_num_threads()) == "1"


def test_each_route_serves_its_own_requests_and_names_the_other(handler_client, hand_client):
    hand_route = read_model_config()["handler"]["hand_route"]
    for body in (hand_body(STROKE), b'{"hand": 3}', b'{"hand": {"image": "x", "digits": "abc"}, "count": 9}'):
        code, answer = handler_client.post(body)  # the digits route: however good or bad the hand, it is sent on
        assert code == 400 and answer["error"].startswith(f"'hand' goes to /predictions/{hand_route}"), answer
    code, answer = hand_client.post({"count": 2, "seed": 1})
    assert code == 400 and answer["error"] == ("this route writes in an uploaded hand and needs 'hand'; ask for a seed's "
                                               "hands at /predictions/mnist_gan")
    assert hand_client.post(hand_body(STROKE))[0] == handler_client.post({"count": 2})[0] == 200


def test_the_hand_routes_workers_run_at_a_low_priority_and_the_digit_routes_at_their_own(tiny_model_dir, tmp_path):
    # A worker of each route in a process of its own, as TorchServe starts them: the nice value each ends with.
    script = ("import os, sys; from experiments.local_handler import LocalHandler; "
              "LocalHandler(sys.argv[1], model_name=sys.argv[2] or None); print(os.getpriority(os.PRIO_PROCESS, 0))")
    niceness = {}
    for route in ("", read_model_config()["handler"]["hand_route"]):
        result = subprocess.run([sys.executable, "-c", script, str(tiny_model_dir), route], capture_output=True,
                                text=True, cwd=ROOT, check=True)
        niceness[route] = int(result.stdout.split()[-1])
    handler = read_model_config()["handler"]
    assert niceness == {"": os.getpriority(os.PRIO_PROCESS, 0), handler["hand_route"]: handler["hand_nice"]}
    assert handler["hand_nice"] > 0
