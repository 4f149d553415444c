"""An uploaded picture of handwriting, made into what the model knows: MNIST's 28 x 28 digits.

request_contract.py validates a request and names the field in every message; this module reads the picture (a PNG
or a JPEG within its limits, turned upright as a phone's EXIF tag says), finds its ink whatever the paper and the
light, cuts a number written on one line into its digits, and prepares each digit as MNIST prepared its own: cropped
to the ink, 20 px on its longest side, centered by its center of mass in 28 x 28, the strongest ink 1.
No torch here: numpy, SciPy and Pillow.
"""
import io
import math
import struct
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

DIGIT_SIDE = 28  # the model's image: 28 x 28 values in [0, 1], white ink on black
MNIST_BOX = 20  # MNIST fitted each digit's longest side into 20 px, then centered its center of mass in 28 x 28
MAX_SIDE = 4096  # larger pictures are refused before they are decoded (a small file can decode to gigabytes)
MAX_AREA = 4096 * 3072  # pixels: a 12-megapixel phone photo fits; decoded, at most 4 bytes a pixel (about 50 MB)
WORK_SIDE = 1024  # a picture is boxed down to at most this before its ink is read: a line of 12 digits keeps ~80 px each
INK_LEVEL = 0.1  # a picture with no pixel of at least this much ink has nothing drawn in it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Cutting a number into digits. Lengths are shares of the line's height: the height of the number's digits.
STROKE = 0.35  # ink at least this share of the strongest is a stroke: what marks are told apart by
SPECK = 0.15  # a mark that is smaller than this on both sides is a speck, not (part of) a digit
OVERLAP = 0.5  # marks whose columns overlap by this share of the narrower one belong together (a 4 in two strokes)
PART = 0.6  # a mark shorter than this is part of a digit (a 5's flag, a broken stroke) when there are too many marks ...
NEAR = 0.3  # ... and it is at most this far from its neighbour
REACH = 0.06  # fainter ink (a stroke's anti-aliased edge) goes with the stroke it lies this close to
SPLITTABLE = 0.3  # a mark narrower than this for each digit it should hold cannot be that many touching digits
CUT_REACH = 0.4  # a cut between touching digits ends at most this share of a digit's width from where it would if even
# A cut's pull to where it would be were the digits even, in ink per row at a quarter of a digit's width off: crossing
# a loop's top and bottom can cost less ink than crossing where two round digits touch.
CENTER_PULL = 0.5


class UnusableImage(ValueError):
    """A picture this module cannot read or cut. The message follows the field's name: "... is not a PNG ..."."""


class NothingDrawn(UnusableImage):
    """A picture with no ink in it."""


# --- reading a picture ----------------------------------------------------------------------------

def header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, read before anything is decoded; None when the
    header is not there to read (Pillow then reports what is wrong with the file)."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    position = 2
    while position + 9 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill bytes before a marker
            position += 1
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame: SOF0 ... SOF15
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + length
    return None


def check_size(width: int, height: int) -> None:
    if max(width, height) > MAX_SIDE:
        raise UnusableImage(f"is {width}x{height} pixels: at most {MAX_SIDE} a side")
    if width * height > MAX_AREA:
        raise UnusableImage(f"is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels): at most "
                            f"{MAX_AREA / 1e6:.1f} megapixels")


def read_ink(data: bytes) -> np.ndarray:
    """How much ink each pixel of a PNG or JPEG holds, in [0, 1], upright, at most WORK_SIDE a side.
    UnusableImage if it is neither, too large, or unreadable; its size is checked before it is decoded."""
    kind = "PNG" if data.startswith(PNG_SIGNATURE) else "JPEG" if data.startswith(JPEG_SIGNATURE) else None
    if kind is None:
        raise UnusableImage("is base64, but not of a PNG or a JPEG file (it must start with the signature of one)")
    size = header_size(data)
    if size is not None:
        check_size(*size)
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            check_size(*image.size)  # a header that header_size could not find (Pillow reads more layouts)
            factor = math.ceil(max(image.size) / WORK_SIDE)
            if kind == "JPEG" and factor > 1:  # decoded at 1/2, 1/4 or 1/8 scale in the DCT: less time and memory
                image.draft(image.mode, (math.ceil(image.width / factor), math.ceil(image.height / factor)))
            image.load()
            upright = ImageOps.exif_transpose(image)  # a phone stores its photo sideways, with a tag saying so
            return _ink(upright)
    except UnusableImage:
        raise
    except Exception as error:  # Pillow reports a broken file with many exception types
        raise UnusableImage(f"is not a {kind} that can be read ({type(error).__name__}: {error})") from None


def _ink(image: Image.Image) -> np.ndarray:
    """How much ink each pixel holds, in [0, 1], at most WORK_SIDE a side: on a transparent canvas the alpha; on
    paper, how far each pixel is from the paper's own brightness there, on the side the ink lies."""
    factor = math.ceil(max(image.size) / WORK_SIDE)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode.startswith("I"):  # 16-bit grayscale
        layers = {"gray": Image.fromarray(np.asarray(image, dtype=np.float32) / 65535, mode="F")}
    elif has_alpha:
        rgba = image.convert("RGBA")
        layers = {"gray": rgba.convert("L"), "alpha": rgba.getchannel("A")}
    else:
        layers = {"gray": image.convert("L")}
    if factor > 1:
        layers = {name: layer.reduce(factor) for name, layer in layers.items()}
    arrays = {name: np.asarray(layer, dtype=np.float32) / (1 if layer.mode == "F" else 255)
              for name, layer in layers.items()}
    ring = _ring(arrays["gray"].shape)
    if "alpha" in arrays and np.median(arrays["alpha"][ring]) < 0.5:
        return arrays["alpha"]  # a transparent canvas: the alpha is the ink
    gray = arrays["gray"]
    if "alpha" in arrays:  # an opaque picture with see-through parts: those are paper
        gray = arrays["alpha"] * gray + (1 - arrays["alpha"])
    ground, noise = _paper(gray, ring)
    away = gray - ground
    # The ink is on the side of the paper's brightness where the picture strays furthest beyond its noise: dark ink
    # on paper in dim light is still darker than the paper, however dark the paper.
    floor = max(3 * noise, 0.02)
    dark = np.clip(-away - floor, 0, None).sum() >= np.clip(away - floor, 0, None).sum()
    if dark:  # ink takes away the paper's light
        return np.clip((-away - noise) / np.maximum(ground, 1e-3), 0, 1)
    return np.clip((away - noise) / np.maximum(1 - ground, 1e-3), 0, 1)  # light ink on a dark ground


def _ring(shape: tuple[int, int]) -> np.ndarray:
    """The picture's outer band (a twentieth of its side, at least a pixel), where the paper shows."""
    band = max(1, min(shape) // 20)
    ring = np.ones(shape, dtype=bool)
    ring[band:-band, band:-band] = False
    return ring


def _paper(gray: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's brightness under every pixel, a plane fitted to the outer band (uneven light across a photo) and
    refitted without the band's pixels that stand out from it (a digit touching the edge), and the paper's noise
    (the spread of the band around the plane, from its median absolute deviation)."""
    height, width = gray.shape
    ys, xs = np.nonzero(ring)
    design = np.stack([np.ones(len(xs)), xs / width, ys / height], axis=1)
    values = gray[ring].astype(np.float64)
    keep = np.ones(len(values), dtype=bool)
    for _ in range(3):
        plane, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ plane
        noise = 1.4826 * float(np.median(np.abs(residual[keep])))
        stands_out = np.abs(residual) > max(4 * noise, 0.05)
        if stands_out.all():
            break
        keep = ~stands_out
    yy, xx = np.mgrid[0:height, 0:width]
    return (plane[0] + plane[1] * xx / width + plane[2] * yy / height).astype(np.float32), noise


# --- MNIST's preparation --------------------------------------------------------------------------

def mnist_box(ink: np.ndarray) -> np.ndarray:
    """Ink (any size, values in [0, 1]) as MNIST prepared its digits: cropped to the ink, the longest side scaled
    to MNIST_BOX px (anti-aliased), the center of mass moved to the middle of 28 x 28, the strongest ink 1."""
    peak = float(ink.max())
    if peak < INK_LEVEL:
        return np.zeros((DIGIT_SIDE, DIGIT_SIDE), np.float32)  # nothing drawn: the caller says so
    rows, columns = np.nonzero(ink >= 2 * INK_LEVEL * peak)
    crop = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = MNIST_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    # shrinking averages each new pixel's area (anti-aliased, as MNIST's digits are); enlarging interpolates
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    boxed = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, resample))
    mass = boxed.sum()
    ys, xs = np.mgrid[0:boxed.shape[0], 0:boxed.shape[1]]
    top = int(round(DIGIT_SIDE / 2 - (ys * boxed).sum() / mass))
    left = int(round(DIGIT_SIDE / 2 - (xs * boxed).sum() / mass))
    out = np.zeros((DIGIT_SIDE, DIGIT_SIDE), np.float32)
    # the box's rows and columns that land inside 28 x 28 (a lopsided digit's far side may not)
    y0, x0 = max(0, -top), max(0, -left)
    y1, x1 = min(boxed.shape[0], DIGIT_SIDE - top), min(boxed.shape[1], DIGIT_SIDE - left)
    out[top + y0:top + y1, left + x0:left + x1] = boxed[y0:y1, x0:x1]
    return np.clip(out / out.max(), 0, 1)


def prepare_digit(data: bytes) -> np.ndarray:
    """A PNG or JPEG of one digit as MNIST's digits were made: all its ink in one 28 x 28 digit."""
    return mnist_box(read_ink(data))


def prepare_number(data: bytes, count: int) -> np.ndarray:
    """A PNG or JPEG of a number of `count` digits written on one line: count x 28 x 28, its digits from left to
    right, each prepared as MNIST's. UnusableImage if it cannot be read or cut into `count` digits."""
    return np.stack([mnist_box(piece) for piece in cut_digits(read_ink(data), count)])


# --- cutting a number into its digits -------------------------------------------------------------

def cut_digits(ink: np.ndarray, count: int) -> list[np.ndarray]:
    """The ink of a number written on one line, as `count` pictures of the same size, each holding one digit's ink,
    from left to right.

    The strokes fall into marks (connected ink). Specks, far smaller than the line's digits, are dropped. Marks whose
    columns overlap belong to one digit (a 4 written in two strokes), and so do a short mark and its nearest
    neighbour while there are more marks than digits (a 5's flag lifted off the page, a broken stroke). When there are
    fewer marks than digits, some digits touch: each further digit goes to the mark whose digits would be widest,
    and such a mark is cut where its ink is thinnest, along a straight line near where its digits would part were
    they even. More marks than digits, or a mark too narrow to hold its digits, cannot be cut so: UnusableImage says
    what was found.
    """
    # Here, not at import: SciPy's OpenBLAS starts a thread per core when it loads, unless the worker has said how many
    # (initialize() does, after TorchServe has imported this module).
    from scipy import ndimage

    peak = float(ink.max())
    if peak < INK_LEVEL:
        raise NothingDrawn(f"has no pixel with {INK_LEVEL} ink or more")
    labels, found = ndimage.label(ink >= STROKE * peak, structure=np.ones((3, 3), bool))
    boxes = ndimage.find_objects(labels)
    heights = np.array([rows.stop - rows.start for rows, _ in boxes])
    widths = np.array([columns.stop - columns.start for _, columns in boxes])
    masses = np.asarray(ndimage.sum_labels(ink, labels, np.arange(1, found + 1)))
    line = _weighted_median(heights, masses)  # the height of the line's digits, whatever the specks
    marks = [index for index in range(found) if max(heights[index], widths[index]) >= SPECK * line]
    # Every pixel with some ink goes with the stroke nearest to it, within reach (the strokes' soft edges).
    distance, (near_y, near_x) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = np.where(distance <= max(1.5, REACH * line), labels[near_y, near_x], 0)
    groups = _grouped(marks, boxes, owner, count, line)
    if len(groups) > count:
        raise UnusableImage(f"shows {_marks(len(groups))}, but 'digits' has {count}: say every digit it shows, or "
                            f"leave out what is not a digit")
    digits = []
    widths = [right - left for left, right in map(_extent, groups)]
    for group, holds in zip(groups, _shares(widths, count)):
        while holds > 1:  # touching digits: cut off the first, then what is left holds one fewer
            left, right = _extent(group)
            if right - left < SPLITTABLE * line * holds:
                raise UnusableImage(f"shows {_marks(len(groups))}, but 'digits' has {count}: write the digits apart")
            first, group = _split(group, ink, left, right, holds)
            digits.append(first)
            holds -= 1
        digits.append(group)
    return [np.where(digit, ink, 0) for digit in digits]


def _marks(count: int) -> str:
    return "1 mark" if count == 1 else f"{count} separate marks"


def _shares(widths: list[int], count: int) -> list[int]:
    """How many digits each mark holds, `count` in all: one each, and each further digit to the mark whose digits
    are widest, so that the digits come out as even in width as the marks allow."""
    shares = [1] * len(widths)
    for _ in range(count - len(widths)):
        widest = max(range(len(widths)), key=lambda i: widths[i] / shares[i])
        shares[widest] += 1
    return shares


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _grouped(marks: list[int], boxes: list, owner: np.ndarray, count: int, line: float) -> list[np.ndarray]:
    """The marks as digits, left to right, each a mask of the pixels it owns. Marks whose columns overlap by OVERLAP of
    the narrower one are one digit. While there are more than `count`, the two neighbours nearest to each other, one of
    them short (a 5's flag, a broken stroke: under PART of the line's height), are one digit too, if they are within
    NEAR of the line's height."""
    spans: list[list] = []  # [left, right, top, bottom, labels]
    for index in sorted(marks, key=lambda i: boxes[i][1].start):
        rows, columns = boxes[index]
        span = [columns.start, columns.stop, rows.start, rows.stop, [index + 1]]
        if spans and _overlap(spans[-1], span) >= OVERLAP * min(span[1] - span[0], spans[-1][1] - spans[-1][0]):
            spans[-1] = _joined(spans[-1], span)
        else:
            spans.append(span)
    while len(spans) > count:
        pairs = [(-_overlap(a, b), i) for i, (a, b) in enumerate(zip(spans, spans[1:]))
                 if min(a[3] - a[2], b[3] - b[2]) < PART * line or _overlap(a, b) > 0]
        if not pairs or min(pairs)[0] > NEAR * line:
            break
        i = min(pairs)[1]
        spans[i:i + 2] = [_joined(spans[i], spans[i + 1])]
    return [np.isin(owner, span[4]) for span in spans]


def _overlap(a: list, b: list) -> int:
    """How many columns two spans share (negative: the gap between them)."""
    return min(a[1], b[1]) - max(a[0], b[0])


def _joined(a: list, b: list) -> list:
    return [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), a[4] + b[4]]


def _extent(group: np.ndarray) -> tuple[int, int]:
    """The first column a group owns, and one past its last."""
    columns = np.nonzero(group.any(0))[0]
    return int(columns[0]), int(columns[-1]) + 1


def _split(group: np.ndarray, ink: np.ndarray, left: int, right: int, holds: int) -> list[np.ndarray]:
    """A mark of `holds` touching digits, its first digit cut off along a straight line from its top to its bottom
    (upright or slanted, as handwriting leans): the line that crosses the least of its ink, pulled towards where the
    first digit should end were the digits even. A straight line cannot wind round a loop's inside, as a path of
    least ink would. Returns the first digit and the rest."""
    rows = np.nonzero(group.any(1))[0]
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    each = (right - left) / holds  # the width of one digit, were they even
    expected = left + each
    ends = np.arange(max(left + 1, round(expected - CUT_REACH * each)), min(right, round(expected + CUT_REACH * each)) + 1)
    cost = np.where(group, ink, 0)[top:bottom].astype(np.float64)
    along = np.linspace(0, 1, bottom - top)[None, None, :]  # every line: top end x0, bottom end x1
    x = np.rint(ends[:, None, None] + (ends[None, :, None] - ends[:, None, None]) * along).astype(int)
    crossed = cost[np.arange(bottom - top)[None, None, :], x.clip(0, cost.shape[1] - 1)].sum(-1)
    pulled = crossed + CENTER_PULL * np.abs(x - expected).sum(-1) / (0.25 * each)
    start, end = np.unravel_index(np.argmin(pulled), pulled.shape)
    slope = (ends[end] - ends[start]) / max(1, bottom - top - 1)
    boundary = ends[start] + slope * (np.arange(group.shape[0]) - top)  # the line, drawn on across the whole picture
    first = group & (np.arange(group.shape[1])[None, :] < boundary[:, None])
    return [first, group & ~first]
