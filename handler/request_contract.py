"""The served API: what a request may contain, its limits, the errors it gets, and the answer's formats.

Request body (Content-Type: application/json), every field optional:
    {"count": 1..256, "seed": 0..2**63-1, "digit": 0..9}
    {"count": hands, "seed": ..., "digits": "02139"}: a number written by `count` hands
`digits` is a string of 1 to 256 characters 0-9 (a string, so leading zeros stay), not allowed beside
`digit`, with count x len(digits) <= 256. Each hand writes the whole number, one image per character,
from one noise vector. The seed picks the hands: hand i is the i-th noise vector the seed draws,
whatever the digits, so hand i's j-th image is, bit for bit, image i of {"count": count, "seed": seed,
"digit": digits[j]}, and {"digits": "3", "seed": s} is {"digit": 3, "seed": s}. (One hand writes a digit
the same way each time it occurs in the number.) Without a seed, the hands are new at every call.
Answer, by the request's Accept header (content negotiation, q-values honoured):
    application/json (the default, also for no Accept and */*):
        {"images": [count x 28 x 28 floats in [0, 1], rounded to 4 decimals]}
        with digits: count x len(digits) x 28 x 28, one row per hand
    image/png: the digits as one 8-bit grayscale PNG, white on black as in MNIST: count=1 is the 28x28
        digit, more are a grid of ceil(sqrt(count)) columns with a 2-pixel gray gap; with digits, one
        row per hand, its digits side by side with no gap (they read as one written number) and a
        2-pixel gray gap between hands. Each pixel is round(255 x value) of the JSON answer's value,
        so a seed gives byte-identical PNGs.
Anything else answers 400 with {"error": "...", "code": 400}, per request: a bad request never
fails the good ones TorchServe batched with it. An Accept that allows neither format answers 406
with the same JSON error body. Errors are always JSON, whatever Accept asked for.

Open Inference Protocol (KServe v2), when TorchServe runs with service_envelope=kservev2
(TS_SERVICE_ENVELOPE=kservev2), e.g. POST /v2/models/mnist_gan/infer:
    {"inputs": [{"name": "count", "datatype": "INT64", "shape": [1], "data": [4]},
                {"name": "seed",  "datatype": "INT64", "shape": [1], "data": [7]},
                {"name": "digit", "datatype": "INT64", "shape": [1], "data": [3]}]}
    or, for a number: {"name": "digits", "datatype": "BYTES", "shape": [1], "data": ["02139"]}
Every input is optional, with the same names, limits and messages as the JSON fields. Response:
    {"id": ..., "model_name": "mnist_gan", "model_version": "1.0",
     "outputs": [{"name": "images", "datatype": "FP64", "shape": [count, 28, 28], "data": [...]}]}
with digits the shape is [count, len(digits), 28, 28]. `data` is the tensor flattened in row-major
order, as the protocol has it (TorchServe's envelope writes every shape flat; adapt_kservev2_envelope
writes the real one). FP64 because the envelope
writes Python floats with json.dumps: the 4-decimal values as float32 would print 17 digits
each (count=256 would pass max_response_size); as doubles they print as the plain route does.
A bad request answers 400 with the protocol's error body {"error": "..."}; so does a request in the
binary data extension (tritonclient's default), which is not supported: send JSON tensors.
Health and metadata (/v2/health/*, /v2/models/mnist_gan[/ready]) are KServe's wrapper's to answer:
TorchServe itself answers 404 there (deploy/README.md).
"""
import io
import math
import secrets
from http import HTTPStatus
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import orjson
from PIL import Image

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


class BadRequest(ValueError):
    """A client error: its message goes back to the client as JSON with this status."""

    status = 400


class NotAcceptable(BadRequest):
    """The Accept header allows none of ANSWER_TYPES."""

    status = 406


def _integer(body: dict, name: str, low: int, high: int, default: Optional[int]) -> Optional[int]:
    if name not in body:
        return default
    value = body[name]
    # bool is a subclass of int in Python, but `true` is not a count.
    if type(value) is not int:
        shown = "null" if value is None else type(value).__name__
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}, got {shown}")
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}, got {value}")
    return value


def _digits(body: dict) -> Optional[str]:
    if "digits" not in body:
        return None
    value = body["digits"]
    if type(value) is not str:
        shown = "null" if value is None else type(value).__name__
        raise BadRequest(f"'digits' must be a string of 1 to {MAX_COUNT} decimal digits such as \"02139\", got {shown}")
    if not 1 <= len(value) <= MAX_COUNT:
        raise BadRequest(f"'digits' must hold 1 to {MAX_COUNT} digits, got {len(value)}")
    for position, character in enumerate(value, start=1):
        if character not in "0123456789":  # not str.isdigit(): it takes other scripts' digits and superscripts
            raise BadRequest(f"'digits' may hold only the characters 0-9, got {character!r} at position {position}")
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


def parse_request(row: dict, content_type: Optional[str], accept: Optional[str], num_classes: int) -> GenerationRequest:
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
    return replace(_generation_request(body, num_classes), answer_type=answer_type(accept))


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


def encode_answer(images: np.ndarray, media_type: str) -> bytes:
    """The 200 answer's body: count (x digits) x 28 x 28 images (already rounded to DECIMALS) as `media_type`."""
    if media_type == PNG_TYPE:
        return png_grid(images)
    return orjson.dumps({"images": images}, option=orjson.OPT_SERIALIZE_NUMPY)


def _generation_request(body: dict, num_classes: int) -> GenerationRequest:
    """The fields' checks, shared by the plain JSON body and the v2 input tensors."""
    allowed = ("count", "seed", "digit", "digits") if num_classes else ("count", "seed")
    unknown = [name for name in body if name not in allowed]
    if unknown:
        hint = " (this model is unconditional)" if {"digit", "digits"} & set(unknown) else ""
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}{hint}; allowed: {', '.join(allowed)}")
    count = _integer(body, "count", 1, MAX_COUNT, default=1)
    seed = _integer(body, "seed", 0, MAX_SEED, default=None)
    digit = _integer(body, "digit", 0, num_classes - 1, default=None) if num_classes else None
    digits = _digits(body) if num_classes else None
    if digits is not None:
        if digit is not None:
            raise BadRequest("give 'digit' (every image that digit) or 'digits' (a number each hand writes), not both")
        if count * len(digits) > MAX_COUNT:
            raise BadRequest(f"'count' x the length of 'digits' must be at most {MAX_COUNT} images, got {count} hands x "
                             f"{len(digits)} digits = {count * len(digits)}")
    return GenerationRequest(count=count, seed=secrets.randbits(63) if seed is None else seed, digit=digit,
                             digits=digits)


def error_body(message: str, code: int = 400) -> bytes:
    return orjson.dumps({"error": message, "code": code})




# --- Open Inference Protocol (KServe v2) through TorchServe's kservev2 envelope -------------------
# The envelope (ts/torch_handler/request_envelope/kservev2.py) parses the body itself and hands the
# handler the *input tensors of one request* as rows: [{"name", "datatype", "shape", "data"}, ...],
# with `data` already reshaped to `shape`. It only reads the batch's first request: batchSize stays 1.
V2_OUTPUT = "images"
V2_STRING_INPUT = "digits"  # the one BYTES input; the others are integers
V2_INTEGER_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")


def is_v2_inputs(rows: list) -> bool:
    """True for the envelope's rows (input tensors, or [BadRequest] for an unreadable request); a plain
    request's row is {"body": ...}."""
    if rows and isinstance(rows[0], BadRequest):
        return True
    return bool(rows) and all(isinstance(row, dict) and "datatype" in row and "body" not in row for row in rows)


def parse_v2_request(inputs: list[dict], num_classes: int) -> GenerationRequest:
    """Validates one v2 request's input tensors (each a scalar field, shape [1]: INT64, or BYTES for `digits`)."""
    if inputs and isinstance(inputs[0], BadRequest):
        raise inputs[0]  # the envelope could not read the request
    body = {}
    for tensor in inputs:
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("every input needs a 'name': count, seed, digit or digits")
        if name in body:
            raise BadRequest(f"input {name!r} is given twice")
        datatype, data = tensor.get("datatype"), tensor.get("data")
        if name == V2_STRING_INPUT:  # the envelope has already taken a BYTES tensor's one element out of its list
            if datatype != "BYTES":
                raise BadRequest(f"input {name!r} must have datatype BYTES (a string such as \"02139\"), got {datatype!r}")
            if tensor.get("shape") != [1]:
                raise BadRequest(f"input {name!r} must hold one string (shape [1]), got shape {tensor.get('shape')!r}")
            body[name] = data
            continue
        if datatype not in V2_INTEGER_TYPES:
            raise BadRequest(f"input {name!r} must have datatype INT64, got {datatype!r}")
        if tensor.get("shape") != [1] or not isinstance(data, list) or len(data) != 1:
            raise BadRequest(f"input {name!r} must hold one value (shape [1]), got shape {tensor.get('shape')!r}")
        body[name] = data[0]
    return _generation_request(body, num_classes)


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
