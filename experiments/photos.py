"""Numbers written with 28 x 28 digits, as a person would upload them: side by side on one line, photographed on
paper and saved as a phone saves it. The evaluation's and the benchmark's uploads, and the tests' (no torch here).
"""
import io
import math

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# An EXIF orientation, and how a phone stores the upright picture under it (Pillow's exif_transpose undoes it).
STORED_AS = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def ink_box(digit: np.ndarray, level: float = 0.1) -> np.ndarray:
    """A digit (white on black) cropped to its ink."""
    rows, columns = np.nonzero(digit >= level * digit.max())
    return digit[rows.min():rows.max() + 1, columns.min():columns.max() + 1]


def written_number(digits: list[np.ndarray], gaps: list[int], drops: list[int], margin: int = 6) -> np.ndarray:
    """The ink of a number on one line (white on black, in [0, 1]): each digit cropped to its ink, digit i + 1
    `gaps[i]` pixels after digit i (0: their boxes touch), digit i's box moved `drops[i]` pixels down from the line
    (a baseline that wanders), with `margin` pixels of paper all round."""
    boxes = [ink_box(digit) for digit in digits]
    lefts = np.cumsum([0] + [box.shape[1] + gap for box, gap in zip(boxes, gaps)])
    tops = np.asarray(drops) - min(drops)
    height = max(top + box.shape[0] for top, box in zip(tops, boxes))
    ink = np.zeros((height + 2 * margin, lefts[-1] + boxes[-1].shape[1] + 2 * margin), np.float32)
    for box, left, top in zip(boxes, lefts, tops):
        region = ink[margin + top:margin + top + box.shape[0], margin + left:margin + left + box.shape[1]]
        np.maximum(region, box, out=region)  # where two digits touch, the darker stroke shows
    return ink


def on_paper(ink: np.ndarray, scale: int, seed: int, light: tuple[float, float] = (0.75, 0.95),
             noise: float = 0.02) -> Image.Image:
    """`ink` enlarged `scale` times as dark ink on paper: its light runs from light[0] to light[1] across the page in
    a seeded direction, with sensor noise; 8-bit gray."""
    rng = np.random.default_rng(seed)
    big = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize(
        (ink.shape[1] * scale, ink.shape[0] * scale), Image.Resampling.BICUBIC)).clip(0, 1)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big.shape[0], 0:big.shape[1]]
    along = np.cos(angle) * xx / big.shape[1] + np.sin(angle) * yy / big.shape[0]
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)  # 0 to 1 across the page
    paper = light[0] + (light[1] - light[0]) * along
    pixels = paper * (1 - 0.92 * big) + rng.normal(0, noise, big.shape)
    return Image.fromarray(np.clip(np.rint(255 * pixels), 0, 255).astype(np.uint8))


def saved(image: Image.Image, kind: str = "PNG", quality: int = 85, orientation: int = 1) -> bytes:
    """The picture as a file of `kind` (PNG or JPEG at `quality`), stored turned with its EXIF orientation saying how
    to turn it back, as a phone held sideways stores a photo."""
    transpose = STORED_AS[orientation]
    stored = image.transpose(transpose) if transpose is not None else image
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    options = {"quality": quality} if kind == "JPEG" else {}
    stored.save(buffer, format=kind, exif=exif, **options)
    return buffer.getvalue()
