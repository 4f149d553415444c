"""handler/upload.py: reading a PNG or JPEG (its limits read before decoding, its EXIF orientation, its ink on any
paper), and cutting a written number into its digits, on pictures whose answer is known."""
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cases import jpeg_claiming
from experiments.photos import on_paper, saved, written_number
from handler import upload
from handler.upload import NothingDrawn, UnusableImage, cut_digits, mnist_box, prepare_digit, prepare_number, read_ink

SIDE = 100  # a digit's box on the canvases below


def canvas(strokes: list[list[tuple[float, float]]], width: int, height: int = 140, thickness: int = 9) -> np.ndarray:
    """White-on-black ink of pen strokes (each a list of points, in pixels), as a pad draws them."""
    image = Image.new("L", (width, height))
    pen = ImageDraw.Draw(image)
    for points in strokes:
        pen.line(points, fill=255, width=thickness, joint="curve")
        for x, y in (points[0], points[-1]):  # round ends
            pen.ellipse((x - thickness / 2, y - thickness / 2, x + thickness / 2, y + thickness / 2), fill=255)
    return np.asarray(image, dtype=np.float32) / 255


def one(left: float) -> list:
    return [[(left + 40, 20), (left + 40, 120)]]


def five(left: float) -> list:
    """A 5 written as most people do: the body in one stroke, then the flag on top, lifted off the page."""
    body = [(left + 25, 22), (left + 20, 65), (left + 50, 58), (left + 70, 80), (left + 62, 112), (left + 25, 115)]
    return [body, [(left + 30, 18), (left + 78, 18)]]


def four(left: float) -> list:
    """A 4 in two strokes that do not touch: the open corner, then the downstroke beside it."""
    return [[(left + 45, 20), (left + 15, 85), (left + 85, 85)], [(left + 62, 40), (left + 62, 122)]]


def zero(left: float) -> list:
    """An oval 0, widest half-way down."""
    return [[(left + 50 + 32 * np.sin(t), 71 - 50 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 25)]]


def pieces_are(pieces: list[np.ndarray], strokes: list[list]) -> None:
    """Each piece holds exactly the ink of its digit's strokes (up to the strokes' soft edges)."""
    width, height = pieces[0].shape[1], pieces[0].shape[0]
    for piece, digit in zip(pieces, strokes, strict=True):
        expected = canvas(digit, width, height)
        assert ((piece > 0.5) == (expected > 0.5)).mean() > 0.995


def test_separate_marks_are_the_digits_and_marks_whose_columns_overlap_belong_together():
    digits = [five(0), four(110), one(220), zero(330)]
    pieces = cut_digits(canvas(sum(digits, []), 440), 4)
    pieces_are(pieces, digits)  # the 5's flag and the 4's two strokes each went with their digit


def test_a_broken_stroke_is_one_digit():
    broken = [[(60, 20), (60, 62)], [(60, 76), (60, 120)]]  # a 1 whose stroke skipped
    pieces = cut_digits(canvas(broken + one(100)[0:1], 220), 2)
    pieces_are(pieces, [broken, one(100)])


def test_specks_are_not_digits():
    ink = canvas(one(0) + zero(100), 240)
    ink[5:8, 150:153] = 1.0  # dust on the page
    ink[130:132, 10:12] = 1.0
    pieces = cut_digits(ink, 2)
    pieces_are(pieces, [one(0), zero(100)])
    assert pieces[0][:12].max() == 0 and pieces[1][:12].max() == 0


def mostly(pieces: list[np.ndarray], strokes: list[list]) -> None:
    """Each piece holds most of its digit's ink and little of any other's: where two strokes run together, which
    digit each pixel is from is a guess (a cut through a 0's loop would leave a piece with half of it)."""
    for piece, digit in zip(pieces, strokes, strict=True):
        own = canvas(digit, piece.shape[1], piece.shape[0]) > 0.5
        inked = piece > 0.5
        assert (inked & own).sum() >= 0.8 * own.sum() and (inked & ~own).sum() <= 0.12 * own.sum()


@pytest.mark.parametrize("lefts", [(0, 68), (0, 68, 136), (0, 100, 168)])
def test_touching_digits_are_cut_where_the_ink_is_thinnest(lefts):
    touching = [zero(left) for left in lefts]  # each 0's left side runs into the right side of the one before
    pieces = cut_digits(canvas(sum(touching, []), lefts[-1] + 100), len(lefts))
    mostly(pieces, touching)


def test_more_marks_than_digits_and_too_few_to_cut_are_refused_saying_what_was_found():
    ink = canvas(one(0) + one(100) + one(200), 320)
    with pytest.raises(UnusableImage, match="shows 3 separate marks, but 'digits' has 2"):
        cut_digits(ink, 2)
    with pytest.raises(UnusableImage, match="shows 3 separate marks, but 'digits' has 4: write the digits apart"):
        cut_digits(ink, 4)
    with pytest.raises(NothingDrawn, match="no pixel with 0.1 ink or more"):
        cut_digits(np.zeros((50, 50), np.float32), 1)


def test_a_number_is_prepared_digit_by_digit_as_each_digit_alone():
    digits = [canvas(zero(0), 110), canvas(four(0), 110), canvas(five(0), 110)]
    photo = saved(on_paper(written_number(digits, [12, 30], [0, 6, -4]), 2, seed=1), "JPEG")
    number = prepare_number(photo, 3)
    assert number.shape == (3, 28, 28) and number.dtype == np.float32
    for piece, digit in zip(number, digits):
        assert alike(piece, mnist_box(digit))


def alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Two prepared digits are the same drawing, perhaps a pixel apart (centering rounds to whole pixels)."""
    return min(np.abs(np.roll(a, (dy, dx), (0, 1)) - b).mean() for dy in (-1, 0, 1) for dx in (-1, 0, 1)) < 0.03


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("paper", [0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 0.95])
def test_dark_ink_is_found_on_paper_of_any_brightness_and_light_ink_on_any_dark_ground(paper):
    digit = canvas(zero(0), 110)
    reference = mnist_box(digit)
    dark_ink = np.rint(255 * paper * (1 - 0.9 * digit)).astype(np.uint8)
    assert np.abs(prepare_digit(png(dark_ink)) - reference).max() < 0.1, "dark ink"
    ground = paper * 0.5  # a blackboard, and chalk brighter than it
    chalk = np.rint(255 * (ground + (0.95 - ground) * digit)).astype(np.uint8)
    assert np.abs(prepare_digit(png(chalk)) - reference).max() < 0.1, "light ink"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_photo_stored_turned_is_read_upright_as_its_exif_tag_says(orientation):
    digits = [canvas(one(0), 110), canvas(four(0), 110)]
    upright = on_paper(written_number(digits, [20], [0, 0]), 2, seed=2)
    assert np.array_equal(prepare_number(saved(upright, "PNG", orientation=orientation), 2),
                          prepare_number(saved(upright, "PNG"), 2))


def test_a_large_jpeg_is_decoded_at_a_fraction_of_its_size(monkeypatch):
    big = saved(on_paper(canvas(zero(0), 110), 25, seed=0), "JPEG")  # 2750 x 3500
    from PIL.JpegImagePlugin import JpegImageFile

    scales = []
    real_draft = JpegImageFile.draft

    def draft(self, mode, size):
        result = real_draft(self, mode, size)
        scales.append(result)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", draft)
    ink = read_ink(big)
    assert scales and scales[0] is not None  # Pillow chose a DCT scale
    assert max(ink.shape) <= upload.WORK_SIDE


@pytest.mark.parametrize("data,message", [
    (upload.PNG_SIGNATURE + bytes.fromhex("0000000d") + b"IHDR", "is not a PNG that can be read"),  # cut in its header
    (upload.PNG_SIGNATURE, "is not a PNG that can be read"),
    (b"\xff\xd8\xff\xe0" + bytes(10), "is not a JPEG that can be read"),
    (b"GIF89a" + bytes(20), "not of a PNG or a JPEG file"),
])
def test_a_file_cut_short_or_of_another_kind_is_refused_with_a_message(data, message):
    with pytest.raises(UnusableImage, match=message):
        read_ink(data)


def test_size_and_area_are_read_from_the_header_before_anything_is_decoded(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded a picture that was too large")

    wide, bomb = png(np.zeros((10, upload.MAX_SIDE + 1), np.uint8)), jpeg_claiming(4096, 4096)
    assert upload.header_size(jpeg_claiming(300, 200)) == (300, 200)
    monkeypatch.setattr(Image.Image, "load", never)
    with pytest.raises(UnusableImage, match=f"is {upload.MAX_SIDE + 1}x10 pixels: at most {upload.MAX_SIDE} a side"):
        read_ink(wide)
    with pytest.raises(UnusableImage, match="is 4096x4096 pixels .16.8 megapixels.: at most 12.6 megapixels"):
        read_ink(bomb)
