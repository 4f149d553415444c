"""The quality metrics on cases whose answer is known."""
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from handler.generator import Generator
from train.config import make_config
from train.data import load_mnist
from experiments import evaluate as E
from experiments.evaluate import (TARGET_CAS_GAP, Evaluator, balanced_subset, binomial_blur, diversity_ratios,
                                  generate_per_digit, kl_to_uniform, mean_pairwise_distance, predict, shift_one_pixel,
                                  target_checks)

CAS_EPOCHS = 3  # small sets, few epochs and one classifier: each CAS here trains for seconds, not minutes
CAS_PER_DIGIT = 200
CAS_SEEDS = 1


@pytest.fixture(scope="module")
def setup(data_dir, small_classifier):
    classifier, accuracy = small_classifier
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


@pytest.fixture(scope="module")
def cas_sets(data_dir):
    """Two disjoint balanced sets of real training digits (neither seen by the evaluation classifier)."""
    images, labels = load_mnist(data_dir, train=True, limit=12000)
    reference = balanced_subset(images[6000:9000], labels[6000:9000], CAS_PER_DIGIT)
    other = balanced_subset(images[9000:], labels[9000:], CAS_PER_DIGIT, seed=1)
    return reference, other


@pytest.fixture(scope="module")
def cas_reference(setup, cas_sets):
    evaluator = setup[0]
    return evaluator.cas(*cas_sets[0], epochs=CAS_EPOCHS, seeds=CAS_SEEDS)


def one_image_per_digit(images, labels, classifier):
    """A "generator" that draws the same image (one the classifier reads right) for every request of a digit."""
    right = predict(classifier, images) == labels
    firsts = torch.stack([images[(labels == d) & right][0] for d in range(10)])
    return firsts[labels], labels


def test_balanced_subset_has_the_same_count_of_every_digit(cas_sets):
    (_, labels), _ = cas_sets
    assert torch.bincount(labels, minlength=10).tolist() == [CAS_PER_DIGIT] * 10


def test_cas_of_real_digits_is_near_the_reference(setup, cas_sets, cas_reference):
    evaluator = setup[0]
    assert cas_reference > 0.85
    assert abs(evaluator.cas(*cas_sets[1], epochs=CAS_EPOCHS, seeds=CAS_SEEDS) - cas_reference) < 0.03


def test_cas_of_labels_shifted_by_one_digit_is_near_zero(setup, cas_sets):
    evaluator = setup[0]
    images, labels = cas_sets[1]
    assert evaluator.cas(images, (labels + 1) % 10, epochs=CAS_EPOCHS, seeds=CAS_SEEDS) < 0.05


def test_cas_of_one_image_per_digit_is_far_below_the_reference(setup, cas_sets, cas_reference):
    evaluator = setup[0]
    assert evaluator.cas(*one_image_per_digit(*cas_sets[1], evaluator.classifier), epochs=CAS_EPOCHS, seeds=CAS_SEEDS) < cas_reference - 0.2


def test_requested_digit_accuracy_on_known_cases(setup, cas_sets):
    evaluator = setup[0]
    images, labels = cas_sets[1]
    real = evaluator.row("real", images, labels)
    assert real.digit_accuracy > 0.9 and min(real.per_digit_accuracy) > 0.8
    shifted = evaluator.row("labels shifted by one", images, (labels + 1) % 10)
    assert shifted.digit_accuracy < 0.05 and max(shifted.per_digit_accuracy) < 0.1
    # One image per digit, each read right: requested-digit accuracy cannot see the collapse,
    # diversity and CAS (above) do.
    copies, copy_labels = one_image_per_digit(*cas_sets[1], evaluator.classifier)
    collapsed = evaluator.row("one image per digit", copies, copy_labels)
    assert collapsed.per_digit_accuracy == [1.0] * 10
    assert max(diversity_ratios(collapsed, evaluator.real_pairwise)) == 0.0
    assert min(diversity_ratios(real, evaluator.real_pairwise)) > 0.8


def test_broken_fraction_counts_images_that_read_as_no_digit(setup, cas_sets):
    evaluator = setup[0]
    images, labels = cas_sets[1]
    real = evaluator.row("real", images, labels)
    assert real.broken < 0.05 and evaluator.real_broken < 0.05
    # Two different digits laid over each other at half strength read as neither.
    by_digit = [images[labels == d][:150] for d in range(10)]
    blends = torch.cat([(by_digit[d] + by_digit[(d + 3) % 10]) / 2 for d in range(10)])
    assert evaluator.row("blends", blends).broken > max(3 * real.broken, 0.1)


def test_targets_flag_a_wrong_label_generator_and_pass_real_digits(setup, cas_sets, cas_reference):
    evaluator = setup[0]
    images, labels = cas_sets[1]
    shifted = evaluator.row("labels shifted by one", images, (labels + 1) % 10)
    shifted.cas = 0.01
    checks = dict((text.split(" ")[0] + " " + text.split(" ")[1], ok)
                  for text, ok in target_checks(shifted, evaluator, cas_reference, train_seconds=60))
    assert not checks["requested-digit accuracy"] and not checks["CAS 1.00%"]
    real = evaluator.row("real", images, labels)

    def cas_met(gap: float) -> bool:
        real.cas = cas_reference - gap
        return next(ok for text, ok in target_checks(real, evaluator, cas_reference) if text.startswith("CAS"))

    assert cas_met(0.0) and cas_met(TARGET_CAS_GAP - 0.0005) and not cas_met(TARGET_CAS_GAP + 0.0005)
    results = {text: ok for text, ok in target_checks(real, evaluator, cas_reference, train_seconds=601)}
    assert any(text.startswith("training time") and not ok for text, ok in results.items())


def test_generate_per_digit_asks_for_every_digit_equally():
    torch.manual_seed(0)
    images, labels = generate_per_digit(Generator().eval(), 3)
    assert images.shape == (30, 1, 28, 28)
    assert labels.tolist() == [d for d in range(10) for _ in range(3)]


def test_extra_rows_name_how_their_recipe_differs_from_todays_preset():
    config = asdict(make_config("cdcgan", lr=2e-4, seed=3, out_dir="/elsewhere", threads=1))
    config["betas"] = list(config["betas"])  # as generator.json stores it
    assert E.recipe_changes(config) == {"lr": 2e-4, "seed": 3}
    assert E.recipe_changes(asdict(make_config("tutorial"))) == {}
    del config["bf16"], config["noise_std"]  # a run from before these settings existed: it had neither
    assert E.recipe_changes(config) == {"lr": 2e-4, "seed": 3, "bf16": False, "noise_std": 1.0}
    del config["aux_weight"]  # one whose earlier value is not known
    assert E.recipe_changes(config)["aux_weight"] == "not recorded"
    config["recon_weight"] = 10.0  # an experiment's option, removed since
    config["twin_weight"] = 0.0  # one that was off
    changes = E.recipe_changes(config)
    assert changes["recon_weight"] == "10.0 (no longer a setting)" and "twin_weight" not in changes


def test_cas_misses_count_each_true_digit_and_rank_the_mistakes():
    truth = torch.tensor([7, 7, 7, 7, 9, 9, 2, 2, 0])
    read = torch.tensor([2, 2, 9, 7, 8, 9, 2, 7, 0])
    per_digit, common = E.cas_misses(read, truth)
    assert per_digit == [0, 0, 1, 0, 0, 0, 0, 3, 0, 1]
    assert common == [(7, 2, 2), (2, 7, 1), (7, 9, 1), (9, 8, 1)]  # ties in (true, read) order
    assert E.cas_misses(truth, truth) == ([0] * 10, [])
    # two classifiers: the counts are their mean
    per_digit, common = E.cas_misses(torch.stack([read, truth]), truth)
    assert per_digit == [0, 0, 0.5, 0, 0, 0, 0, 1.5, 0, 0.5] and common[0] == (7, 2, 1.0)


def test_measure_cas_keeps_the_reading_that_gives_the_score(setup, cas_sets):
    evaluator = setup[0]
    images, labels = (part[::4] for part in cas_sets[1])  # 50 per digit: it checks what is kept, not how well
    row = E.Row("labels shifted by one", 0.0, 0.0, 0.0, 0.0)
    evaluator.measure_cas(row, images, (labels + 1) % 10, seeds=2)
    assert row.cas_predicted.shape == (2, len(evaluator.test_labels))
    assert not torch.equal(row.cas_predicted[0], row.cas_predicted[1])  # two classifiers, two seeds
    assert row.cas == pytest.approx((row.cas_predicted == evaluator.test_labels).float().mean().item())
    _, common = E.cas_misses(row.cas_predicted, evaluator.test_labels)
    assert all(read == (true + 1) % 10 for true, read, _ in common)  # it learnt the shift, and the table says so
    assert "missed" in E.cas_misses_table([row], evaluator.test_labels)


def test_the_served_model_is_measured_at_each_spread_asked_for_and_last_as_served(tmp_path):
    runs = E.runs_to_measure(tmp_path, ["seed 1=/runs/s1"], E.noise_spreads("1.0, 1.35"))
    assert runs == [("tutorial preset", tmp_path / "presets" / "tutorial", None), ("seed 1", Path("/runs/s1"), None),
                    ("the served model", tmp_path, 1.0), ("the served model", tmp_path, 1.35),
                    ("default model (served)", tmp_path, None)]
    assert E.runs_to_measure(tmp_path, [], E.noise_spreads(""))[-1] == ("default model (served)", tmp_path, None)


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "1.1,x"])
def test_evaluate_refuses_a_spread_no_generator_can_draw_with_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--noise-stds", bad])
    assert exit_info.value.code == 2  # argparse's usage error, before anything is loaded or measured
    assert "--noise-stds" in capsys.readouterr().err


def test_the_page_says_when_it_holds_rows_make_evaluate_would_not_write():
    assert E.written_by([]).startswith("Written by `make evaluate`")
    extra = E.written_by(["wide D=/tmp/runs/d64", "seed 1=/tmp/runs/seed1"])
    assert "2 extra `--model` rows (wide D, seed 1)" in extra and "`make evaluate` rewrites it without them" in extra


def test_the_one_hand_section_measures_the_served_model_against_its_targets(setup, tiny_run, tmp_path):
    from experiments.one_hand import section
    from experiments.report import write_section
    from train.artifacts import load_run

    evaluator = setup[0]
    text = section(load_run(tiny_run)[0], evaluator.classifier, evaluator.test_images, evaluator.test_labels,
                   hands=100, numbers=300)
    assert text.startswith("## One hand\n")
    verdicts = [line for line in text.splitlines() if line.startswith(("- PASS: ", "- MISS: "))]
    assert [v.split(": ", 1)[1].split(" ")[0] for v in verdicts] == ["ink", "slant", "5-digit"]
    real = float(text.split("real test digits drawn at random | ")[1].split("%")[0])
    assert real > 50  # the small test classifier reads most real numbers (its accuracy to the 5th power)
    page = tmp_path / "quality.md"
    page.write_text("# Quality report\n\n## Targets\n\nkept\n\n## One hand\n\nold\n\n## Where CAS loses\n\nkept too\n")
    write_section(page, "Quality report", "make evaluate", text)  # what --only one-hand does to the page
    assert "old" not in page.read_text() and page.read_text().count("kept") == 2 and text in page.read_text()
