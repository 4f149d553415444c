"""Request cases shared by the in-process handler tests and the real-server tests.

Each bad case: (id, raw body bytes, Content-Type header or None, text the 400 message must contain).
"""
import io
import math

import numpy as np
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
    ("count-float", b'{"count": 2.0}', JSON, "got float"),
    ("count-exponent", b'{"count": 1e2}', JSON, "got float"),
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
    ("digit-float", b'{"digit": 3.0}', JSON, "'digit' must be an integer from 0 to 9, got float"),
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
