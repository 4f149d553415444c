"""`make evaluate`'s "One hand" section: does one noise vector keep one person's handwriting across digits?

A hand is one noise vector, as the served `digits` field draws them. Each of HANDS hands writes every
digit, and three style measures are read off each image's ink: ink (its mean intensity), slant (how far
the ink moves right per row up, cov(x, y) / var(y), the shear that MNIST deskewing removes) and width (the
ink's spread in x). A style that belongs to the hand varies from hand to hand and agrees across its
digits: for each pair of digits, the correlation of the measure over the hands, and the mean over the 45
pairs (1: the hand decides it; 0: each digit draws its own). Then whole numbers: random 5-digit numbers,
each written by one hand, read by the evaluation classifier, right when every digit is, beside the same
numbers put together from real test digits drawn at random.
"""
import torch

from experiments.classifier import MnistClassifier, predict
from handler.generator import Generator, sample_noise

HANDS = 400
NUMBERS = 2_000
NUMBER_LENGTH = 5
STYLES = ("ink", "slant", "width")
TARGET_CORRELATION = {"ink": 0.8, "slant": 0.8}  # width has no target: the digit shapes it more than the hand
TARGET_NUMBERS_READ = 0.98


def style_measures(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ink, slant and width of each of N x 1 x 28 x 28 images (intensity-weighted moments of the ink)."""
    ink = images[:, 0].double()
    mass = ink.sum((1, 2)).clamp_min(1e-9)
    rows = torch.arange(28, dtype=torch.float64)
    y, x = rows.view(1, 28, 1), rows.view(1, 1, 28)
    mean_x = (ink * x).sum((1, 2)) / mass
    mean_y = (ink * y).sum((1, 2)) / mass
    dx, dy = x - mean_x.view(-1, 1, 1), y - mean_y.view(-1, 1, 1)
    var_x, var_y = (ink * dx**2).sum((1, 2)) / mass, (ink * dy**2).sum((1, 2)) / mass
    # y grows downwards: minus makes a slant to the right (top of the digit further right) positive
    slant = -(ink * dx * dy).sum((1, 2)) / mass / var_y.clamp_min(1e-9)
    return {"ink": ink.mean((1, 2)), "slant": slant, "width": var_x.sqrt()}


def mean_correlation_across_digits(values: torch.Tensor) -> float:
    """values: hands x digits. The mean over pairs of digits of the correlation over hands."""
    correlations = torch.corrcoef(values.T)
    pairs = torch.triu_indices(len(correlations), len(correlations), offset=1)
    return correlations[pairs[0], pairs[1]].mean().item()


@torch.inference_mode()
def write(model: Generator, hands: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """hands (N noise vectors) x digits (N x L) -> N x L x 1 x 28 x 28: hand i writes the number digits[i]."""
    return torch.stack([model(hands, digits[:, position]) for position in range(digits.shape[1])], dim=1)


def hand_correlations(model: Generator, hands: int = HANDS, seed: int = 0) -> dict[str, float]:
    """For each style measure, its mean correlation across digits over `hands` hands writing 0-9."""
    noise = sample_noise(model, hands, torch.Generator().manual_seed(seed))
    images = write(model, noise, torch.arange(model.num_classes).repeat(hands, 1))
    measures = style_measures(images.flatten(0, 1))
    return {name: mean_correlation_across_digits(values.view(hands, -1)) for name, values in measures.items()}


def read_right(classifier: MnistClassifier, images: torch.Tensor, digits: torch.Tensor) -> float:
    """The fraction of numbers (N x L images of N x L digits) whose every digit the classifier reads right."""
    read = predict(classifier, images.flatten(0, 1))
    return (read.view(digits.shape) == digits).all(1).float().mean().item()


def numbers_read_right(model: Generator, classifier: MnistClassifier, test_images: torch.Tensor,
                       test_labels: torch.Tensor, numbers: int = NUMBERS, seed: int = 0) -> tuple[float, float]:
    """The fraction of `numbers` random numbers read right on every digit: each written by one hand of `model`,
    and the same numbers made of real test digits drawn at random."""
    rng = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (numbers, NUMBER_LENGTH), generator=rng)
    generated = write(model, sample_noise(model, numbers, rng), digits)
    by_digit = [torch.nonzero(test_labels == d).flatten() for d in range(10)]
    picks = torch.stack([by_digit[d][torch.randint(len(by_digit[d]), (), generator=rng)] for d in digits.flatten()])
    real = test_images[picks].view(numbers, NUMBER_LENGTH, *test_images.shape[1:])
    return read_right(classifier, generated, digits), read_right(classifier, real, digits)


def section(model: Generator, classifier: MnistClassifier, test_images: torch.Tensor, test_labels: torch.Tensor,
            hands: int = HANDS, numbers: int = NUMBERS) -> str:
    """The results page's "## One hand" section for `model`, with its targets."""
    if not model.num_classes:
        return ("## One hand\n\nNot measured: the served model is unconditional, so a hand (a noise vector) cannot be "
                "asked for each digit.\n")
    correlations = hand_correlations(model, hands)
    generated, real = numbers_read_right(model, classifier, test_images, test_labels, numbers)
    checks = [(f"{name} correlation across digits {correlations[name]:.2f} (target ≥ {target})",
               correlations[name] >= target) for name, target in TARGET_CORRELATION.items()]
    checks.append((f"{NUMBER_LENGTH}-digit numbers read right {generated:.2%} (target ≥ {TARGET_NUMBERS_READ:.0%}; "
                   f"real test digits: {real:.2%})", generated >= TARGET_NUMBERS_READ))
    lines = ["## One hand", "",
             f"{hands} hands (noise vectors, as the `digits` field draws them) each write 0-9; for each style measure, "
             "the correlation over hands between two digits' values, averaged over the 45 pairs of digits (1: the "
             "hand decides the style; 0: each digit draws its own). Ink: mean intensity; slant: the ink's shear, "
             "cov(x, y) / var(y); width: the ink's standard deviation in x. Then "
             f"{numbers:,} random {NUMBER_LENGTH}-digit numbers, each written by one hand, read by the evaluation "
             "classifier: right when every digit is; beside the same numbers made of real test digits drawn at random.",
             "", "| style | ink | slant | width |", "|---|---:|---:|---:|",
             "| mean correlation across digits | " + " | ".join(f"{correlations[s]:.2f}" for s in STYLES) + " |",
             "", "| numbers | read right on every digit |", "|---|---:|",
             f"| {NUMBER_LENGTH} digits, written by one hand each | {generated:.2%} |",
             f"| {NUMBER_LENGTH} digits, real test digits drawn at random | {real:.2%} |", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks]
    return "\n".join(lines) + "\n"
