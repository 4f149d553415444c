"""`make evaluate`: the quality report, on a feature space of an MNIST classifier trained here.

    python -m experiments.evaluate --data-dir data

FID (classifier penultimate features, vs the 10,000 test images), Inception Score (the
classifier's logits), KL divergence of the predicted-class histogram to uniform, the
fraction of conditional samples classified as the requested digit (per digit, beside the
classifier's own accuracy on real test images of that digit), the fraction of "broken"
samples (top class probability < 0.5), the mean pairwise distance of samples per digit
(a mode-collapse measure, as a ratio to real digits), and the Classification Accuracy
Score (CAS, Ravuri & Vinyals, 2019): a fresh classifier trained with a fixed recipe on
generated digits only, tested on the real test set, beside the same recipe trained on as
many real training digits. Calibration rows (real training images, shifted by one pixel,
blurred) say what a given FID means on this feature space. The page goes to
docs/quality.md with docs/digits.png (one row per digit) and docs/cas_misses.png (the real test
digits that only the classifiers trained on generated digits get wrong).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from handler.generator import Generator, checked_noise_std, sample_latent
from train import artifacts, files
from experiments.classifier import FEATURES, MnistClassifier, chunks, predict
from experiments import one_hand, your_hand
from experiments.report import table, write_section
from train.config import ADDED_SETTINGS, make_config, settings_unknown_here
from train.data import MnistMissing, load_mnist

SAMPLES = 10_000
PER_DIGIT = 300  # samples per digit for the pairwise-distance (mode collapse) measure
CLASSIFIER_MIN_ACCURACY = 0.99  # below this test accuracy the evaluation classifier is refused
CAS_PER_DIGIT = 2_000  # training images per digit for the Classification Accuracy Score
CAS_EPOCHS = 4
CAS_SEEDS = 3  # make evaluate's CAS is the mean of this many classifiers: one classifier's seed moves it by tenths of a point
BROKEN_BELOW = 0.5  # a sample whose top class probability is below this reads as no digit at all


# -- the feature extractor ----------------------------------------------------------------
def random_shift(images: torch.Tensor, max_pixels: int, rng: torch.Generator) -> torch.Tensor:
    """Moves each image by up to `max_pixels` in x and y (augmentation: the classifier must not
    call a digit different because it sits a pixel off-centre)."""
    shifts = torch.randint(-max_pixels, max_pixels + 1, (len(images), 2), generator=rng).float()
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shifts * 2 / images.shape[-1]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def train_classifier(data_dir: str | Path, epochs: int = 4, limit: int = 0) -> tuple[MnistClassifier, float]:
    """Trains on the training split only; returns the model (eval mode) and its test accuracy."""
    images, labels = load_mnist(data_dir, train=True, limit=limit)
    test_images, test_labels = load_mnist(data_dir, train=False)
    model = fit_classifier(images, labels, epochs)
    return model, accuracy(model, test_images, test_labels)


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 4, seed: int = 0) -> MnistClassifier:
    """The one fixed recipe: a fresh MnistClassifier, Adam with a one-cycle schedule, shift augmentation."""
    torch.manual_seed(seed)
    model = MnistClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size = 128
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    rng = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        batches = torch.randperm(len(images), generator=rng).split(batch_size)
        for index in tqdm(batches, desc=f"classifier epoch {epoch + 1}/{epochs}", unit="step", mininterval=2):
            optimizer.zero_grad()
            F.cross_entropy(model(random_shift(images[index], 2, rng)), labels[index]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def cas_misses(predicted: torch.Tensor, test_labels: torch.Tensor, top: int = 5) -> tuple[list[float], list[tuple[int, int, float]]]:
    """Where CAS classifiers go wrong on the real test images: misses per true digit, and the `top` most
    common (true digit, read as, count), most frequent first; `predicted` holds one classifier's readings
    (N) or several (classifiers x N), whose counts are averaged."""
    predicted = predicted.reshape(-1, len(test_labels))
    truth = test_labels.expand_as(predicted)
    missed = predicted != truth
    per_digit = (torch.bincount(truth[missed], minlength=10) / len(predicted)).tolist()
    pairs = torch.bincount(truth[missed] * 10 + predicted[missed], minlength=100) / len(predicted)
    counts, order = pairs.sort(descending=True, stable=True)
    return per_digit, [(int(i) // 10, int(i) % 10, c.item()) for c, i in zip(counts[:top], order[:top]) if c > 0]


@torch.inference_mode()
def generate_per_digit(model: Generator, per_digit: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_digit` samples of each digit from a conditional generator, and the requested labels."""
    rng = torch.Generator().manual_seed(seed)
    digits = torch.arange(model.num_classes).repeat_interleave(per_digit)
    noise, labels = sample_latent(model, len(digits), rng, digits=digits)
    return run_in_chunks(model, noise, labels), labels


@torch.inference_mode()
def run_in_chunks(model: Generator, noise: torch.Tensor, labels: Optional[torch.Tensor], chunk: int = 1000) -> torch.Tensor:
    """model(noise, labels), a chunk at a time so memory stays small."""
    return torch.cat([model(noise[i:i + chunk], None if labels is None else labels[i:i + chunk])
                      for i in range(0, len(noise), chunk)])


def balanced_subset(images: torch.Tensor, labels: torch.Tensor, per_digit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_digit` images of each digit, drawn at random (seeded)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picked = torch.cat([order[labels[order] == d][:per_digit] for d in range(10)])
    return images[picked], labels[picked]


def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images) == labels).float().mean().item()


def load_or_train_classifier(path: Path, data_dir: str | Path) -> tuple[MnistClassifier, float]:
    """The cached classifier at `path` (with its test accuracy in a .json beside it), trained if absent."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model = MnistClassifier()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), json.loads(meta_path.read_text())["test_accuracy"]
    started = time.perf_counter()
    model, test_accuracy = train_classifier(data_dir)
    if test_accuracy < CLASSIFIER_MIN_ACCURACY:
        raise RuntimeError(f"the classifier reached only {test_accuracy:.4f} test accuracy (< {CLASSIFIER_MIN_ACCURACY})")
    artifacts.save_torch(model.state_dict(), path)
    files.save_json(dict(test_accuracy=test_accuracy, train_seconds=round(time.perf_counter() - started, 1),
                             trained_on="MNIST training split (60,000)"), meta_path)
    return model, test_accuracy


class _Computed(nn.Identity):
    """torchmetrics' feature module for features computed beforehand: the classifier runs once per image,
    and FID (penultimate features), Inception Score (logits) and the readings all share that pass."""

    num_features = FEATURES


@torch.inference_mode()
def features_and_logits(model: MnistClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's penultimate features (what FID compares) and its logits, in one pass (eval mode)."""
    features = torch.cat([model.embed(chunk) for chunk in chunks(model, images)])
    return features, model.head(features)  # forward() without its dropout, which eval mode turns off


# -- metrics --------------------------------------------------------------------------------
def kl_to_uniform(predicted: torch.Tensor, classes: int = 10) -> float:
    """KL(histogram of predicted classes || uniform), in nats: 0 when balanced, log(10) for one class."""
    p = torch.bincount(predicted, minlength=classes).double() / len(predicted)
    nonzero = p > 0
    return (p[nonzero] * (p[nonzero] * classes).log()).sum().item()


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance between all pairs (pixel space); near 0 means the samples are copies."""
    if len(images) < 2:
        return float("nan")
    return torch.pdist(images.flatten(1).double()).mean().item()


@dataclass
class Row:
    name: str
    fid: float
    inception_score: float
    inception_std: float
    kl_uniform: float
    digit_accuracy: Optional[float] = None
    per_digit_accuracy: list[float] = field(default_factory=list)
    pairwise: list[float] = field(default_factory=list)  # per digit
    histogram: list[int] = field(default_factory=list)
    broken: float = float("nan")  # fraction with top class probability < BROKEN_BELOW
    cas: Optional[float] = None  # Classification Accuracy Score, when measured
    cas_predicted: Optional[torch.Tensor] = None  # that score's classifiers' readings of the real test images

    @property
    def pairwise_mean(self) -> float:
        finite = [d for d in self.pairwise if not math.isnan(d)]
        return sum(finite) / len(finite) if finite else float("nan")


class Evaluator:
    """Holds the classifier, the test-set reference statistics and the per-digit real references."""

    def __init__(self, classifier: MnistClassifier, test_images: torch.Tensor, test_labels: torch.Tensor) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance  # here: a second of imports the sections skip

        self.classifier = classifier.eval()
        self.fid = FrechetInceptionDistance(feature=_Computed(), reset_real_features=False)
        features, logits = features_and_logits(self.classifier, test_images)
        self.fid.update(features, real=True)
        self.test_images, self.test_labels = test_images, test_labels
        self.real_pairwise = [mean_pairwise_distance(test_images[test_labels == d][:PER_DIGIT]) for d in range(10)]
        hits = logits.argmax(1) == test_labels
        # The classifier's own accuracy per digit on real test images: the ceiling for requested-digit accuracy.
        self.real_per_digit_accuracy = [hits[test_labels == d].float().mean().item() for d in range(10)]
        self.real_broken = (F.softmax(logits, dim=1).max(1).values < BROKEN_BELOW).float().mean().item()

    def cas_readings(self, images: torch.Tensor, labels: torch.Tensor, epochs: int = CAS_EPOCHS,
                     seeds: int = CAS_SEEDS) -> torch.Tensor:
        """CAS's classifiers: `seeds` fresh ones, the fixed recipe trained on (`images`, `labels`) alone
        (e.g. generated digits with the digits they were asked to be), each reading every real test
        image (seeds x N). Their mean accuracy is the Classification Accuracy Score."""
        return torch.stack([predict(fit_classifier(images, labels, epochs, seed), self.test_images)
                            for seed in range(seeds)])

    def cas(self, images: torch.Tensor, labels: torch.Tensor, epochs: int = CAS_EPOCHS, seeds: int = CAS_SEEDS) -> float:
        """Classification Accuracy Score of (images, labels) on this evaluator's real test images."""
        return self.score(self.cas_readings(images, labels, epochs, seeds))

    def score(self, readings: torch.Tensor) -> float:
        """The fraction of the real test images read right (over every classifier in `readings`)."""
        return (readings == self.test_labels).float().mean().item()

    def measure_cas(self, row: Row, images: torch.Tensor, labels: torch.Tensor, seeds: int = CAS_SEEDS) -> None:
        """Sets `row`'s CAS, keeping its classifiers' readings for where-CAS-loses."""
        row.cas_predicted = self.cas_readings(images, labels, seeds=seeds)
        row.cas = self.score(row.cas_predicted)

    @torch.inference_mode()
    def row(self, name: str, images: torch.Tensor, requested: Optional[torch.Tensor] = None) -> Row:
        """Metrics of `images` (N x 1 x 28 x 28 in [0, 1]); `requested`: the digits asked for, if conditional."""
        features, logits = features_and_logits(self.classifier, images)
        self.fid.reset()
        self.fid.update(features, real=False)
        from torchmetrics.image.inception import InceptionScore

        inception = InceptionScore(feature=_Computed(), splits=10)  # on the logits
        inception.update(logits)
        score, std = inception.compute()
        predicted = logits.argmax(1)
        row = Row(name, self.fid.compute().item(), score.item(), std.item(), kl_to_uniform(predicted),
                  histogram=torch.bincount(predicted, minlength=10).tolist(),
                  broken=(F.softmax(logits, dim=1).max(1).values < BROKEN_BELOW).float().mean().item())
        groups = requested if requested is not None else predicted  # unconditional: group by what it looks like
        row.pairwise = [mean_pairwise_distance(images[groups == d][:PER_DIGIT]) for d in range(10)]
        if requested is not None:
            hits = predicted == requested
            row.digit_accuracy = hits.float().mean().item()
            row.per_digit_accuracy = [hits[requested == d].float().mean().item() for d in range(10)]
        return row


def cached_evaluator(artifacts_dir: Path, data_dir: str | Path) -> tuple[Evaluator, float]:
    """An Evaluator on the cached classifier (trained on first use) and the 10,000 test images,
    and that classifier's test accuracy. Raises MnistMissing without the data."""
    classifier, test_accuracy = load_or_train_classifier(Path(artifacts_dir) / "classifier.pt", data_dir)
    test_images, test_labels = load_mnist(data_dir, train=False)
    return Evaluator(classifier, test_images, test_labels), test_accuracy


@torch.inference_mode()
def generate(model: Generator, count: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`count` samples; a conditional model gets each digit count/10 times (the requested labels are returned)."""
    rng = torch.Generator().manual_seed(seed)
    noise, labels = sample_latent(model, count, rng, digits=torch.arange(count) % max(model.num_classes, 1))
    return run_in_chunks(model, noise, labels), labels


def shift_one_pixel(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (1, 0, 0, 0))[..., :, :-1]  # one pixel to the right, zeros enter on the left


def binomial_blur(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    return F.conv2d(images, kernel, padding=1)


# -- the report -----------------------------------------------------------------------------
# The targets of the served default model (issue 12).
TARGET_DIGIT_ACCURACY = 0.99  # requested-digit accuracy, every digit
TARGET_RELATIVE_ACCURACY = 0.99  # ... and this share of the classifier's accuracy on real test images of that digit
TARGET_CAS_GAP = 0.005  # CAS at most this far below the real-data reference
TARGET_FID = 8.0
TARGET_INCEPTION = 9.4
TARGET_KL = 0.01
TARGET_DIVERSITY = 0.9  # within-digit pairwise distance as a share of real, every digit
TARGET_BROKEN_RATIO = 2.0  # broken-sample fraction at most this multiple of the real test images' fraction
TARGET_TRAIN_SECONDS = 600


def diversity_ratios(row: Row, real_pairwise: list[float]) -> list[float]:
    return [mine / real for mine, real in zip(row.pairwise, real_pairwise)]


def _worst(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if len(finite) == len(values) else float("nan")


def format_table(rows: list[Row], real_pairwise: list[float]) -> str:
    cells = []
    for r in rows:
        ratios = diversity_ratios(r, real_pairwise)
        finite = [v for v in ratios if not math.isnan(v)]
        cells.append((
            r.name, f"{r.fid:.3f}", f"{r.inception_score:.3f} ± {r.inception_std:.3f}", f"{r.kl_uniform:.4f}",
            f"{r.digit_accuracy:.2%}" if r.digit_accuracy is not None else "–",
            f"{min(r.per_digit_accuracy):.2%}" if r.per_digit_accuracy else "–", f"{r.broken:.2%}",
            f"{sum(finite) / len(finite):.3f} ({_worst(ratios):.3f})" if finite else "–",
            f"{r.cas:.2%}" if r.cas is not None else "–"))
    return table(["samples", "FID ↓", "Inception Score ↑", "KL to uniform ↓", "requested digit ✓", "worst digit ✓",
                  f"broken (top p < {BROKEN_BELOW}) ↓", "within-digit diversity ÷ real: mean (worst digit)", "CAS ↑"],
                 cells)


def per_digit_table(rows: list[Row], real_pairwise: list[float], real_accuracy: list[float]) -> str:
    cells = [("classifier on real test images ✓", *(f"{v:.2%}" for v in real_accuracy)),
             ("real test images: pairwise distance", *(f"{v:.2f}" for v in real_pairwise))]
    for r in rows:
        if r.per_digit_accuracy:
            cells.append((f"{r.name}: requested digit ✓", *(f"{v:.2%}" for v in r.per_digit_accuracy)))
            cells.append((f"{r.name}: ÷ classifier on real",
                          *(f"{v / ref:.3f}" for v, ref in zip(r.per_digit_accuracy, real_accuracy))))
        cells.append((f"{r.name}: diversity ÷ real", *(f"{v:.3f}" for v in diversity_ratios(r, real_pairwise))))
        cells.append((f"{r.name}: predicted-class count", *(str(v) for v in r.histogram)))
    return table(["digit", *(str(d) for d in range(10))], cells)


def target_checks(row: Row, evaluator: Evaluator, cas_reference: Optional[float] = None,
                  train_seconds: Optional[float] = None) -> list[tuple[str, bool]]:
    """(what, met) for every target of the served default model that `row` carries."""
    checks = []
    if row.per_digit_accuracy:
        worst = min(row.per_digit_accuracy)
        relative = [v / ref for v, ref in zip(row.per_digit_accuracy, evaluator.real_per_digit_accuracy)]
        checks.append((f"requested-digit accuracy ≥ {TARGET_DIGIT_ACCURACY:.0%} for every digit "
                       f"(worst {worst:.2%}, digit {row.per_digit_accuracy.index(worst)})", worst >= TARGET_DIGIT_ACCURACY))
        checks.append((f"requested-digit accuracy ≥ {TARGET_RELATIVE_ACCURACY}× the classifier's accuracy on real test "
                       f"images of that digit, every digit (worst {min(relative):.3f}×, digit {relative.index(min(relative))})",
                       min(relative) >= TARGET_RELATIVE_ACCURACY))
    if row.cas is not None and cas_reference is not None:
        gap = cas_reference - row.cas
        checks.append((f"CAS {row.cas:.2%} within {TARGET_CAS_GAP * 100:.1f} points of the real reference "
                       f"{cas_reference:.2%} (gap {gap * 100:.2f} points)", gap <= TARGET_CAS_GAP))
    checks += [(f"FID {row.fid:.3f} ≤ {TARGET_FID:g}", row.fid <= TARGET_FID),
               (f"Inception Score {row.inception_score:.3f} ≥ {TARGET_INCEPTION}", row.inception_score >= TARGET_INCEPTION),
               (f"KL to uniform {row.kl_uniform:.4f} ≤ {TARGET_KL}", row.kl_uniform <= TARGET_KL)]
    ratios = diversity_ratios(row, evaluator.real_pairwise)
    worst_ratio = _worst(ratios)
    checks.append((f"within-digit diversity ≥ {TARGET_DIVERSITY}× real for every digit (worst {worst_ratio:.3f}×)",
                   worst_ratio >= TARGET_DIVERSITY))
    checks.append((f"broken samples {row.broken:.2%} ≤ {TARGET_BROKEN_RATIO:g}× the real test images' "
                   f"{evaluator.real_broken:.2%}", row.broken <= TARGET_BROKEN_RATIO * evaluator.real_broken))
    if train_seconds is not None:
        checks.append((f"training time {train_seconds / 60:.1f} min ≤ {TARGET_TRAIN_SECONDS / 60:.0f} min",
                       train_seconds <= TARGET_TRAIN_SECONDS))
    return checks


RUN_PLACE = {"data_dir", "out_dir", "device", "threads", "limit", "log_every"}  # where a run ran, not its recipe


def recipe_changes(config: dict) -> dict:
    """The settings of a run (generator.json's "config") that differ from its preset's current defaults."""
    def recipe(settings: dict) -> dict:  # in generator.json's form (tuples become lists), less where it ran
        return {key: value for key, value in json.loads(json.dumps(settings)).items() if key not in RUN_PLACE}

    removed, missing = settings_unknown_here(config)
    # a run from before a setting existed did what ADDED_SETTINGS says
    config, defaults = recipe({**ADDED_SETTINGS, **config}), recipe(asdict(make_config(config["preset"])))
    changes = {key: value for key, value in config.items() if key in defaults and value != defaults[key]}
    # a setting added after the run, its earlier value unknown: say so instead of guessing
    changes.update({key: "not recorded" for key in missing if key in defaults})
    # a setting removed since (an experiment's option): today's code cannot repeat the run, so say what it was
    changes.update({key: f"{value} (no longer a setting)" for key, value in removed.items()})
    return changes


def cas_misses_table(rows: list[Row], test_labels: torch.Tensor) -> str:
    cells = []
    for r in rows:
        if r.cas_predicted is None:
            continue
        per_digit, common = cas_misses(r.cas_predicted, test_labels)
        cells.append((r.name, f"{sum(per_digit):.1f}", *(f"{n:.1f}" for n in per_digit),
                      ", ".join(f"{t} → {p}: {n:.1f}" for t, p, n in common)))
    return table(["samples", "missed", *(str(d) for d in range(10)), "commonest (true → read as: count)"], cells)


def missed_picture(evaluator: Evaluator, row: Row, reference: Row, path: Path, limit: int = 100) -> bool:
    """The real test digits that all of `row`'s CAS classifiers miss and all of `reference`'s read right,
    in digit order; False (and no picture) when there are none."""
    labels = evaluator.test_labels
    only_row = (row.cas_predicted != labels).all(0) & (reference.cas_predicted == labels).all(0)
    order = torch.argsort(labels[only_row], stable=True)[:limit]
    images = evaluator.test_images[only_row][order]
    if len(images):
        artifacts.image_grid(images, 10, path, title=f"missed by every classifier trained on generated digits only "
                                                     f"({int(only_row.sum())}; first {len(images)} by digit)")
    return bool(len(images))


def digit_grid(model: Generator, path: Path, title: str) -> None:
    """One row per digit (conditional), or 100 samples (unconditional)."""
    with torch.inference_mode():
        rng = torch.Generator().manual_seed(2024)
        noise, labels = sample_latent(model, 100, rng, digits=torch.arange(10).repeat_interleave(10))
        images = model(noise, labels)
    artifacts.image_grid(images, 10, path, title=title)


def noise_spreads(text: str) -> list[float]:
    """--noise-stds: a comma list of normal-noise spreads ('' for none)."""
    try:
        return [checked_noise_std("normal", float(std)) for std in text.split(",") if std.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}")


def runs_to_measure(out: Path, models: list[str], noise_stds: list[float]) -> list[tuple[str, Path, Optional[float]]]:
    """The generator rows: (name, run directory, noise_std to sample with instead of the run's own).

    The tutorial baseline, the `NAME=RUN_DIR` runs, the served model at each of `noise_stds`, and
    last the served model as it is served.
    """
    runs = [("tutorial preset", out / "presets" / "tutorial", None)]
    runs += [(name, Path(run_dir), None) for name, run_dir in (spec.split("=", 1) for spec in models)]
    runs += [("the served model", out, std) for std in noise_stds]
    return runs + [("default model (served)", out, None)]


def written_by(models: list[str]) -> str:
    """The page's provenance line: rows from run directories outside the repository are not `make evaluate`'s."""
    if not models:
        return "Written by `make evaluate` (`python -m experiments.evaluate`); rerun it to measure again."
    names = ", ".join(spec.split("=", 1)[0] for spec in models)
    return (f"Written by `python -m experiments.evaluate` with {len(models)} extra `--model` rows ({names}); "
            "`make evaluate` rewrites it without them.")


SECTIONS = {"one-hand": one_hand.section, "your-hand": your_hand.section}  # the served model's sections beside the table


def served_sections(model: Generator, classifier: MnistClassifier, test_images: torch.Tensor,
                    test_labels: torch.Tensor, only: Optional[str] = None) -> list[str]:
    """The served model's sections that follow the main table (`only`: that one alone), each a "## " section."""
    return [section(model, classifier, test_images, test_labels)
            for name, section in SECTIONS.items() if only in (None, name)]


def rewrite_section(out: Path, data_dir: str, page: Path, only: str) -> None:
    """`--only NAME`: that section of the served model, measured and rewritten in `page` alone (it needs the
    classifier and the test digits, not an Evaluator's FID references)."""
    try:
        classifier, _ = load_or_train_classifier(out / "classifier.pt", data_dir)
        test_images, test_labels = load_mnist(data_dir, train=False)
        model, _ = artifacts.load_run(out)
    except (MnistMissing, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")
    text = served_sections(model, classifier, test_images, test_labels, only)[0]
    write_section(page, "Quality report", "make evaluate", text)
    print(text)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--docs-dir", type=Path, default=Path("docs"),
                        help="where the results page (quality.md) and its pictures (digits.png, cas_misses.png) go")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="extra generator rows (a run directory with generator.pt and generator.json)")
    # a narrower and two wider spreads than the served one: the trade that train/config.py's noise_std settles
    parser.add_argument("--noise-stds", type=noise_spreads, default=[1.0, 1.2, 1.35], metavar="STD,STD",
                        help="extra rows: the served model sampled with these noise_std values ('' for none)")
    parser.add_argument("--cas-per-digit", type=int, default=CAS_PER_DIGIT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=list(SECTIONS),
                        help="measure this section of the page alone and rewrite it, keeping the rest")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The searches for hands are timed as a worker runs them: SciPy's OpenBLAS on one thread (read when SciPy loads,
    # later), where a second would spin on the small vectors of L-BFGS-B.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    out: Path = args.out_dir
    if args.only:
        rewrite_section(out, args.data_dir, args.docs_dir / "quality.md", args.only)
        return
    try:
        evaluator, test_accuracy = cached_evaluator(out, args.data_dir)
        train_images, train_labels = load_mnist(args.data_dir, train=True)
    except MnistMissing as error:
        raise SystemExit(f"error: {error}")
    print(f"classifier test accuracy: {test_accuracy:.4f}", file=sys.stderr)
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:SAMPLES]
    real, real_labels = train_images[pick], train_labels[pick]
    rows = [evaluator.row("real training images (floor)", real, real_labels),
            evaluator.row("real, shifted one pixel", shift_one_pixel(real)),
            evaluator.row("real, 3x3 binomial blur", binomial_blur(real))]
    per_digit = args.cas_per_digit
    print(f"CAS reference: the fixed recipe on {per_digit:,} real training images per digit", file=sys.stderr)
    evaluator.measure_cas(rows[0], *balanced_subset(train_images, train_labels, per_digit))
    cas_reference = rows[0].cas
    notes, default, default_meta, pictures = [], None, None, []
    for name, run_dir, noise_std in runs_to_measure(out, args.model, args.noise_stds):
        try:
            model, meta = artifacts.load_run(run_dir)
            if noise_std is not None:
                model.noise_std = checked_noise_std(model.noise, noise_std)
        except ValueError as error:
            notes.append(f"- {name}: skipped ({error})")
            continue
        label = (f"{name}: {meta['preset']}, {meta['epochs']} epochs, {meta['train_seconds'] / 60:.1f} min"
                 + (f", noise std {model.noise_std:g}" if model.noise == "normal" else ""))
        changes = recipe_changes(meta["config"])
        if changes:
            notes.append(f"- {label}: differs from today's `{meta['preset']}` preset in "
                         + ", ".join(f"`{key}={value}`" for key, value in changes.items()))
        images, requested = generate(model)
        rows.append(evaluator.row(label, images, requested))
        if model.num_classes:
            print(f"CAS of {name}: the fixed recipe on {per_digit:,} generated digits per requested digit", file=sys.stderr)
            evaluator.measure_cas(rows[-1], *generate_per_digit(model, per_digit))
        if run_dir == out and noise_std is None:
            default, default_meta, default_model = rows[-1], meta, model
            pictures = [out / "digits.png"]
            digit_grid(model, pictures[0], f"{meta['preset']}: one row per digit")
            if default.cas_predicted is not None and missed_picture(evaluator, default, rows[0], out / "cas_misses.png"):
                pictures.append(out / "cas_misses.png")
            for picture in pictures:  # drawn once, published beside the page
                with files.atomic_path(args.docs_dir / picture.name) as tmp:
                    shutil.copyfile(picture, tmp)
    results = format_table(rows, evaluator.real_pairwise)
    report = ["# Quality report", "",
              written_by(args.model), "",
              f"Feature space: an MNIST classifier trained on the training split, test accuracy {test_accuracy:.2%}. "
              f"{SAMPLES:,} samples per row ({SAMPLES // 10:,} per requested digit) against the 10,000 test images. "
              f"Broken: top class probability below {BROKEN_BELOW} (real test images: {evaluator.real_broken:.2%}). "
              f"Diversity: mean pairwise pixel distance of {PER_DIGIT} samples of a digit, divided by the same for real "
              f"test images. CAS (Classification Accuracy Score): fresh classifiers, fixed recipe ({CAS_EPOCHS} epochs, the mean "
              f"of {CAS_SEEDS} seeds), "
              f"trained on {per_digit:,} images per digit (generated: labelled with the requested digit) and tested on "
              f"the 10,000 real test images; its reference is the first row, the same recipe on {per_digit:,} real "
              "training images per digit. A generated row names the standard deviation of the normal noise it was "
              "sampled with (G trains on N(0, I); `noise_std` sets what the served model draws).", "", results, "",
              "## Per digit", "", per_digit_table(rows, evaluator.real_pairwise, evaluator.real_per_digit_accuracy), ""]
    if default is not None:
        train_seconds = default_meta["train_seconds"]
        report += ["## Targets (served default model)", "",
                   f"Trained on {default_meta['device']} with {default_meta['threads']} thread(s).", ""]
        report += [f"- {'PASS' if ok else 'MISS'}: {text}"
                   for text, ok in target_checks(default, evaluator, cas_reference, train_seconds)]
        report += ["", "![one row per digit](digits.png)", ""]
        report += served_sections(default_model, evaluator.classifier, evaluator.test_images, evaluator.test_labels)
    report += ["## Where CAS loses", "",
               f"The real test digits that each row's CAS classifiers read wrong (mean of {CAS_SEEDS}), by true digit, and the "
               "commonest mistakes (true digit → read as). A generator that never draws a way of writing a digit (say, a 7 "
               "with a bar through it) teaches its classifier nothing about it.", "",
               cas_misses_table(rows, evaluator.test_labels), ""]
    if out / "cas_misses.png" in pictures:
        report += ["![real test digits every CAS classifier of the served model misses and every one of the real "
                   "reference reads right]"
                   "(cas_misses.png)", ""]
    if notes:
        report += ["## Notes on the rows", "", *notes, ""]
    text = "\n".join(report) + "\n"
    for path in (out / "report.md", args.docs_dir / "quality.md"):
        with files.atomic_path(path) as tmp:
            tmp.write_text(text)
    print(text)
    written = [args.docs_dir / "quality.md", *(args.docs_dir / picture.name for picture in pictures), out / "report.md"]
    print(f"\nwrote {', '.join(map(str, written))}", file=sys.stderr)


if __name__ == "__main__":
    main()
