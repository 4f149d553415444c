"""The quality metrics on cases whose answer is known."""
import math

import pytest
import torch

from train.data import load_mnist
from train.evaluate import (Evaluator, binomial_blur, kl_to_uniform, mean_pairwise_distance, shift_one_pixel,
                            train_classifier)


@pytest.fixture(scope="module")
def setup(data_dir):
    torch.manual_seed(0)
    classifier, accuracy = train_classifier(data_dir, epochs=2, limit=6000)
    test_images, test_labels = load_mnist(data_dir, train=False)
    evaluator = Evaluator(classifier, test_images[:2000], test_labels[:2000])
    train_images, train_labels = load_mnist(data_dir, train=True, limit=6000)
    return evaluator, accuracy, train_images[2000:4000], train_labels[2000:4000]


def test_the_small_classifier_learns(setup):
    _, accuracy, _, _ = setup
    assert accuracy > 0.9


def test_fid_orders_real_shifted_blurred_and_noise(setup):
    evaluator, _, real, _ = setup
    fid = {name: evaluator.row(name, images).fid for name, images in [
        ("real", real), ("shifted", shift_one_pixel(real)), ("blurred", binomial_blur(real)),
        ("noise", torch.rand_like(real))]}
    assert fid["real"] < fid["shifted"] < fid["noise"]
    assert fid["real"] < fid["blurred"] < fid["noise"]
    assert fid["real"] < 0.1 * fid["noise"]


def test_one_digit_generator_is_flagged(setup):
    evaluator, _, real, labels = setup
    threes = real[labels == 3]
    images = threes.repeat(10, 1, 1, 1)[:1000]
    requested = torch.arange(1000) % 10  # asked for every digit, always drew a 3
    row = evaluator.row("always three", images, requested)
    assert row.kl_uniform > 1.5  # log(10) = 2.30 for a single class
    assert row.per_digit_accuracy[3] > 0.8
    assert max(acc for d, acc in enumerate(row.per_digit_accuracy) if d != 3) < 0.2
    assert row.inception_score < 2
    honest = evaluator.row("real", real, labels)
    assert honest.kl_uniform < 0.05 and honest.digit_accuracy > 0.9


def test_kl_to_uniform_and_pairwise_distance_known_values():
    assert kl_to_uniform(torch.arange(1000) % 10) == pytest.approx(0.0, abs=1e-12)
    assert kl_to_uniform(torch.full((50,), 4)) == pytest.approx(math.log(10))
    copies = torch.ones(5, 1, 28, 28) * 0.5
    assert mean_pairwise_distance(copies) == 0.0
    two = torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])
    assert mean_pairwise_distance(two) == pytest.approx(28.0)
