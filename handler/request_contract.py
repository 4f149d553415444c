"""The served API: what a request may contain, its limits, and the errors it gets.

Request body (Content-Type: application/json), every field optional:
    {"count": 1..256, "seed": 0..2**63-1, "digit": 0..9}
Response: {"images": [count x 28 x 28 floats in [0, 1], rounded to 4 decimals]}
Anything else answers 400 with {"error": "...", "code": 400}, per request: a bad request
never fails the good ones TorchServe batched with it.
"""
import secrets
from dataclasses import dataclass
from typing import Any, Optional

import orjson

MAX_COUNT = 256
MAX_SEED = 2**63 - 1
DECIMALS = 4  # 1e-4 steps are finer than MNIST's 8-bit pixels and halve the JSON
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class GenerationRequest:
    count: int
    seed: int
    digit: Optional[int]


class BadRequest(ValueError):
    """A client error: its message goes back to the client with a 400."""


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


def _decode_body(value: Any, content_type: Optional[str]) -> Any:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise BadRequest(
            f"Content-Type must be application/json, got {content_type or 'none'}; "
            "send a JSON object such as {\"count\": 4}"
        )
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


def parse_request(row: dict, content_type: Optional[str], num_classes: int) -> GenerationRequest:
    """Validates one request's TorchServe input row; raises BadRequest saying what is wrong."""
    extra = sorted(set(row) - {"body"})
    if extra:  # query-string parameters arrive as extra rows
        raise BadRequest(f"unexpected request parameter(s): {', '.join(map(repr, extra))}; put fields in the JSON body")
    if "body" not in row:
        raise BadRequest("the request has no body: send a JSON object such as {\"count\": 4}")
    body = _decode_body(row["body"], content_type)
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__ if body is not None else 'null'}")
    allowed = ("count", "seed", "digit") if num_classes else ("count", "seed")
    unknown = [name for name in body if name not in allowed]
    if unknown:
        hint = " (this model is unconditional)" if "digit" in unknown else ""
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}{hint}; allowed: {', '.join(allowed)}")
    count = _integer(body, "count", 1, MAX_COUNT, default=1)
    seed = _integer(body, "seed", 0, MAX_SEED, default=None)
    digit = _integer(body, "digit", 0, num_classes - 1, default=None) if num_classes else None
    return GenerationRequest(count=count, seed=secrets.randbits(63) if seed is None else seed, digit=digit)


def error_body(message: str, code: int = 400) -> bytes:
    return orjson.dumps({"error": message, "code": code})


