"""`make evaluate`'s "Your hand" section: a person's digit in, any number out in that hand.

The served `hand` field finds the noise vector whose drawing of the uploaded digit matches it (GAN inversion,
`find_hand` in handler/generator.py), then writes with that vector. Here UPLOADS real MNIST test digits are the
uploads, sent as the API's 28 x 28 arrays and as PNGs the way a photo of paper arrives (280 x 280, dark ink on a
light gradient, prepared by the API's own `prepare_png`). For each found hand:

- copy error: the mean squared error between the upload (as prepared) and the hand's drawing of that digit, as a
  ratio to the best of RANDOM_HANDS random hands for the same upload (one bank of random hands per digit);
- style carried: for ink, slant and width (experiments.one_hand.style_measures), the correlation over uploads of
  the upload's measure with the mean measure of the nine other digits the found hand writes. Within digits: each
  digit's mean is taken from both sides first, because which digit was uploaded sets much of its ink and width
  (a 1 holds less ink than an 8) and the other nine are then a different nine; pooled over digits, even the
  model's own hands, with their own digit as the upload, score only what `ceiling` measures;
- legible: those nine digits read right by the evaluation classifier, as a ratio to its accuracy on real test
  digits;
- round trip: a digit the model drew (its JSON answer, rounded as served) sent back: the found hand's other nine
  digits against the drawing hand's (mean squared error), as a ratio to two random hands writing the same digit.

The evaluation classifier only reads the results: nothing here, nor in the search, is guided by it.
"""
import io
import math
import time

import numpy as np
import torch
from PIL import Image

from experiments.classifier import MnistClassifier, predict
from experiments.one_hand import STYLES, style_measures
from handler.generator import Generator, find_hand, sample_noise
from handler.request_contract import DECIMALS, prepare_png

UPLOADS = 1_000
RANDOM_HANDS = 1_024
PHOTO_SIDE = 280  # the PNG uploads: ten times MNIST's side, as a phone's crop of one digit on paper
TARGETS = {"copy": 0.2, "ink": 0.75, "slant": 0.85, "legible": 0.98, "round trip": 0.1, "png": 0.05}


def as_photo(image: torch.Tensor, seed: int) -> bytes:
    """A 28 x 28 digit (white on black) as a PNG of dark ink on light paper whose brightness runs across the page
    (from 0.80 to 0.95 of white, in a seeded direction), PHOTO_SIDE pixels a side, 8-bit gray."""
    ink = Image.fromarray(image.reshape(28, 28).numpy().astype(np.float32), mode="F")
    ink = np.asarray(ink.resize((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC)).clip(0, 1)
    angle = np.random.default_rng(seed).uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:PHOTO_SIDE, 0:PHOTO_SIDE] / (PHOTO_SIDE - 1) - 0.5
    along = (np.cos(angle) * xx + np.sin(angle) * yy) / math.sqrt(0.5) * 0.5 + 0.5  # 0 to 1 across the page
    paper = 0.80 + 0.15 * along
    buffer = io.BytesIO()
    Image.fromarray(np.rint(255 * paper * (1 - ink)).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@torch.inference_mode()
def write_all_digits(model: Generator, hands: torch.Tensor) -> torch.Tensor:
    """N hands x 10 digits x 1 x 28 x 28."""
    return torch.stack([model(hands, torch.full((len(hands),), d)) for d in range(model.num_classes)], dim=1)


def others_of(drawn: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """N x 10 x ... -> N x 9 x ...: every digit but each row's own."""
    keep = torch.ones(drawn.shape[:2], dtype=torch.bool)
    keep[torch.arange(len(digits)), digits] = False
    return drawn[keep].view(len(digits), drawn.shape[1] - 1, *drawn.shape[2:])


def within_digit_correlation(a: torch.Tensor, b: torch.Tensor, digits: torch.Tensor) -> float:
    """The correlation of a and b over all rows, each digit's mean taken from both first."""
    a, b = a.double().clone(), b.double().clone()
    for d in digits.unique():
        rows = digits == d
        a[rows] -= a[rows].mean()
        b[rows] -= b[rows].mean()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def pooled_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def style_carried(uploads: torch.Tensor, written: torch.Tensor, digits: torch.Tensor) -> dict[str, tuple[float, float]]:
    """For each style measure: (within-digit, pooled) correlation of each upload's measure with the mean measure
    of the other nine digits its hand wrote. uploads N x 1 x 28 x 28; written N x 10 x 1 x 28 x 28."""
    mine = style_measures(uploads)
    others = style_measures(others_of(written, digits).flatten(0, 1))
    result = {}
    for name in STYLES:
        theirs = others[name].view(len(digits), -1).mean(1)
        result[name] = (within_digit_correlation(mine[name], theirs, digits), pooled_correlation(mine[name], theirs))
    return result


def best_random_errors(model: Generator, uploads: torch.Tensor, digits: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """For each upload, the least mean squared error of RANDOM_HANDS random hands writing its digit."""
    bank = sample_noise(model, RANDOM_HANDS, torch.Generator().manual_seed(seed))
    best = torch.empty(len(uploads))
    with torch.inference_mode():
        for d in digits.unique().tolist():
            drawn = model(bank, torch.full((RANDOM_HANDS,), d)).flatten(1)
            rows = torch.nonzero(digits == d).flatten()
            best[rows] = torch.cdist(uploads[rows].flatten(1).double(), drawn.double()).pow(2).min(1).values.float() / 784
    return best


def found_hands(model: Generator, uploads: torch.Tensor, digits: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The hand found for each upload, and the median milliseconds a search took (on one thread, as in a worker:
    on one small image a second thread only spin-waits)."""
    hands, seconds, threads = [], [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for image, digit in zip(uploads, digits.tolist()):
            started = time.perf_counter()
            hands.append(find_hand(model, image[0], digit))
            seconds.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return torch.stack(hands), 1000 * float(np.median(seconds))


def measure(model: Generator, classifier: MnistClassifier, uploads: torch.Tensor, digits: torch.Tensor,
            real_accuracy: float) -> dict:
    """Every figure of the section for one way of sending the uploads (prepared, N x 1 x 28 x 28)."""
    hands, milliseconds = found_hands(model, uploads, digits)
    written = write_all_digits(model, hands)
    copies = written[torch.arange(len(digits)), digits]
    errors = ((copies - uploads) ** 2).flatten(1).mean(1)
    others = others_of(written, digits)
    read = predict(classifier, others.flatten(0, 1)).view(len(digits), -1)
    wanted = others_of(torch.arange(10).repeat(len(digits), 1), digits)
    return {"copy": (errors / best_random_errors(model, uploads, digits)).mean().item(),
            "style": style_carried(uploads, written, digits),
            "legible": (read == wanted).float().mean().item() / real_accuracy, "ms": milliseconds}


def round_trip(model: Generator, count: int, seed: int = 2) -> tuple[float, float]:
    """Digits the model drew, sent back (rounded as the API answers): the found hands' other nine digits against
    the drawing hands' (mean squared error), as a ratio to the same between two random hands; and, for scale, the
    ratio for the mean hand (a search that learnt nothing from the digit)."""
    rng = torch.Generator().manual_seed(seed)
    hands = sample_noise(model, count, rng)
    digits = torch.randint(0, model.num_classes, (count,), generator=rng)
    drawn = write_all_digits(model, hands)
    sent = drawn[torch.arange(count), digits].round(decimals=DECIMALS)
    strangers = ((write_all_digits(model, sample_noise(model, count, rng)) - drawn) ** 2).mean().item()
    mean_hand = torch.zeros_like(hands) if model.noise == "normal" else torch.full_like(hands, 0.5)
    found, _ = found_hands(model, sent, digits)
    return tuple(((others_of(write_all_digits(model, guess), digits) - others_of(drawn, digits)) ** 2).mean().item()
                 / strangers for guess in (found, mean_hand))


def ceiling(model: Generator, count: int = 2_000, seed: int = 3) -> dict[str, tuple[float, float]]:
    """style_carried for the model's own hands with their own drawing as the upload: what a search that found
    every drawing's true hand would score."""
    rng = torch.Generator().manual_seed(seed)
    hands = sample_noise(model, count, rng)
    digits = torch.randint(0, model.num_classes, (count,), generator=rng)
    written = write_all_digits(model, hands)
    return style_carried(written[torch.arange(count), digits], written, digits)


def section(model: Generator, classifier: MnistClassifier, test_images: torch.Tensor, test_labels: torch.Tensor,
            uploads: int = UPLOADS, seed: int = 0, ceiling_hands: int = 2_000) -> str:
    """The results page's "## Your hand" section for `model`, with its targets."""
    if not model.num_classes:
        return ("## Your hand\n\nNot measured: the served model is unconditional, so a hand found from one digit "
                "cannot be asked for another (the API refuses `hand` for it).\n")
    real_accuracy = (predict(classifier, test_images) == test_labels).float().mean().item()
    pick = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))[:uploads]
    images, digits = test_images[pick], test_labels[pick]
    photos = torch.stack([torch.from_numpy(prepare_png(as_photo(image, i))) for i, image in enumerate(images)])
    routes = {"28 x 28 arrays": measure(model, classifier, images, digits, real_accuracy),
              "PNG photos (280 x 280, dark on a light gradient)": measure(model, classifier, photos.unsqueeze(1),
                                                                          digits, real_accuracy)}
    (trip, mean_trip), best = round_trip(model, uploads), ceiling(model, ceiling_hands)
    rows = []
    for route, m in routes.items():
        rows.append(f"| {route} | {m['copy']:.3f}× | " + " | ".join(
            f"{m['style'][s][0]:.2f} ({m['style'][s][1]:.2f})" for s in STYLES) + f" | {m['legible']:.3f}× | {m['ms']:.0f} |")
    rows.append("| the model's own hands, their own digit as the upload (a perfect search) | – | " + " | ".join(
        f"{best[s][0]:.2f} ({best[s][1]:.2f})" for s in STYLES) + " | – | – |")
    arrays, pngs = routes.values()
    gaps = [abs(arrays["copy"] - pngs["copy"]), abs(arrays["legible"] - pngs["legible"])]
    gaps += [abs(arrays["style"][s][0] - pngs["style"][s][0]) for s in STYLES]
    checks = [(f"copy error {arrays['copy']:.3f}× the best of {RANDOM_HANDS:,} random hands (target ≤ {TARGETS['copy']}×)",
               arrays["copy"] <= TARGETS["copy"]),
              *((f"{s} carried {arrays['style'][s][0]:.2f} (target ≥ {TARGETS[s]})", arrays["style"][s][0] >= TARGETS[s])
                for s in ("ink", "slant")),
              (f"the nine other digits read right {arrays['legible']:.3f}× as often as real test digits (target ≥ "
               f"{TARGETS['legible']}×)", arrays["legible"] >= TARGETS["legible"]),
              (f"round trip {trip:.3f}× two random hands' difference (target ≤ {TARGETS['round trip']}×)",
               trip <= TARGETS["round trip"]),
              (f"PNG photos against arrays: every figure within {max(gaps):.3f} (target ≤ {TARGETS['png']})",
               max(gaps) <= TARGETS["png"])]
    lines = ["## Your hand", "",
             f"{uploads:,} real test digits as uploads to the `hand` field, each as the API's 28 x 28 array and as a "
             f"{PHOTO_SIDE} x {PHOTO_SIDE} PNG of dark ink on light paper whose brightness runs across the page (the API "
             "prepares a PNG as MNIST's digits were: cropped to the ink, 20 px on its longest side, centered by its "
             "center of mass). For each, the hand `find_hand` finds (handler/generator.py) writes every digit. Copy "
             f"error: the mean squared error of the hand's drawing of the uploaded digit, as a ratio to the best of "
             f"{RANDOM_HANDS:,} random hands for the same upload (mean of the ratios). Style carried: the correlation "
             "over uploads of the upload's ink, slant or width with the mean of the nine other digits the hand writes, "
             "within digits (each digit's mean taken from both sides: which digit was uploaded sets much of its ink and "
             "width, and decides which nine are the others); pooled over digits in brackets. Legible: the nine other "
             "digits read right by the evaluation classifier, as a ratio to its accuracy on real test digits. One search "
             "on one thread, in-process.", "",
             "| uploads | copy error ÷ best random | ink carried | slant carried | width carried | legible | ms per search |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
             f"Round trip: {uploads:,} digits the model drew, sent back as its JSON answer; the found hand's other nine "
             f"digits differ from the drawing hand's by {trip:.3f}× what two random hands writing the same digits differ "
             f"by (mean squared error); the mean hand (noise 0, nothing learnt from the digit) differs by {mean_trip:.3f}×.",
             ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks]
    return "\n".join(lines) + "\n"
