"""`make evaluate`'s "Your hand" section: what a person wrote in, any number out in that hand.

The served `hand` field finds the noise vector whose drawings of the uploaded digits match them (GAN inversion,
`find_hand` in handler/search.py, as a worker runs it: in ONNX Runtime), then writes with that vector. One digit:
UPLOADS real MNIST test digits are the uploads, sent as the API's 28 x 28 arrays and as PNGs the way a photo of
paper arrives (280 x 280, dark ink on a light gradient, prepared by the API's own `prepare_digit`). For each:

- copy error: the mean squared error between the upload (as prepared) and the hand's drawing of that digit, as a
  ratio to the best of RANDOM_HANDS random hands for the same upload (one bank of random hands per digit);
- style carried: for ink, slant and width (experiments.one_hand.style_measures), the correlation over uploads of
  the upload's measure with the mean measure of the nine other digits the found hand writes. Within digits: each
  digit's mean is taken from both sides first, because which digit was uploaded sets much of its ink and width
  (a 1 holds less ink than an 8) and the other nine are then a different nine; pooled over digits, even the
  model's own hands, with their own digit as the upload, score only what `ceiling` measures;
- legible: those nine digits read right by the evaluation classifier, as a ratio to its accuracy on real test
  digits.

A number (hand.digits): NUMBER_HANDS hands of the model write k different digits each, sent back as k arrays and as
one photo of the number (PNG and JPEG, cut by the API), and the round trip measures how far the found hand writes
the other digits from the drawing hand (mean squared error, as a ratio to two random hands writing the same
digits), with the style each carries to them; and experiments/cutting.py measures how well real handwriting is cut.

The evaluation classifier only reads the results: nothing here, nor in the search or the cutting, is guided by it.
"""
import functools
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime
import torch

from experiments.classifier import MnistClassifier, predict
from experiments.report import table
from experiments.one_hand import STYLES, style_measures
from experiments import cutting
from experiments.photos import on_paper, saved, written_number
from handler.generator import Generator, sample_noise
from handler.search import SEARCH_ONNX_FILE, find_hand
from scripts.archive import export_search_onnx
from handler.request_contract import DECIMALS
from handler.upload import UnusableImage, prepare_digit, prepare_number

UPLOADS = 1_000
RANDOM_HANDS = 1_024
PHOTO_SIDE = 280  # the PNG uploads: ten times MNIST's side, as a phone's crop of one digit on paper
NUMBER_HANDS = 300  # hands sent back as k digits, for each k
SHOWN = (1, 2, 3, 5)  # how many digits of one hand are sent back at once, as arrays
PHOTO_SHOWN = (1, 3, 5)  # ... and as one photo of the number
PHOTO_KINDS = ("PNG", "JPEG")
PHOTO_SCALE = 8  # a number's photo: 8 times MNIST's size (a digit about 160 px tall)
TARGETS = {"copy": 0.2, "ink": 0.75, "slant": 0.85, "legible": 0.98, "png": 0.05,
           "round trip": {3: 0.1, 5: 0.05}, "photo": {"ink": 0.93, "slant": 0.95, "width": 0.90}, "cut": 0.98}


def as_photo(image: torch.Tensor, seed: int) -> bytes:
    """A 28 x 28 digit (white on black) as a PNG of dark ink on light paper whose brightness runs across the page
    (from 0.80 to 0.95 of white, in a seeded direction), PHOTO_SIDE pixels a side, 8-bit gray."""
    ink = image.reshape(28, 28).numpy().astype(np.float32)
    return saved(on_paper(ink, PHOTO_SIDE // 28, seed, light=(0.80, 0.95), noise=0.0))


@torch.inference_mode()
def write_all_digits(model: Generator, hands: torch.Tensor) -> torch.Tensor:
    """N hands x 10 digits x 1 x 28 x 28."""
    return torch.stack([model(hands, torch.full((len(hands),), d)) for d in range(model.num_classes)], dim=1)


def others_of(drawn: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """N x 10 x ... -> N x (10 - k) x ...: every digit but the k each row shows (digits: N, or N x k, each row's
    digits different)."""
    shown = digits.view(len(digits), -1)
    keep = torch.ones(drawn.shape[:2], dtype=torch.bool)
    keep[torch.arange(len(digits))[:, None], shown] = False
    return drawn[keep].view(len(digits), drawn.shape[1] - shown.shape[1], *drawn.shape[2:])


def different_digits(count: int, shown: int, rng: torch.Generator, classes: int = 10) -> torch.Tensor:
    """count x shown digits, each row's all different: what a hand shows of itself."""
    return torch.stack([torch.randperm(classes, generator=rng)[:shown] for _ in range(count)])


def within_digit_correlation(a: torch.Tensor, b: torch.Tensor, digits: torch.Tensor) -> float:
    """The correlation of a and b over all rows, each digit's mean taken from both first."""
    a, b = a.double().clone(), b.double().clone()
    for d in digits.unique():
        rows = digits == d
        a[rows] -= a[rows].mean()
        b[rows] -= b[rows].mean()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def hand_correlation(found: torch.Tensor, true: torch.Tensor, digits: torch.Tensor) -> float:
    """The correlation over hands of a style measure of the digits each hand writes (N x m values of the digits
    N x m), as the found hands write them against as the true hands do: each hand's mean over its m digits, each
    value less its digit's mean over hands first (which digits a hand's m are would otherwise set much of its mean)."""
    found, true = found.double().view(digits.shape).clone(), true.double().view(digits.shape).clone()
    for digit in digits.unique():
        where = digits == digit
        found[where] -= found[where].mean()
        true[where] -= true[where].mean()
    return pooled_correlation(found.mean(1), true.mean(1))


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


@functools.lru_cache(maxsize=2)
def served_search(model: Generator) -> Optional[onnxruntime.InferenceSession]:
    """The search's steps as a worker on a CPU runs them: the model's LossAndGradient exported as `make archive`
    exports it, in ONNX Runtime on one thread; None for a generator the export does not cover."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / SEARCH_ONNX_FILE
        if not export_search_onnx(model, path):
            return None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def found_hands(model: Generator, uploads: torch.Tensor, digits: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The hand found for each upload (N x k x 28 x 28, its k digits N x k; k may be 1: N x 1 x 28 x 28 and N) as a
    worker finds it, and the median milliseconds a search took (on one thread, as in a worker: on small images a
    second thread only spin-waits)."""
    hands, seconds, threads = [], [], torch.get_num_threads()
    session = served_search(model)
    torch.set_num_threads(1)
    try:
        for images, shown in zip(uploads, digits.view(len(digits), -1).tolist()):
            started = time.perf_counter()
            hands.append(find_hand(model, images, shown, session=session))
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


def strangers_error(model: Generator, drawn: torch.Tensor, rng: torch.Generator) -> float:
    """The mean squared error between `drawn` (N hands x 10 digits) and as many random hands writing the same digits:
    how far apart two hands are, the round trip's unit."""
    return ((write_all_digits(model, sample_noise(model, len(drawn), rng)) - drawn) ** 2).mean().item()


def trip(model: Generator, found: torch.Tensor, drawn: torch.Tensor, digits: torch.Tensor, unit: float) -> float:
    """How far the found hands write the digits their uploads did not show from how the drawing hands write them
    (mean squared error), in `unit`s."""
    return ((others_of(write_all_digits(model, found), digits) - others_of(drawn, digits)) ** 2).mean().item() / unit


def round_trip(model: Generator, count: int, shown: int = 1, seed: int = 2) -> dict:
    """Digits the model drew, `shown` different ones of each hand, sent back as the API's arrays (rounded as it
    answers): the round trip of the found hands; for scale, that of the mean hand (a search that learnt nothing); the
    style the found hands carry to the other digits (as `number_photos` measures it); and the median milliseconds of
    a search."""
    rng = torch.Generator().manual_seed(seed)
    hands = sample_noise(model, count, rng)
    digits = different_digits(count, shown, rng, model.num_classes)
    drawn = write_all_digits(model, hands)
    sent = drawn[torch.arange(count)[:, None], digits][:, :, 0].round(decimals=DECIMALS)
    unit = strangers_error(model, drawn, rng)
    mean_hand = torch.zeros_like(hands) if model.noise == "normal" else torch.full_like(hands, 0.5)
    found, milliseconds = found_hands(model, sent, digits)
    return {"trip": trip(model, found, drawn, digits, unit), "mean hand": trip(model, mean_hand, drawn, digits, unit),
            "style": carried(model, found, drawn, digits), "ms": milliseconds}


def carried(model: Generator, found: torch.Tensor, drawn: torch.Tensor, digits: torch.Tensor) -> dict[str, float]:
    """For each style measure, hand_correlation of the digits the uploads did not show: the found hands' against the
    drawing hands' (`drawn`, N x 10 x 1 x 28 x 28)."""
    labels = others_of(torch.arange(model.num_classes).repeat(len(digits), 1), digits)
    mine = style_measures(others_of(write_all_digits(model, found), digits).flatten(0, 1))
    theirs = style_measures(others_of(drawn, digits).flatten(0, 1))
    return {name: hand_correlation(mine[name], theirs[name], labels) for name in STYLES}


def number_photos(model: Generator, classifier: MnistClassifier, real_accuracy: float, count: int, shown: int,
                  kind: str, seed: int = 4) -> dict:
    """The same, sent as one photo of the number: `shown` digits of each hand side by side, 0 to 6 px apart, dark on
    light paper (PHOTO_SCALE times MNIST's size, noise, light across the page), as a `kind` (PNG, or JPEG at quality
    85), cut by the API. For the hands whose photo was cut into `shown` digits: style carried (ink, slant, width of
    each digit the upload did not show, the found hand's against the drawing hand's, correlated over hands within
    digits), the round trip, those digits read right as a ratio to real digits, and how many photos were refused."""
    rng, layout = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    hands = sample_noise(model, count, rng)
    digits = different_digits(count, shown, rng, model.num_classes)
    drawn = write_all_digits(model, hands)
    unit = strangers_error(model, drawn, rng)
    prepared, cut = [], []
    for index in range(count):
        ink = written_number([drawn[index, d, 0].numpy() for d in digits[index]],
                             layout.integers(0, 7, shown - 1).tolist(), [0] * shown)
        try:
            prepared.append(prepare_number(saved(on_paper(ink, PHOTO_SCALE, index), kind), shown))
            cut.append(index)
        except UnusableImage:
            continue
    digits, drawn = digits[cut], drawn[cut]
    found, milliseconds = found_hands(model, torch.from_numpy(np.stack(prepared)), digits)
    written = others_of(write_all_digits(model, found), digits)
    labels = others_of(torch.arange(model.num_classes).repeat(len(cut), 1), digits).flatten()
    read = predict(classifier, written.flatten(0, 1)) == labels
    return {"style": carried(model, found, drawn, digits),
            "trip": trip(model, found, drawn, digits, unit), "legible": read.float().mean().item() / real_accuracy,
            "refused": count - len(cut), "count": count, "ms": milliseconds}


def ceiling(model: Generator, count: int = 2_000, seed: int = 3) -> dict[str, tuple[float, float]]:
    """style_carried for the model's own hands with their own drawing as the upload: what a search that found
    every drawing's true hand would score."""
    rng = torch.Generator().manual_seed(seed)
    hands = sample_noise(model, count, rng)
    digits = torch.randint(0, model.num_classes, (count,), generator=rng)
    written = write_all_digits(model, hands)
    return style_carried(written[torch.arange(count), digits], written, digits)


def section(model: Generator, classifier: MnistClassifier, test_images: torch.Tensor, test_labels: torch.Tensor,
            uploads: int = UPLOADS, seed: int = 0, ceiling_hands: int = 2_000, number_hands: int = NUMBER_HANDS,
            cut_numbers: int = cutting.NUMBERS) -> str:
    """The results page's "## Your hand" section for `model`, with its targets."""
    if not model.num_classes:
        return ("## Your hand\n\nNot measured: the served model is unconditional, so a hand found from one digit "
                "cannot be asked for another (the API refuses `hand` for it).\n")
    real_accuracy = (predict(classifier, test_images) == test_labels).float().mean().item()
    pick = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))[:uploads]
    images, digits = test_images[pick], test_labels[pick]
    photos = torch.stack([torch.from_numpy(prepare_digit(as_photo(image, i))) for i, image in enumerate(images)])
    routes = {"28 x 28 arrays": measure(model, classifier, images, digits, real_accuracy),
              "PNG photos (280 x 280, dark on a light gradient)": measure(model, classifier, photos.unsqueeze(1),
                                                                          digits, real_accuracy)}
    best = ceiling(model, ceiling_hands)
    trips = {shown: round_trip(model, number_hands, shown) for shown in SHOWN}
    numbers = {(shown, kind): number_photos(model, classifier, real_accuracy, number_hands, shown, kind)
               for shown in PHOTO_SHOWN for kind in PHOTO_KINDS}
    cuts = cutting.measure(classifier, test_images, test_labels, cut_numbers)
    rows = []
    for route, m in routes.items():
        rows.append(f"| {route} | {m['copy']:.3f}× | " + " | ".join(
            f"{m['style'][s][0]:.2f} ({m['style'][s][1]:.2f})" for s in STYLES) + f" | {m['legible']:.3f}× | {m['ms']:.0f} |")
    rows.append("| the model's own hands, their own digit as the upload (a perfect search) | – | " + " | ".join(
        f"{best[s][0]:.2f} ({best[s][1]:.2f})" for s in STYLES) + " | – | – |")
    arrays, pngs = routes.values()
    gaps = [abs(arrays["copy"] - pngs["copy"]), abs(arrays["legible"] - pngs["legible"])]
    gaps += [abs(arrays["style"][s][0] - pngs["style"][s][0]) for s in STYLES]
    trip_rows = [(shown, f"{m['trip']:.3f}×", f"{m['mean hand']:.3f}×", *(f"{m['style'][s]:.2f}" for s in STYLES),
                  f"{m['ms']:.0f}") for shown, m in trips.items()]
    photo_rows = [(shown, kind, f"{m['count'] - m['refused']} of {m['count']}",
                   *(f"{m['style'][s]:.2f}" for s in STYLES), f"{m['trip']:.3f}×", f"{m['legible']:.3f}×", f"{m['ms']:.0f}")
                  for (shown, kind), m in numbers.items()]
    by_gap = cuts["by gap"]
    cut_rows = [(gap, total, f"{cut:.2%}", f"{alone:.2%}", f"{cut / alone:.3f}×", refused)
                for gap, (cut, alone, total, refused) in by_gap.items()]
    apart = [gap for gap in by_gap if gap >= 2]
    weight = sum(by_gap[gap][2] for gap in apart)
    apart_cut = sum(by_gap[gap][0] * by_gap[gap][2] for gap in apart) / weight
    apart_alone = sum(by_gap[gap][1] * by_gap[gap][2] for gap in apart) / weight
    three = {kind: numbers[(3, kind)] for kind in PHOTO_KINDS}
    checks = [(f"copy error {arrays['copy']:.3f}× the best of {RANDOM_HANDS:,} random hands (target ≤ {TARGETS['copy']}×)",
               arrays["copy"] <= TARGETS["copy"]),
              *((f"{s} carried {arrays['style'][s][0]:.2f} (target ≥ {TARGETS[s]})", arrays["style"][s][0] >= TARGETS[s])
                for s in ("ink", "slant")),
              (f"the nine other digits read right {arrays['legible']:.3f}× as often as real test digits (target ≥ "
               f"{TARGETS['legible']}×)", arrays["legible"] >= TARGETS["legible"]),
              (f"PNG photos against arrays: every figure within {max(gaps):.3f} (target ≤ {TARGETS['png']})",
               max(gaps) <= TARGETS["png"]),
              *((f"round trip from {shown} digits {trips[shown]['trip']:.3f}× (target ≤ {line}×)",
                 trips[shown]["trip"] <= line) for shown, line in TARGETS["round trip"].items()),
              *((f"from a 3-digit {kind} photo, {s} carried {three[kind]['style'][s]:.2f} (target ≥ {line})",
                 three[kind]["style"][s] >= line) for kind in PHOTO_KINDS for s, line in TARGETS["photo"].items()),
              *((f"from a 3-digit {kind} photo, the other digits read right {three[kind]['legible']:.3f}× as often as "
                 f"real test digits (target ≥ {TARGETS['legible']}×)", three[kind]["legible"] >= TARGETS["legible"])
                for kind in PHOTO_KINDS),
              (f"real digits 2 px or more apart, cut from their number, read right {apart_cut / apart_alone:.3f}× as "
               f"often as photographed alone ({apart_cut:.2%} against {apart_alone:.2%}; target ≥ {TARGETS['cut']}×)",
               apart_cut / apart_alone >= TARGETS["cut"])]
    lines = ["## Your hand", "",
             f"{uploads:,} real test digits as uploads to the `hand` field, each as the API's 28 x 28 array and as a "
             f"{PHOTO_SIDE} x {PHOTO_SIDE} PNG of dark ink on light paper whose brightness runs across the page (the API "
             "prepares a PNG as MNIST's digits were: cropped to the ink, 20 px on its longest side, centered by its "
             "center of mass). For each, the hand `find_hand` finds (handler/search.py) writes every digit. Copy "
             f"error: the mean squared error of the hand's drawing of the uploaded digit, as a ratio to the best of "
             f"{RANDOM_HANDS:,} random hands for the same upload (mean of the ratios). Style carried: the correlation "
             "over uploads of the upload's ink, slant or width with the mean of the nine other digits the hand writes, "
             "within digits (each digit's mean taken from both sides: which digit was uploaded sets much of its ink and "
             "width, and decides which nine are the others); pooled over digits in brackets. Legible: the nine other "
             "digits read right by the evaluation classifier, as a ratio to its accuracy on real test digits. One search "
             "on one thread, in-process.", "",
             "| uploads | copy error ÷ best random | ink carried | slant carried | width carried | legible | ms per search |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
             "### A number you wrote", "",
             f"Round trip: {number_hands} hands of the model each write k different digits, sent back as the API's "
             "arrays (its JSON answer) in one upload; the found hand writes the digits the upload did not show, and "
             "differs from the drawing hand by this much of what two random hands writing the same digits differ by "
             "(mean squared error). The mean hand (noise 0: nothing learnt from the digits) for scale. Style carried: "
             "as for the photos below.", "",
             table(["digits shown", "round trip", "the mean hand", "ink carried", "slant carried", "width carried",
                    "ms per search"], trip_rows), "",
             f"The same, as one photo of the number: the k digits side by side, 0 to 6 px apart at MNIST's scale, dark "
             f"ink on light paper ({PHOTO_SCALE} times MNIST's size, its light running across the page, sensor noise), "
             "as a PNG and as a JPEG at quality 85, cut by the API (handler/upload.py). Cut: the photos the API cut "
             "into k digits (the rest it refused). Style carried: the ink, slant and width of the digits the upload did "
             "not show, as the found hand writes them against as the drawing hand does, correlated over hands (each "
             "hand's mean over those digits, each digit's mean over hands taken out first). Preparing a piece fits it "
             "into MNIST's 20 px box, as real digits are; the model's own digits are 18 to 22 px tall (5th to 95th "
             "percentile), so a photo's figures also measure that refit (the arrays above are not refit).", "",
             table(["digits shown", "photo", "cut", "ink carried", "slant carried", "width carried", "round trip",
                    "legible", "ms per search"], photo_rows, 2), "",
             f"Cutting real handwriting: {cuts['numbers']:,} numbers of 3 to 8 real test digits, each digit cropped to "
             "its ink and the next one 0 to 6 px after it (MNIST's scale; at 0 their boxes touch), the baseline "
             "wandering by up to 2 px, photographed 4 to 10 times MNIST's size on paper lit unevenly with sensor "
             "noise, saved as JPEGs at quality 85, half of them stored turned with an EXIF orientation "
             "(experiments/cutting.py). Each piece is read by the evaluation classifier, beside the same digits "
             f"photographed alone and prepared as one digit. A cut took {cuts['ms']:.0f} ms (median, reading the JPEG "
             "included).", "",
             table(["gap (px)", "digits", "read right, cut from the number", "read right, alone", "ratio",
                    "numbers refused"], cut_rows), ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks]
    return "\n".join(lines) + "\n"
