"""Request cases shared by the in-process handler tests and the real-server tests.

Each bad case: (id, raw body bytes, Content-Type header or None, text the 400 message must contain).
"""
import json

JSON = "application/json"

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
    ("digit-ten", b'{"digit": 10}', JSON, "'digit' must be an integer from 0 to 9, got 10"),
    ("digit-negative", b'{"digit": -1}', JSON, "'digit'"),
    ("digit-string", b'{"digit": "3"}', JSON, "got str"),
    ("unknown-field", b'{"cuont": 2}', JSON, "unknown field(s) 'cuont'"),
    ("unknown-and-good", b'{"count": 2, "size": 28}', JSON, "'size'"),
    ("nested-object", b'{"count": {"value": 2}}', JSON, "got dict"),
    ("deeply-nested", b'{"count": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, "not valid JSON"),
    ("deeply-nested-unclosed", b"[" * 20000, JSON, "not valid JSON"),
    ("invalid-utf8", b'{"count": "\xff\xfe"}', JSON, "UTF-8"),
    ("text-plain", b'{"count": 2}', "text/plain", "Content-Type must be application/json"),
    ("no-content-type", b'{"count": 2}', None, "Content-Type must be application/json"),
    ("octet-stream", b'{"count": 2}', "application/octet-stream", "Content-Type must be application/json"),
    ("xml", b"<count>2</count>", "application/xml", "Content-Type must be application/json"),
]

GOOD_REQUESTS = [
    ({}, 1),
    ({"count": 1}, 1),
    ({"count": 3, "seed": 0}, 3),
    ({"count": 2, "seed": 2**63 - 1}, 2),
    ({"count": 256}, 256),
]


def worker_decode(raw: bytes, content_type: str | None):
    """What TorchServe 0.12's Python worker hands the handler (ts/protocol/otf_message_handler.py)."""
    if content_type == "application/json":
        try:
            return json.loads(raw.decode("utf-8"))
        except Exception:
            return bytearray(raw)
    if content_type and content_type.startswith("text"):
        try:
            return raw.decode("utf-8")
        except Exception:
            return bytearray(raw)
    return bytearray(raw)
