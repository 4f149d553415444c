"""How well the API cuts a photo of a written number into its digits (handler/upload.py), on real handwriting.

NUMBERS numbers of 3 to 8 real MNIST test digits, written on one line (each digit cropped to its ink, the next GAP
pixels after it, 0 to 6 at MNIST's scale so that some touch, the baseline wandering by up to 2 pixels), photographed
as dark ink on paper whose light runs across the page, with sensor noise, 4 to 10 times MNIST's size, saved as a
JPEG at quality 85, half of them stored sideways or upside down with an EXIF orientation as phones do. Each number
is cut into its digits by the API's `prepare_number`, and each piece read by the evaluation classifier; beside it,
the same digits photographed one at a time in the same way and prepared by `prepare_digit`: the cut costs whatever
the pieces lose against them. The classifier only reads the results.
"""
import time

import numpy as np
import torch

from experiments.classifier import MnistClassifier, predict
from experiments.photos import on_paper, saved, written_number
from handler.upload import UnusableImage, prepare_digit, prepare_number

NUMBERS = 1_400
GAPS = range(7)  # pixels between two digits' ink, at MNIST's scale (0: they touch)
LENGTHS = (3, 8)  # the shortest and the longest number
ORIENTATIONS = (1, 1, 1, 3, 6, 8)  # half upright; the rest stored turned, with the EXIF tag saying so


def numbers_to_cut(test_images: torch.Tensor, test_labels: torch.Tensor, numbers: int, seed: int = 0) -> list[dict]:
    """The numbers' recipes: which test digits, the gap, the baseline's drops, the scale and how it is stored.
    Every gap in GAPS is drawn equally often."""
    rng = np.random.default_rng(seed)
    recipes = []
    for index in range(numbers):
        length = int(rng.integers(LENGTHS[0], LENGTHS[1] + 1))
        recipes.append(dict(picks=rng.choice(len(test_images), length, replace=False), gap=GAPS[index % len(GAPS)],
                            drops=rng.integers(-2, 3, length).tolist(), scale=int(rng.integers(4, 11)),
                            orientation=int(rng.choice(ORIENTATIONS)), seed=index))
    return recipes


def photo(digits: list[np.ndarray], recipe: dict) -> bytes:
    """A JPEG of `digits` written as the recipe says."""
    ink = written_number(digits, [recipe["gap"]] * (len(digits) - 1), recipe["drops"])
    return saved(on_paper(ink, recipe["scale"], recipe["seed"]), "JPEG", 85, recipe["orientation"])


def measure(classifier: MnistClassifier, test_images: torch.Tensor, test_labels: torch.Tensor,
            numbers: int = NUMBERS, seed: int = 0) -> dict:
    """Per gap: the digits read right when cut from their number, and when photographed alone; the numbers the API
    refused to cut; and the median milliseconds a cut took (reading the JPEG included)."""
    images = test_images[:, 0].numpy()
    cut, alone, labels, gaps, refused, seconds = [], [], [], [], {gap: 0 for gap in GAPS}, []
    for recipe in numbers_to_cut(test_images, test_labels, numbers, seed):
        digits = [images[i] for i in recipe["picks"]]
        data = photo(digits, recipe)
        started = time.perf_counter()
        try:
            pieces = prepare_number(data, len(digits))
        except UnusableImage:
            refused[recipe["gap"]] += 1
            pieces = np.zeros((len(digits), 28, 28), np.float32)  # read as whatever a blank reads: wrong
        seconds.append(time.perf_counter() - started)
        cut.append(pieces)
        alone += [prepare_digit(photo([digit], {**recipe, "drops": [0]})) for digit in digits]
        labels.append(test_labels[recipe["picks"]])
        gaps += [recipe["gap"]] * len(digits)
    labels, gaps = torch.cat(labels), torch.tensor(gaps)
    read_cut = predict(classifier, torch.from_numpy(np.concatenate(cut))[:, None]) == labels
    read_alone = predict(classifier, torch.from_numpy(np.stack(alone))[:, None]) == labels
    return {"by gap": {gap: (read_cut[gaps == gap].float().mean().item(), read_alone[gaps == gap].float().mean().item(),
                             int((gaps == gap).sum()), refused[gap]) for gap in GAPS},
            "ms": 1000 * float(np.median(seconds)), "numbers": numbers}
