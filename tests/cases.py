"""Request cases shared by the in-process handler tests and the real-server tests.

Each bad case: (id, raw body bytes, Content-Type header or None, text the 400 message must contain).
"""
import base64
import io
import math
import struct
import zlib

import numpy as np
import orjson
import torch
from PIL import Image

from handler.generator import sample_latent

JSON = "application/json"
PNG = "image/png"

BAD_REQUESTS = [
    ("malformed-json", b'{"count": 2', JSON, "not valid JSON"),
    ("trailing-garbage", b'{"count": 2} x', JSON, "not valid JSON"),
    ("single-quotes", b"{'count': 2}", JSON, "not valid JSON"),
    ("empty-body", b"", JSON, "empty"),
    ("whitespace-body", b"   \n", JSON, "empty"),
    ("not-an-object-list", b"[1, 2]", JSON, "must be a JSON object"),
    ("not-an-object-number", b"3", JSON, "must be a JSON object"),
    ("not-an-object-string", b'"count"', JSON, "must be a JSON object"),
    ("null-body", b"null", JSON, "must be a JSON object"),
    ("count-zero", b'{"count": 0}', JSON, "'count' must be an integer from 1 to 256, got 0"),
    ("count-negative", b'{"count": -5}', JSON, "got -5"),
    ("count-too-large", b'{"count": 257}', JSON, "got 257"),
    ("count-huge-int", b'{"count": 100000000000000000000000000000}', JSON, "'count' must be an integer"),
    ("count-fraction", b'{"count": 2.5}', JSON, "'count' must be an integer from 1 to 256, got 2.5"),
    ("count-fraction-exponent", b'{"count": 25e-1}', JSON, "got 2.5"),
    ("count-integral-float-too-large", b'{"count": 300.0}', JSON, "'count' must be an integer from 1 to 256, got 300"),
    ("count-string", b'{"count": "4"}', JSON, "got str"),
    ("count-bool", b'{"count": true}', JSON, "got bool"),
    ("count-null", b'{"count": null}', JSON, "got null"),
    ("count-list", b'{"count": [4]}', JSON, "got list"),
    ("count-nan", b'{"count": NaN}', JSON, "'count'"),
    ("count-infinity", b'{"count": Infinity}', JSON, "'count'"),
    ("seed-negative", b'{"seed": -1}', JSON, "'seed' must be an integer from 0 to 9223372036854775807, got -1"),
    ("seed-2-pow-63", b'{"seed": 9223372036854775808}', JSON, "'seed'"),
    ("seed-float", b'{"seed": 1.5}', JSON, "'seed'"),
    ("seed-bool", b'{"seed": false}', JSON, "got bool"),
    ("seed-string", b'{"seed": "7"}', JSON, "got str"),
    ("seed-null", b'{"seed": null}', JSON, "'seed' must be an integer from 0 to 9223372036854775807, got null"),
    ("seed-list", b'{"seed": [7]}', JSON, "'seed' must be an integer from 0 to 9223372036854775807, got list"),
    ("seed-true", b'{"seed": true}', JSON, "'seed' must be an integer from 0 to 9223372036854775807, got bool"),
    ("digit-ten", b'{"digit": 10}', JSON, "'digit' must be an integer from 0 to 9, got 10"),
    ("digit-negative", b'{"digit": -1}', JSON, "'digit' must be an integer from 0 to 9, got -1"),
    ("digit-string", b'{"digit": "3"}', JSON, "'digit' must be an integer from 0 to 9, got str"),
    ("digit-null", b'{"digit": null}', JSON, "'digit' must be an integer from 0 to 9, got null"),
    ("digit-bool", b'{"digit": true}', JSON, "'digit' must be an integer from 0 to 9, got bool"),
    ("digit-fraction", b'{"digit": 3.5}', JSON, "'digit' must be an integer from 0 to 9, got 3.5"),
    ("digit-list", b'{"digit": [3]}', JSON, "'digit' must be an integer from 0 to 9, got list"),
    # a number written by one hand: "digits" (a string, so leading zeros stay)
    ("digits-integer", b'{"digits": 2139}', JSON,
     "'digits' must be a string of 1 to 256 decimal digits such as \"02139\", got int"),
    ("digits-null", b'{"digits": null}', JSON, "'digits' must be a string of 1 to 256 decimal digits"),
    ("digits-list", b'{"digits": ["0", "2"]}', JSON, "got list"),
    ("digits-empty", b'{"digits": ""}', JSON, "'digits' must hold 1 to 256 digits, got 0"),
    ("digits-257", b'{"digits": "' + b"7" * 257 + b'"}', JSON, "'digits' must hold 1 to 256 digits, got 257"),
    ("digits-letter", b'{"digits": "12a4"}', JSON, "'digits' may hold only the characters 0-9, got 'a' at position 3"),
    ("digits-space", b'{"digits": "12 4"}', JSON, "got ' ' at position 3"),
    ("digits-minus", b'{"digits": "-12"}', JSON, "got '-' at position 1"),
    ("digits-decimal-point", b'{"digits": "1.5"}', JSON, "got '.' at position 2"),
    ("digits-arabic-indic", '{"digits": "1\u0663"}'.encode(), JSON, "got '\u0663' at position 2"),
    ("digits-superscript", '{"digits": "\u00b2"}'.encode(), JSON, "got '\u00b2' at position 1"),
    ("digit-and-digits", b'{"digit": 3, "digits": "3"}', JSON,
     "give 'digit' (every image that digit) or 'digits' (a number each hand writes), not both"),
    ("digits-too-many-images", b'{"count": 52, "digits": "12345"}', JSON,
     "'count' x the length of 'digits' must be at most 256 images, got 52 hands x 5 digits = 260"),
    ("digits-bad-count", b'{"count": 0, "digits": "1"}', JSON, "'count' must be an integer from 1 to 256, got 0"),
    ("unknown-field", b'{"cuont": 2}', JSON, "unknown field(s) 'cuont'"),
    ("unknown-and-good", b'{"count": 2, "size": 28}', JSON, "'size'"),
    ("nested-object", b'{"count": {"value": 2}}', JSON, "got dict"),
    ("deeply-nested", b'{"count": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, "not valid JSON"),
    ("deeply-nested-unclosed", b"[" * 20000, JSON, "not valid JSON"),
    ("invalid-utf8", b'{"count": "\xff\xfe"}', JSON, "UTF-8"),
    ("text-plain", b'{"count": 2}', "text/plain", "Content-Type must be application/json, got text/plain"),
    ("no-content-type", b'{"count": 2}', None, "Content-Type must be application/json, got none"),
    ("octet-stream", b'{"count": 2}', "application/octet-stream", "got application/octet-stream"),
    ("xml", b"<count>2</count>", "application/xml", "Content-Type must be application/json, got application/xml"),
    # What curl -d sends without -H 'Content-Type: application/json' (TorchServe turns it into form fields).
    ("form-urlencoded", b'{"count": 2}', "application/x-www-form-urlencoded",
     "Content-Type must be application/json, got application/x-www-form-urlencoded (curl -d sends that; "
     "add -H 'Content-Type: application/json')"),
]

# What curl -F count=2 sends: (raw body, Content-Type header).
MULTIPART = (b'--XyZ\r\nContent-Disposition: form-data; name="count"\r\n\r\n2\r\n--XyZ--\r\n',
             "multipart/form-data; boundary=XyZ")
MULTIPART_MESSAGE = ("Content-Type must be application/json, got multipart/form-data (curl -F sends that; "
                     "add -H 'Content-Type: application/json')")

# Accept header -> the answer's Content-Type (None: 406 Not Acceptable).
NEGOTIATION = [
    (None, JSON),
    ("", JSON),
    ("*/*", JSON),
    ("application/json", JSON),
    ("image/png", PNG),
    ("IMAGE/PNG", PNG),
    ("image/*", PNG),
    ("application/*", JSON),
    ("image/png;q=0.9, application/json", JSON),
    ("image/png, application/json;q=0.5", PNG),
    ("image/png;q=0.5, */*;q=0.1", PNG),
    ("application/json;q=0, */*", PNG),
    ("image/png, application/json", JSON),  # a tie: JSON, the default
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),  # a browser
    ("text/html", None),
    ("image/jpeg, text/*", None),
    ("image/png;q=0, application/json;q=0", None),
    ("image/png;q=0, application/*;q=0", None),
]

GOOD_REQUESTS = [  # (fields, the answer's shape before 28 x 28)
    ({}, (1,)),
    ({"count": 1}, (1,)),
    ({"count": 3, "seed": 0}, (3,)),
    ({"count": 2, "seed": 2**63 - 1}, (2,)),
    ({"count": 256}, (256,)),
    ({"digits": "02139"}, (1, 5)),
    ({"count": 3, "seed": 4, "digits": "7"}, (3, 1)),
    ({"count": 2, "digits": "9" * 128}, (2, 128)),
    ({"digits": "0123456789" * 25 + "012345"}, (1, 256)),  # the longest number
    ({"count": 2.0, "seed": 5.0, "digit": 3.0}, (2,)),  # JSON's numbers without a fraction are integers
    ({"count": 1e1}, (10,)),
]


# ONNX Runtime's kernels may differ from PyTorch's by 1e-6; the answer is rounded to 4 decimals.
RUNTIME_AND_ROUNDING = 5e-5 + 2e-6


def generators_images(model, count: int, seed: int, digit=None) -> np.ndarray:
    """What the generator itself draws for a request with this seed (the handler's recipe), unrounded."""
    noise, labels = sample_latent(model, count, torch.Generator().manual_seed(seed), digit)
    with torch.inference_mode():
        return model(noise, labels)[:, 0].numpy().astype(np.float64)


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def number_rows_size(hands: int, length: int, gap: int = 2) -> tuple[int, int]:
    """A PNG of `hands` rows, each a `length`-digit number with its digits side by side, rows `gap` apart."""
    return hands * 28 + (hands - 1) * gap, length * 28


def grid_size(count: int, gap: int = 2) -> tuple[int, int]:
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return rows * 28 + (rows - 1) * gap, columns * 28 + (columns - 1) * gap


# --- a hand: {"hand": {"image": ..., "digit": d}} -------------------------------------------------
def stroke(thickness: int = 3, shear: float = 0.2) -> np.ndarray:
    """A 28 x 28 "1" with a flag, leaning `shear` pixels right per row up, white on black, in [0, 1]: an upload's
    digit. Not symmetric top to bottom: its center of mass falls inside a pixel, not on a tie between two."""
    image = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        left = round(13 + shear * (14 - row))
        image[row, left:left + thickness] = 1.0
    image[5:7, left - 3:left] = 1.0  # the flag, on the left of the top
    return image


def png_base64(pixels: np.ndarray, mode: str = "L") -> str:
    """A uint8 array as a base64 PNG in `mode` (L, RGB, RGBA, LA ...)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header claims width x height pixels (a bomb, when large)."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")  # SOF0: length, precision, then height and width
    data[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def png_with_header(width: int, height: int) -> str:
    """A base64 PNG whose header claims width x height 1-bit pixels, all white: a decompression bomb when large
    (the file is a few kB; decoded, it is width x height bytes)."""
    row = b"\x00" + b"\xff" * math.ceil(width / 8)  # each row: filter byte 0, then the row's bits
    compressor = zlib.compressobj(9)
    data = b"".join([compressor.compress(row * 1000) for _ in range(height // 1000)]
                    + [compressor.compress(row * (height % 1000)), compressor.flush()])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def hand_body(image, shows=1, **fields) -> bytes:
    """A request body with a hand: `image` showing the digit `shows` (an int: 'hand'.'digit'), or the number `shows`
    (a str: 'hand'.'digits'), and any other `fields`."""
    which = "digits" if isinstance(shows, str) else "digit"
    return orjson.dumps({"hand": {"image": image, which: shows}, **fields}, option=orjson.OPT_SERIALIZE_NUMPY)


def number_png(strokes: list[np.ndarray], kind: str = "PNG", scale: int = 10) -> str:
    """Digits (white on black, 28 x 28 each) side by side, as a base64 photo of dark ink on light paper."""
    ink = np.concatenate(strokes, axis=1)
    pixels = np.kron(255 - np.rint(215 * ink), np.ones((scale, scale))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


STROKE = stroke()
DARK_ON_LIGHT = png_base64(np.kron(255 - np.rint(255 * STROKE), np.ones((10, 10))).astype(np.uint8))
THREE = [STROKE, stroke(2, -0.2), stroke(4, 0.3)]  # three digits of one hand: "111"
NUMBER_PHOTO = number_png(THREE)  # 840 x 280, the three side by side
HAND_GOOD = [  # (body, the answer's shape before 28 x 28, the pieces the upload shows)
    (hand_body(STROKE), (1, 10), 1),  # no digit nor digits: 0 to 9
    (hand_body(STROKE, digits="2026"), (1, 4), 1),
    (hand_body(STROKE, digit=7), (1, 1), 1),
    (hand_body(STROKE.tolist(), count=1, digits="0"), (1, 1), 1),
    (hand_body("data:image/png;base64," + DARK_ON_LIGHT, digits="12"), (1, 2), 1),
    (hand_body(number_png([STROKE], "JPEG")), (1, 10), 1),  # one digit, a JPEG
    (hand_body(NUMBER_PHOTO, "111", digits="2026"), (1, 4), 3),  # a number, cut into its digits
    (hand_body("data:image/jpeg;base64," + number_png(THREE, "JPEG"), "111"), (1, 10), 3),
    (hand_body(np.stack(THREE), "111", digits="7"), (1, 1), 3),  # the API's own arrays, one per digit
]
_ROW = [0.0] * 28
HAND_BAD = [  # (id, body, text the 400 message must contain)
    ("hand-not-an-object", b'{"hand": 3}', "'hand' must be an object {\"image\": ..., \"digit\": 0-9} or"),
    ("hand-null", b'{"hand": null}', "'hand' must be an object"),
    ("hand-unknown-key", hand_body(STROKE)[:-2] + b', "size": 28}}', "unknown field(s) in 'hand': 'size'"),
    ("hand-no-image", b'{"hand": {"digit": 3}}', "'hand' needs 'image'"),
    ("hand-no-digit", orjson.dumps({"hand": {"image": STROKE.tolist()}}), "'hand' needs 'digit'"),
    ("hand-digit-ten", hand_body(STROKE, shows=10), "'hand'.'digit' must be an integer from 0 to 9, got 10"),
    ("hand-digit-string", orjson.dumps({"hand": {"image": STROKE.tolist(), "digit": "3"}}), "'hand'.'digit' must be an integer from 0 to 9, got str"),
    ("hand-image-number", hand_body(5), "'hand'.'image' must be a base64 PNG or JPEG, or a 28x28 array of numbers in "
     "[0, 1], got int"),
    ("hand-27-rows", hand_body([_ROW] * 27), "'hand'.'image' must be 28 rows of 28 numbers, got 27 row(s)"),
    ("hand-row-of-27", hand_body([_ROW] * 27 + [_ROW[:27]]), "got 28 row(s) of 27, 28 value(s)"),
    ("hand-flat-784", hand_body(_ROW * 28), "'hand'.'image' must be 28 rows of 28 numbers, got 784 row(s), not all of them arrays"),
    ("hand-above-one", hand_body([_ROW] * 5 + [_ROW[:7] + [1.5] + _ROW[8:]] + [_ROW] * 22),
     "'hand'.'image' must hold numbers in [0, 1]: row 5, column 7 is 1.5"),
    ("hand-negative", hand_body([[-0.1] + _ROW[1:]] + [_ROW] * 27), "row 0, column 0 is -0.1"),
    ("hand-string-value", hand_body([["0"] + _ROW[1:]] + [_ROW] * 27), "row 0, column 0 is str"),
    ("hand-bool-value", hand_body([[True] + _ROW[1:]] + [_ROW] * 27), "row 0, column 0 is bool"),
    ("hand-null-value", hand_body([[None] + _ROW[1:]] + [_ROW] * 27), "row 0, column 0 is null"),
    # JSON has no NaN, but TorchServe's worker parses the body with Python's json, which reads one
    ("hand-nan", hand_body([_ROW] * 2 + [[0.0] * 3 + ["NAN"] + [0.0] * 24] + [_ROW] * 25).replace(b'"NAN"', b"NaN"),
     "'hand'.'image' must hold numbers in [0, 1]: row 2, column 3 is nan"),
    ("hand-infinity", hand_body([["INF"] + _ROW[1:]] + [_ROW] * 27).replace(b'"INF"', b"Infinity"), "column 0 is inf"),
    ("hand-blank-array", hand_body([_ROW] * 28), "nothing is drawn in 'hand'.'image'"),
    ("hand-faint-array", hand_body(np.full((28, 28), 0.09)), "nothing is drawn"),
    ("hand-bad-base64", hand_body("not base64!"), "'hand'.'image' is neither an array nor valid base64"),
    ("hand-base64-of-a-gif", hand_body(base64.b64encode(b"GIF89a" + bytes(40)).decode()), "not of a PNG or a JPEG file"),
    # the signature and IHDR's length and name, cut there: its size cannot be read (once a 503 for the whole batch)
    ("hand-png-cut-in-its-header", hand_body("iVBORw0KGgoAAAANSUhEUg=="), "'hand'.'image' is not a PNG that can be read"),
    ("hand-truncated-jpeg", hand_body(number_png([STROKE], "JPEG")[:300]), "'hand'.'image' is not a JPEG that can be read"),
    ("hand-unreadable-jpeg", hand_body(base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(200)).decode()),
     "'hand'.'image' is not a JPEG that can be read"),
    ("hand-jpeg-over-the-area", hand_body(base64.b64encode(jpeg_claiming(4096, 4096)).decode()),
     "'hand'.'image' is 4096x4096 pixels (16.8 megapixels): at most 12.6 megapixels"),
    ("hand-truncated-png", hand_body(DARK_ON_LIGHT[:200]), "'hand'.'image' is not a PNG that can be read"),
    ("hand-data-url-not-base64", hand_body("data:image/png," + DARK_ON_LIGHT), "data:image/png;base64,"),
    ("hand-png-4097-wide", hand_body(png_with_header(4097, 1)), "'hand'.'image' is 4097x1 pixels: at most 4096 a side"),
    ("hand-decompression-bomb", hand_body(png_with_header(12_000, 12_000)), "is 12000x12000 pixels: at most 4096"),
    ("hand-blank-png", hand_body(png_base64(np.full((50, 40), 255, np.uint8))), "nothing is drawn"),
    ("hand-transparent-png", hand_body(png_base64(np.zeros((30, 30, 4), np.uint8), "RGBA")), "nothing is drawn"),
    ("hand-count-3", hand_body(STROKE, count=3), "'count' must be 1 with 'hand' (there is one hand: the one in the image), got 3"),
    ("hand-seed", hand_body(STROKE, seed=7), "'seed' does not go with 'hand'"),
    ("hand-digit-and-digits", hand_body(STROKE, digit=3, digits="12"), "give 'digit' (every image that digit) or 'digits'"),
    # a number: 'hand'.'digits'
    ("hand-digit-and-its-digits", orjson.dumps({"hand": {"image": NUMBER_PHOTO, "digit": 1, "digits": "111"}}),
     "give 'hand'.'digit' (the image is one digit) or 'hand'.'digits' (the number the image shows, left to right), not both"),
    ("hand-neither-digit-nor-digits", orjson.dumps({"hand": {"image": NUMBER_PHOTO}}), "'hand' needs 'digit' or 'digits'"),
    ("hand-digits-empty", hand_body(NUMBER_PHOTO, ""), "'hand'.'digits' must hold 1 to 12 digits, got 0"),
    ("hand-digits-13", hand_body(NUMBER_PHOTO, "1" * 13), "'hand'.'digits' must hold 1 to 12 digits, got 13"),
    ("hand-digits-letter", hand_body(NUMBER_PHOTO, "1l1"), "'hand'.'digits' may hold only the characters 0-9, got 'l' at "
     "position 2"),
    ("hand-digits-integer", orjson.dumps({"hand": {"image": NUMBER_PHOTO, "digits": 111}}),
     "'hand'.'digits' must be a string of 1 to 12 decimal digits such as \"02139\", got int"),
    ("hand-arrays-fewer-than-digits", hand_body(np.stack(THREE[:2]), "111"),
     "'hand'.'image' holds 2 array(s), but 'hand'.'digits' has 3 digits: one 28x28 array per digit"),
    ("hand-one-array-for-digits", hand_body(STROKE, "1"), "'hand'.'image' with 'hand'.'digits' must be a list of 1 "
     "28x28 arrays, one per digit, got a single array"),
    ("hand-arrays-one-blank", hand_body(np.stack([STROKE, np.zeros((28, 28)), STROKE]), "101"),
     "nothing is drawn in 'hand'.'image' (digit 2 of 3, '0')"),
    ("hand-arrays-one-bad-row", hand_body([STROKE.tolist(), [_ROW] * 27], "11"),
     "'hand'.'image' (array 2 of 2) must be 28 rows of 28 numbers, got 27 row(s)"),
    ("hand-number-too-many-marks", hand_body(NUMBER_PHOTO, "11"), "'hand'.'image' shows 3 separate marks, but 'digits' "
     "has 2: say every digit it shows, or leave out what is not a digit"),
    ("hand-number-too-few-marks", hand_body(number_png([STROKE]), "1111"),
     "but 'digits' has 4: write the digits apart"),
    ("hand-number-blank", hand_body(png_base64(np.full((50, 90), 230, np.uint8)), "12"),
     "nothing is drawn in 'hand'.'image'"),
]


def noisy_photo(side: int) -> str:
    """A base64 PNG of the stroke as a phone photographs it: side x side, paper with sensor noise (which keeps the
    file large: 1000 px a side is about 0.9 MB of base64, 1100 px over 1 MiB)."""
    rng = np.random.default_rng(side)
    paper = 0.85 + rng.normal(0, 0.03, (side, side))
    ink = np.kron(stroke(), np.ones((side // 28, side // 28)))
    ink = np.pad(ink, ((0, side - ink.shape[0]), (0, side - ink.shape[1])))
    return png_base64(np.clip(np.rint(255 * paper * (1 - 0.9 * ink)), 0, 255).astype(np.uint8))
