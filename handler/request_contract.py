"""The served API: what a request may contain, its limits, the errors it gets, and the answer's formats.

docs/openapi.yaml describes the API for people and tools (tests/test_openapi.py holds its limits to these);
deploy/README.md the Open Inference Protocol route. Two routes serve one archive (the handler says which takes what):
the digits route takes a JSON object with any of
    count 1..256, seed 0..2**63-1, digit 0..9, digits "02139" (count x len(digits) <= 256, not with digit)
and the hand route one with
    hand {"image": a base64 PNG or JPEG, or 28 x 28 values in [0, 1]; "digit": 0..9}, or
         {"image": a base64 PNG or JPEG of a number, or k arrays of 28 x 28; "digits": its k digits, 1 to 12},
    and digit or digits to write (0-9 without either); count 1, no seed.
A hand is one noise vector: hand i is the i-th vector the seed draws, whatever the digits, so hand i's j-th
image is, bit for bit, image i of {"count": count, "seed": seed, "digit": digits[j]}. With `hand`, the upload is
prepared as MNIST's digits were (upload.py: a number cut into its digits), one vector is found for all of them
(search.find_hand), and it writes `digits` (or `digit`, or 0-9): the same upload gives the same answer. The answer
follows Accept (q-values honoured; JSON on a tie and without Accept):
    application/json: {"images": count x 28 x 28 (or count x len(digits) x 28 x 28), 4 decimals}, with a hand
        also {"hand": {"image": the upload as prepared, "copy": the model's copy, "error": their MSE}} (with
        hand.digits, one of each per digit)
    image/png: one 8-bit grayscale PNG, white on black: the digit, a grid of ceil(sqrt(count)) columns with a
        2-pixel gray gap, or one row per hand with its digits side by side; pixel = round(255 x value)
Anything else answers 400 {"error": "...", "code": 400}, per request (a bad request never fails the good
ones TorchServe batched with it), or 406 for an Accept that allows neither format; errors are always JSON.

Open Inference Protocol (KServe v2), with service_envelope=kservev2: the same fields as one-element input
tensors (INT64; `digits` BYTES), a hand as `hand` (FP32 [28, 28] with `hand_digit`, or [k, 28, 28] with
`hand_digits`, BYTES); outputs `images` in its real shape, and with a hand `hand_copy` and `hand_error`. FP64
because the envelope writes Python floats with json.dumps: the 4-decimal values as float32 would print 17 digits
each (count=256 would pass max_response_size); as doubles they print as the plain route does. A bad request
answers 400 with the protocol's body {"error": "..."}; so does one in the binary data extension (tritonclient's
default).
"""
import base64
import io
import math
import secrets
from http import HTTPStatus
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np
import orjson
from PIL import Image

try:
    from . import upload  # as handler.request_contract: training, the tools, the tests
except ImportError:
    import upload  # TorchServe imports the archive's files as top-level modules

MAX_COUNT = 256
MAX_SEED = 2**63 - 1
DECIMALS = 4  # 1e-4 steps are finer than MNIST's 8-bit pixels and halve the JSON
JSON_TYPE, PNG_TYPE = "application/json", "image/png"
ANSWER_TYPES = (JSON_TYPE, PNG_TYPE)  # on equal preference the first wins: JSON stays the default
PNG_GAP, PNG_GAP_LEVEL = 2, 128  # pixels between digits in a PNG grid, and their gray (tiles stay apart)
# What common clients send a body as when no Content-Type is given, so the error can name the fix.
CLIENT_DEFAULTS = {"application/x-www-form-urlencoded": "curl -d sends that", "multipart/form-data": "curl -F sends that"}


@dataclass(frozen=True)
class GenerationRequest:
    count: int
    seed: int
    digit: Optional[int]
    digits: Optional[str] = None  # a number every hand writes: one image per character
    answer_type: str = JSON_TYPE  # what the answer's Content-Type will be: one of ANSWER_TYPES
    hand: Optional["Hand"] = None  # write in the hand of this upload (count is 1, digits the number to write)


class BadRequest(ValueError):
    """A client error: its message goes back to the client as JSON with this status."""

    status = 400


class NotAcceptable(BadRequest):
    """The Accept header allows none of ANSWER_TYPES."""

    status = 406


def _json_type(value: Any) -> str:
    """A value's type as a client would name it: null, int, str, list, dict ..."""
    return "null" if value is None else type(value).__name__


def _integer(body: dict, name: str, low: int, high: int, default: Optional[int], where: str = "") -> Optional[int]:
    if name not in body:
        return default
    value = body[name]
    # JSON has one kind of number, and JSON Schema's integers are the numbers without a fraction: 2.0 is 2
    # (the API's document says "integer", and clients that write every number as a float send 2.0).
    if type(value) is float and value.is_integer():
        value = int(value)
    # bool is a subclass of int in Python, but `true` is not a count.
    if type(value) is not int:
        shown = repr(value) if type(value) is float else _json_type(value)
        raise BadRequest(f"{where}'{name}' must be an integer from {low} to {high}, got {shown}")
    if not low <= value <= high:
        raise BadRequest(f"{where}'{name}' must be an integer from {low} to {high}, got {value}")
    return value


def _digit_string(value: Any, name: str, longest: int, num_classes: int = 10) -> str:
    """A number as a string of 1 to `longest` digits (leading zeros kept); BadRequest naming `name` otherwise."""
    if type(value) is not str:
        raise BadRequest(f"{name} must be a string of 1 to {longest} decimal digits such as \"02139\", "
                         f"got {_json_type(value)}")
    if not 1 <= len(value) <= longest:
        raise BadRequest(f"{name} must hold 1 to {longest} digits, got {len(value)}")
    for position, character in enumerate(value, start=1):
        if character not in "0123456789"[:num_classes]:  # not str.isdigit(): it takes other scripts' digits
            raise BadRequest(f"{name} may hold only the characters 0-9, got {character!r} at position {position}")
    return value


def _check_content_type(content_type: Optional[str]) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        why = CLIENT_DEFAULTS.get(media_type, "send a JSON object such as {\"count\": 4}")
        raise BadRequest(f"Content-Type must be application/json, got {media_type or 'none'} "
                         f"({why}; add -H 'Content-Type: application/json')")


def _decode_body(value: Any) -> Any:
    if not isinstance(value, (bytes, bytearray)):
        return value  # TorchServe's worker already parsed the JSON
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the body is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise BadRequest("the body is empty: send a JSON object such as {\"count\": 4}")
    try:
        return orjson.loads(text)  # strict: no NaN/Infinity, bounded nesting
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def parse_request(row: dict, content_type: Optional[str], accept: Optional[str], num_classes: int,
                  route: Optional[Callable[[bool], None]] = None) -> GenerationRequest:
    """Validates one request's TorchServe input row and headers; raises BadRequest saying what is wrong.

    The Content-Type comes first: TorchServe's frontend turns a form-encoded body into form fields,
    so without it the real mistake would read as a missing body. Accept comes last: a bad field
    is the more useful answer.
    """
    _check_content_type(content_type)
    if "body" not in row:
        raise BadRequest("the request has no body: send a JSON object such as {\"count\": 4}")
    body = _decode_body(row["body"])
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__ if body is not None else 'null'}")
    return replace(_generation_request(body, num_classes, route), answer_type=answer_type(accept))


def _accepted_quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    """The q of the most specific media range that matches `offer` (RFC 9110 12.5.1); 0 if none does."""
    kind = offer.split("/")[0] + "/*"
    best = (-1, 0.0)
    for media_range, q in ranges:
        specificity = {offer: 2, kind: 1, "*/*": 0}.get(media_range, -1)
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def answer_type(accept: Optional[str]) -> str:
    """The answer's media type for an Accept header: the acceptable one of ANSWER_TYPES with the highest
    q (JSON on a tie, and without Accept); NotAcceptable if it allows neither."""
    if not accept or not accept.strip():
        return JSON_TYPE
    ranges = []
    for item in accept.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a malformed weight accepts nothing rather than everything
        if media_range:
            ranges.append((media_range.lower(), q))
    qualities = [_accepted_quality(offer, ranges) for offer in ANSWER_TYPES]
    if max(qualities) <= 0:
        raise NotAcceptable(f"Accept allows neither {' nor '.join(ANSWER_TYPES)} (got {accept!r}); "
                            f"ask for one of them, or send no Accept header for JSON")
    return ANSWER_TYPES[qualities.index(max(qualities))]


def png_grid(images: np.ndarray) -> bytes:
    """count x 28 x 28 values in [0, 1] as one grayscale PNG: the digit alone, or a grid of ceil(sqrt(count))
    columns with a PNG_GAP-pixel gap; hands x digits x 28 x 28 as one row per hand, its digits side by side
    with no gap, so they read as one written number (white digits on black, as in MNIST)."""
    if images.ndim == 4:
        rows, columns, height, width = images.shape
        column_gap = 0
    else:
        count, height, width = images.shape
        columns = math.ceil(math.sqrt(count))
        rows, column_gap = math.ceil(count / columns), PNG_GAP
    # In float64 from the 4-decimal values, as a client computes it from the JSON answer.
    pixels = np.rint(255 * images.reshape(-1, height, width).astype(np.float64).round(DECIMALS)).astype(np.uint8)
    grid = np.full((rows * (height + PNG_GAP) - PNG_GAP, columns * (width + column_gap) - column_gap), PNG_GAP_LEVEL,
                   np.uint8)
    for index, digit in enumerate(pixels):
        top, left = (index // columns) * (height + PNG_GAP), (index % columns) * (width + column_gap)
        grid[top:top + height, left:left + width] = digit
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_answer(images: np.ndarray, media_type: str, fields: Optional[dict] = None) -> bytes:
    """The 200 answer's body: count (x digits) x 28 x 28 images (already rounded to DECIMALS) as `media_type`;
    a JSON answer also carries `fields` (with a hand: what was found)."""
    if media_type == PNG_TYPE:
        return png_grid(images)
    return orjson.dumps({"images": images, **(fields or {})}, option=orjson.OPT_SERIALIZE_NUMPY)


def _generation_request(body: dict, num_classes: int, route: Optional[Callable[[bool], None]] = None) -> GenerationRequest:
    """The fields' checks, shared by the plain JSON body and the v2 input tensors. `route(has_hand)` raises BadRequest
    when the request has come to the wrong route (before anything else in it is judged)."""
    allowed = ("count", "seed", "digit", "digits", "hand") if num_classes else ("count", "seed")
    unknown = [name for name in body if name not in allowed]
    if route is not None and num_classes:
        route("hand" in body)
    if unknown:
        hint = " (this model is unconditional)" if {"digit", "digits", "hand"} & set(unknown) else ""
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}{hint}; allowed: {', '.join(allowed)}")
    count = _integer(body, "count", 1, MAX_COUNT, default=1)
    seed = _integer(body, "seed", 0, MAX_SEED, default=None)
    digit = _integer(body, "digit", 0, num_classes - 1, default=None) if num_classes else None
    digits = _digit_string(body["digits"], "'digits'", MAX_COUNT, num_classes) if num_classes and "digits" in body else None
    if digits is not None:
        if digit is not None:
            raise BadRequest("give 'digit' (every image that digit) or 'digits' (a number each hand writes), not both")
        if count * len(digits) > MAX_COUNT:
            raise BadRequest(f"'count' x the length of 'digits' must be at most {MAX_COUNT} images, got {count} hands x "
                             f"{len(digits)} digits = {count * len(digits)}")
    if "hand" in body:
        if count != 1:
            raise BadRequest(f"'count' must be 1 with 'hand' (there is one hand: the one in the image), got {count}")
        if seed is not None:
            raise BadRequest("'seed' does not go with 'hand': the hand is found from the image, and the same image "
                             "always gives the same hand")
        number = digits if digits is not None else DEFAULT_NUMBER if digit is None else str(digit)
        return GenerationRequest(count=1, seed=0, digit=None, digits=number, hand=_hand(body["hand"], num_classes))
    return GenerationRequest(count=count, seed=secrets.randbits(63) if seed is None else seed, digit=digit,
                             digits=digits)


# --- a hand: what a person wrote, which the model's hand is found from ------------------------------
HAND_SIDE = upload.DIGIT_SIDE  # an uploaded array is the API's own image: 28 x 28 values in [0, 1], white ink on black
INK_LEVEL = upload.INK_LEVEL
MAX_HAND_DIGITS = 12  # the longest number an upload may show: more digits pin a hand down no better, and cost more
DEFAULT_NUMBER = "0123456789"  # what a hand writes when the request names no digit or digits


@dataclass(frozen=True)
class Hand:
    """What an upload shows, prepared: k x 28 x 28 float32 in [0, 1] (white ink on black), and the k digits they are.
    `single`: it came as one digit ('hand'.'digit'), and its answer keeps that shape (28 x 28, one error)."""
    images: np.ndarray
    digits: str
    single: bool = False


def _hand(value: Any, num_classes: int) -> Hand:
    if not isinstance(value, dict):
        raise BadRequest(f"'hand' must be an object {{\"image\": ..., \"digit\": 0-9}} or {{\"image\": ..., "
                         f"\"digits\": \"2026\"}}, got {_json_type(value)}")
    unknown = [name for name in value if name not in ("image", "digit", "digits")]
    if unknown:
        raise BadRequest(f"unknown field(s) in 'hand': {', '.join(map(repr, unknown))}; allowed: image, digit, digits")
    if "digit" in value and "digits" in value:
        raise BadRequest("give 'hand'.'digit' (the image is one digit) or 'hand'.'digits' (the number the image shows, "
                         "left to right), not both")
    if "digit" not in value and "digits" not in value:
        raise BadRequest("'hand' needs 'digit' or 'digits': which digit (0-9) the image shows, or the number it shows, "
                         "left to right (\"2026\")")
    if "image" not in value:
        raise BadRequest("'hand' needs 'image': a picture of what you wrote (a PNG or a JPEG in base64), or the API's "
                         "28 x 28 arrays")
    image = value["image"]
    if "digit" in value:
        digits, single = str(_integer(value, "digit", 0, num_classes - 1, default=None, where="'hand'.")), True
    else:
        digits, single = _digit_string(value["digits"], "'hand'.'digits'", MAX_HAND_DIGITS, num_classes), False
    if isinstance(image, str):
        data = _image_bytes(image)
        try:
            images = upload.prepare_digit(data)[None] if single else upload.prepare_number(data, len(digits))
        except upload.NothingDrawn as error:
            raise BadRequest(f"nothing is drawn in 'hand'.'image': it {error}") from None
        except upload.UnusableImage as error:
            raise BadRequest(f"'hand'.'image' {error}") from None
    elif isinstance(image, list):
        images = _hand_array(image)[None] if single else _hand_arrays(image, len(digits))
    else:
        raise BadRequest(f"'hand'.'image' must be a base64 PNG or JPEG, or {'a' if single else 'a list of'} "
                         f"{HAND_SIDE}x{HAND_SIDE} array{'' if single else 's'} of numbers in [0, 1], got "
                         f"{_json_type(image)}")
    for index, piece in enumerate(images):
        if not piece.max() >= INK_LEVEL:
            which = "" if single else f" (digit {index + 1} of {len(images)}, {digits[index]!r})"
            raise BadRequest(f"nothing is drawn in 'hand'.'image'{which}: no pixel has {INK_LEVEL} ink or more")
    return Hand(images, digits, single)


def _hand_arrays(arrays: list, count: int) -> np.ndarray:
    """One 28 x 28 array per digit of 'hand'.'digits', as given."""
    if arrays and all(type(v) in (int, float) for v in (arrays[0] if isinstance(arrays[0], list) else [None])):
        raise BadRequest(f"'hand'.'image' with 'hand'.'digits' must be a list of {count} {HAND_SIDE}x{HAND_SIDE} "
                         f"arrays, one per digit, got a single array (send 'hand'.'digit' with one)")
    if len(arrays) != count:
        raise BadRequest(f"'hand'.'image' holds {len(arrays)} array(s), but 'hand'.'digits' has {count} digits: one "
                         f"{HAND_SIDE}x{HAND_SIDE} array per digit")
    return np.stack([_hand_array(array, f" (array {index + 1} of {count})") for index, array in enumerate(arrays)])


def _hand_array(rows: Any, which: str = "") -> np.ndarray:
    """A 28 x 28 array as given (the API's own image format), checked value by value."""
    if not isinstance(rows, list):
        raise BadRequest(f"'hand'.'image'{which} must be {HAND_SIDE} rows of {HAND_SIDE} numbers, got {_json_type(rows)}")
    if len(rows) != HAND_SIDE or not all(isinstance(row, list) and len(row) == HAND_SIDE for row in rows):
        shape = f"{len(rows)} row(s)" + ("" if all(isinstance(r, list) for r in rows) else ", not all of them arrays")
        lengths = sorted({len(r) for r in rows if isinstance(r, list)})
        raise BadRequest(f"'hand'.'image'{which} must be {HAND_SIDE} rows of {HAND_SIDE} numbers, got {shape}"
                         + (f" of {', '.join(map(str, lengths))} value(s)" if lengths else ""))
    for y, row in enumerate(rows):
        for x, v in enumerate(row):
            # bool is an int in Python, but `true` is no amount of ink; NaN fails both comparisons
            if type(v) not in (int, float) or not 0 <= v <= 1:
                shown = _json_type(v) if type(v) not in (int, float) else repr(v)
                raise BadRequest(f"'hand'.'image'{which} must hold numbers in [0, 1]: row {y}, column {x} is {shown}")
    return np.asarray(rows, dtype=np.float32)


def _image_bytes(text: str) -> bytes:
    """The file in a base64 string, plain or as a data: URL; BadRequest if it is not base64."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest("'hand'.'image' as a data: URL must be data:image/png;base64,<the PNG in base64> (or "
                             "image/jpeg)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # line breaks (base64's default) are fine
    except ValueError:
        raise BadRequest("'hand'.'image' is neither an array nor valid base64 (a PNG or JPEG file, base64-encoded: "
                         "`base64 -w0 number.jpg`)") from None


def error_body(message: str, code: int = 400) -> bytes:
    return orjson.dumps({"error": message, "code": code})




# --- Open Inference Protocol (KServe v2) through TorchServe's kservev2 envelope -------------------
# The envelope (ts/torch_handler/request_envelope/kservev2.py) parses the body itself and hands the
# handler the *input tensors of one request* as rows: [{"name", "datatype", "shape", "data"}, ...],
# with `data` already reshaped to `shape`. It only reads the batch's first request: batchSize stays 1.
V2_OUTPUT = "images"
V2_STRING_INPUTS = ("digits", "hand_digits")  # the BYTES inputs
# An upload: one digit (FP32 [28, 28]) with which digit it shows, or k digits (FP32 [k, 28, 28]) with the number
V2_HAND, V2_HAND_DIGIT, V2_HAND_DIGITS = "hand", "hand_digit", "hand_digits"
V2_INTEGER_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
V2_FLOAT_TYPES = ("FP32", "FP64", "FP16")


def is_v2_inputs(rows: list) -> bool:
    """True for the envelope's rows (input tensors, or [BadRequest] for an unreadable request); a plain
    request's row is {"body": ...}."""
    if rows and isinstance(rows[0], BadRequest):
        return True
    return bool(rows) and all(isinstance(row, dict) and "datatype" in row and "body" not in row for row in rows)


def parse_v2_request(inputs: list[dict], num_classes: int,
                     route: Optional[Callable[[bool], None]] = None) -> GenerationRequest:
    """Validates one v2 request's input tensors: scalar fields (shape [1]; INT64, or BYTES for `digits`), and
    a hand as `hand`: FP32 [28, 28] with `hand_digit`, or FP32 [k, 28, 28] with `hand_digits` (BYTES)."""
    if inputs and isinstance(inputs[0], BadRequest):
        raise inputs[0]  # the envelope could not read the request
    body, hand, seen = {}, {}, set()
    for tensor in inputs:
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("every input needs a 'name': count, seed, digit, digits, hand, hand_digit or hand_digits")
        if name in seen:
            raise BadRequest(f"input {name!r} is given twice")
        seen.add(name)
        datatype, data, shape = tensor.get("datatype"), tensor.get("data"), tensor.get("shape")
        if name in V2_STRING_INPUTS:  # the envelope has already taken a BYTES tensor's one element out of its list
            if datatype != "BYTES":
                raise BadRequest(f"input {name!r} must have datatype BYTES (a string such as \"02139\"), got {datatype!r}")
            if shape != [1]:
                raise BadRequest(f"input {name!r} must hold one string (shape [1]), got shape {shape!r}")
            if name == V2_HAND_DIGITS:
                hand["digits"] = data
            else:
                body[name] = data
            continue
        if name == V2_HAND:  # the envelope has reshaped `data` to `shape`: rows of values
            if datatype not in V2_FLOAT_TYPES:
                raise BadRequest(f"input {name!r} must have datatype FP32 ({HAND_SIDE} x {HAND_SIDE} values in [0, 1] "
                                 f"per digit), got {datatype!r}")
            if shape[-2:] != [HAND_SIDE, HAND_SIDE] or len(shape) not in (2, 3):
                raise BadRequest(f"input {name!r} must have shape [{HAND_SIDE}, {HAND_SIDE}] (one digit, with "
                                 f"{V2_HAND_DIGIT!r}) or [k, {HAND_SIDE}, {HAND_SIDE}] (k digits, with "
                                 f"{V2_HAND_DIGITS!r}), got {shape!r}")
            hand["image"] = data
            continue
        if datatype not in V2_INTEGER_TYPES:
            raise BadRequest(f"input {name!r} must have datatype INT64, got {datatype!r}")
        if shape != [1] or not isinstance(data, list) or len(data) != 1:
            raise BadRequest(f"input {name!r} must hold one value (shape [1]), got shape {shape!r}")
        if name == V2_HAND_DIGIT:
            hand["digit"] = data[0]
        else:
            body[name] = data[0]
    if hand:
        if "image" not in hand or len(hand) == 1:
            raise BadRequest("input 'hand' goes with 'hand_digit' (an image of one digit, [28, 28], and which digit it "
                             "shows) or with 'hand_digits' (k digits, [k, 28, 28], and the number they show)")
        body["hand"] = hand
    return _generation_request(body, num_classes, route)


def v2_outputs(images: np.ndarray, fields: dict) -> dict[str, np.ndarray]:
    """A v2 answer's output tensors by name, as FP64 (see above): the images, and with a hand the model's copy
    of the upload (`hand_copy`: [28, 28] for one digit, [k, 28, 28] for k) and their mean squared errors
    (`hand_error`: [1], or [k])."""
    tensors = {V2_OUTPUT: images.astype(np.float64).round(DECIMALS)}
    if "hand" in fields:
        tensors["hand_copy"] = np.asarray(fields["hand"]["copy"], dtype=np.float64).round(DECIMALS)
        tensors["hand_error"] = np.atleast_1d(np.asarray(fields["hand"]["error"], dtype=np.float64))
    return tensors


def _v2_body(rows: list) -> dict:
    """The v2 request body as the envelope will read it, or BadRequest saying why it is not one."""
    if not rows or not isinstance(rows[0], dict):
        raise BadRequest("the request has no body: send an Open Inference Protocol request {\"inputs\": [...]}")
    body = rows[0].get("data") or rows[0].get("body")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise BadRequest("an Open Inference Protocol request is a JSON object with an 'inputs' list, e.g. "
                         "{\"inputs\": [{\"name\": \"count\", \"datatype\": \"INT64\", \"shape\": [1], \"data\": [4]}]}")
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    for tensor in inputs:
        if not isinstance(tensor, dict) or not {"name", "datatype", "shape", "data"} <= set(tensor):
            raise BadRequest("every input must be an object with 'name', 'datatype', 'shape' and 'data'")
        shape, data = tensor["shape"], tensor["data"]
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise BadRequest(f"input {tensor['name']!r}: 'shape' must be a list of non-negative integers")
        if not isinstance(data, list) or not data:
            raise BadRequest(f"input {tensor['name']!r}: 'data' must be a non-empty list")
    return body


def v2_error(context: Any, message: str, status: int = 400) -> bytes:
    """Request 0's answer as the Open Inference Protocol's error body, {"error": message}, with `status`."""
    context.set_response_status(status, HTTPStatus(status).phrase, 0)
    context.set_response_content_type(0, JSON_TYPE)
    return orjson.dumps({"error": message})


def header(headers: dict, name: str) -> Optional[str]:
    """A request header from TorchServe's request properties, whatever case the client gave its name."""
    return next((v for k, v in headers.items() if k.lower() == name and isinstance(v, str)), None)


def _binary_extension(context: Any) -> bool:
    """True when the client used the binary tensor data extension (tritonclient's default)."""
    headers = context.request_processor[0].get_request_properties() if context.request_processor else {}
    return header(headers, "inference-header-content-length") is not None


def adapt_kservev2_envelope() -> None:
    """Makes TorchServe's kservev2 envelope answer errors as the Open Inference Protocol does.

    Unadapted, the envelope turns a body without 'inputs' (or one that is not JSON) into a KeyError,
    a 503 "Prediction failed", and the frontend writes any error as {"code", "type", "message"}, which
    protocol clients cannot decode. Adapted, the envelope hands an unreadable request to the handler
    as [BadRequest], the handler answers every error as 400 {"error": "..."} (v2_error), and the
    envelope passes that body on unwrapped; a good answer's output keeps its real shape, where the envelope
    would write it flat. A request in the binary data extension is told to send
    JSON tensors. Patched on the class (the envelope's bound handle() looks these up per call), in this
    worker process only (a worker serves one model); idempotent; harmless without the envelope.
    """
    try:
        from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope
    except ImportError:  # not inside TorchServe
        return
    if getattr(KServev2Envelope.parse_input, "adapted", False):
        return
    original_parse, original_format = KServev2Envelope.parse_input, KServev2Envelope.format_output

    def parse_input(self, data):
        try:
            if _binary_extension(self.context):
                raise BadRequest("binary tensor data (the binary data extension) is not supported: send the inputs "
                                 "as JSON (tritonclient: binary_data=False on every input and output)")
            _v2_body(data)
            return original_parse(self, data)
        except BadRequest as error:
            return [error]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            return [BadRequest(f"not a valid Open Inference Protocol request ({error})")]

    def format_output(self, data):
        if self.context.get_response_status(0)[0] != 200:
            return data  # the handler's error body, as it is
        response = original_format(self, data)
        for output, tensor in zip(response[0]["outputs"], data):  # the envelope writes every shape flat
            output["shape"] = list(np.shape(tensor))
        return response

    parse_input.adapted = True
    KServev2Envelope.parse_input, KServev2Envelope.format_output = parse_input, format_output
