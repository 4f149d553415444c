"""Schemathesis hooks for the API's document (SCHEMATHESIS_HOOKS=openapi_hooks): its `base64-image` strings are what
people upload to the hand route: photos of one digit or of a number, as PNG or JPEG, plain base64, with line breaks
or as data: URLs, and broken ones too (cut short, cut inside the PNG's header, a JPEG's garbage). JSON Schema cannot
say that a string is a readable picture, so the hand route may refuse what the document allows with a 400
(tests/schemathesis.toml); never with a 5xx."""
import base64
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _ink(thickness: int, shear: float) -> np.ndarray:
    ink = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        left = round(13 + shear * (14 - row))
        ink[row, left:left + thickness] = 1.0
    return ink


def _picture(digits: int, thickness: int, shear: float, side: int, dark_on_light: bool, kind: str) -> bytes:
    ink = np.concatenate([_ink(thickness, shear)] * digits, axis=1)
    pixels = np.kron(ink, np.ones((side // 28, side // 28)))
    pixels = np.rint(255 * (1 - pixels if dark_on_light else pixels)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def _encoded(data: bytes, form: str, kind: str) -> str:
    text = base64.b64encode(data).decode()
    if form == "lines":  # as `base64` writes it by default: 76 characters a line
        return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    if form == "data-url":
        return f"data:image/{kind.lower()};base64,{text}"
    return text


def _broken(data: bytes, how: str) -> bytes:
    if how == "cut-short":
        return data[:len(data) // 2]
    if how == "cut-in-the-header":
        return data[:16]
    return data[:4] + bytes(len(data) - 4)  # the signature, then nothing that decodes


pictures = st.builds(_picture, st.integers(1, 3), st.integers(1, 5), st.floats(-0.4, 0.4), st.sampled_from([28, 56, 280]),
                     st.booleans(), st.sampled_from(["PNG", "JPEG"]))
uploads = st.builds(lambda data, form: _encoded(data, form, "png" if data.startswith(b"\x89PNG") else "jpeg"),
                    st.one_of(pictures, st.builds(_broken, pictures, st.sampled_from(["cut-short", "cut-in-the-header",
                                                                                        "garbage"]))),
                    st.sampled_from(["plain", "lines", "data-url"]))
schemathesis.openapi.format("base64-image", uploads)
