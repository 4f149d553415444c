"""make evaluate's "Your hand" measures on cases whose answer is known, and the section on a real (tiny) model."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import evaluate as E
from experiments import your_hand
from experiments.your_hand import (PHOTO_SIDE, as_photo, others_of, pooled_correlation, section,
                                   within_digit_correlation)
from handler.request_contract import prepare_png
from train.artifacts import load_run


def test_within_digit_correlation_sees_the_hand_where_the_digits_hide_it():
    rng = torch.Generator().manual_seed(0)
    digits = torch.arange(10).repeat(50)
    hand = torch.randn(500, generator=rng)
    upload = hand + 5 * digits  # the digit sets most of the upload's value ...
    others = hand - 5 * digits  # ... and, the other way round, the other nine's
    assert within_digit_correlation(upload, others, digits) == pytest.approx(1.0)
    assert pooled_correlation(upload, others) < -0.9
    assert abs(within_digit_correlation(upload, torch.randn(500, generator=rng), digits)) < 0.2


def test_others_of_leaves_out_each_rows_own_digit():
    drawn = torch.arange(10).repeat(3, 1)  # row r, column d holds d
    kept = others_of(drawn, torch.tensor([0, 4, 9]))
    assert kept.tolist() == [list(range(1, 10)), [0, 1, 2, 3, 5, 6, 7, 8, 9], list(range(9))]


def test_the_photos_are_dark_ink_on_light_paper_and_prepare_back_into_the_digit(data_dir):
    from train.data import load_mnist

    digit = load_mnist(data_dir, train=False)[0][7]
    photo = Image.open(io.BytesIO(as_photo(digit, seed=3)))
    pixels = np.asarray(photo) / 255
    assert photo.mode == "L" and photo.size == (PHOTO_SIDE, PHOTO_SIDE)
    assert 0.75 < pixels[0].min() and pixels.max() <= 0.96 and pixels.min() < 0.1  # light paper, dark ink
    assert np.ptp(np.r_[pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]) > 0.05  # the light varies
    back = prepare_png(as_photo(digit, seed=3))
    assert np.corrcoef(back.ravel(), digit[0].numpy().ravel())[0, 1] > 0.8  # the same digit, perhaps a pixel off


@pytest.fixture(scope="module")
def reader(data_dir, small_classifier):
    """What the sections measure with: (classifier, test images, test labels)."""
    from train.data import load_mnist

    test_images, test_labels = load_mnist(data_dir, train=False)
    return small_classifier[0], test_images[:1000], test_labels[:1000]


def test_the_section_measures_the_served_model_against_its_targets(reader, tiny_run, monkeypatch):
    monkeypatch.setattr(your_hand, "RANDOM_HANDS", 128)  # fewer, for time: the search still beats their best
    classifier, test_images, test_labels = reader
    text = section(load_run(tiny_run)[0], classifier, test_images[:200], test_labels[:200], uploads=8,
                   ceiling_hands=100)
    assert text.startswith("## Your hand\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "×" in line]
    assert len(rows) == 2 and rows[0].startswith("| 28 x 28 arrays") and rows[1].startswith("| PNG photos")
    verdicts = [line.split(": ", 1)[1].split(" ")[0] for line in text.splitlines() if line.startswith(("- PASS", "- MISS"))]
    assert verdicts == ["copy", "ink", "slant", "the", "round", "PNG"]
    copy = float(rows[0].split("|")[2].strip().rstrip("×"))
    assert 0 < copy < 1  # a search does better than the best of the random hands, even on a tiny model


def test_an_unconditional_served_model_gets_each_section_with_why_it_is_not_measured(reader, tiny_tutorial_run):
    model = load_run(tiny_tutorial_run)[0]
    sections = E.served_sections(model, *reader)  # what make evaluate's page gets after its table (--only: one)
    assert [text.split("\n", 1)[0] for text in sections] == ["## One hand", "## Your hand"]
    assert all("Not measured: the served model is unconditional" in text for text in sections)
