"""make evaluate's "Your hand" measures on cases whose answer is known, and the section on a real (tiny) model."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import evaluate as E
from experiments import your_hand
from experiments.your_hand import (PHOTO_SIDE, as_photo, hand_correlation, others_of, pooled_correlation, section,
                                   within_digit_correlation)
from handler.upload import prepare_digit
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


def test_hand_correlation_follows_the_hand_not_which_digits_it_wrote():
    rng = torch.Generator().manual_seed(1)
    digits = torch.stack([torch.randperm(10, generator=rng)[:7] for _ in range(400)])  # 7 digits of each hand
    hand = torch.randn(400, 1, generator=rng)
    per_digit = 3 * torch.arange(10.0)[digits]  # which digit it is sets most of each value
    true = hand + per_digit + 0.1 * torch.randn(400, 7, generator=rng)
    assert hand_correlation(true + 0.1 * torch.randn(400, 7, generator=rng), true, digits) > 0.95
    stranger = torch.randn(400, 1, generator=rng) + per_digit  # another hand, the same digits
    assert abs(hand_correlation(stranger, true, digits)) < 0.15  # the digits alone would correlate the means
    assert pooled_correlation(stranger.mean(1), true.mean(1)) > 0.5


def test_others_of_leaves_out_each_rows_own_digit():
    drawn = torch.arange(10).repeat(3, 1)  # row r, column d holds d
    kept = others_of(drawn, torch.tensor([0, 4, 9]))
    assert kept.tolist() == [list(range(1, 10)), [0, 1, 2, 3, 5, 6, 7, 8, 9], list(range(9))]
    kept = others_of(drawn, torch.tensor([[0, 4], [9, 1], [5, 6]]))  # the k digits each row shows
    assert kept.tolist() == [[1, 2, 3, 5, 6, 7, 8, 9], [0, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 7, 8, 9]]


def test_the_photos_are_dark_ink_on_light_paper_and_prepare_back_into_the_digit(data_dir):
    from train.data import load_mnist

    digit = load_mnist(data_dir, train=False)[0][7]
    photo = Image.open(io.BytesIO(as_photo(digit, seed=3)))
    pixels = np.asarray(photo) / 255
    assert photo.mode == "L" and photo.size == (PHOTO_SIDE, PHOTO_SIDE)
    assert 0.75 < pixels[0].min() and pixels.max() <= 0.96 and pixels.min() < 0.1  # light paper, dark ink
    assert np.ptp(np.r_[pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]) > 0.05  # the light varies
    back = prepare_digit(as_photo(digit, seed=3))
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
                   ceiling_hands=100, number_hands=6, cut_numbers=14)
    assert text.startswith("## Your hand\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "×" in line]
    assert rows[0].startswith("| 28 x 28 arrays") and rows[1].startswith("| PNG photos")
    assert [row.split(" | ")[0] for row in rows[2:6]] == ["| 1", "| 2", "| 3", "| 5"]  # round trips, k digits shown
    assert [tuple(row.split(" | ")[:2]) for row in rows[6:12]] == [
        ("| 1", "PNG"), ("| 1", "JPEG"), ("| 3", "PNG"), ("| 3", "JPEG"), ("| 5", "PNG"), ("| 5", "JPEG")]
    assert [row.split(" | ")[0] for row in rows[12:]] == [f"| {gap}" for gap in range(7)]  # cutting, by gap
    verdicts = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith(("- PASS", "- MISS"))]
    assert [" ".join(v.split(" ")[:2]) for v in verdicts] == [
        "copy error", "ink carried", "slant carried", "the nine", "PNG photos", "round trip", "round trip",
        *["from a"] * 8, "real digits"]
    copy = float(rows[0].split("|")[2].strip().rstrip("×"))
    assert 0 < copy < 1  # a search does better than the best of the random hands, even on a tiny model


def test_an_unconditional_served_model_gets_each_section_with_why_it_is_not_measured(reader, tiny_tutorial_run):
    model = load_run(tiny_tutorial_run)[0]
    sections = E.served_sections(model, *reader)  # what make evaluate's page gets after its table (--only: one)
    assert [text.split("\n", 1)[0] for text in sections] == ["## One hand", "## Your hand"]
    assert all("Not measured: the served model is unconditional" in text for text in sections)
