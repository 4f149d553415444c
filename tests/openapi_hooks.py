"""Schemathesis hooks for the API's document (SCHEMATHESIS_HOOKS=openapi_hooks): the document's base64 strings
(`format: byte`) are a hand's PNG, so its positive examples are real PNGs of a drawn stroke, not random base64."""
import base64
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _png(thickness: int, shear: float, side: int, dark_on_light: bool) -> str:
    ink = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        left = round(13 + shear * (14 - row))
        ink[row, left:left + thickness] = 1.0
    pixels = np.kron(ink, np.ones((side // 28, side // 28)))
    pixels = np.rint(255 * (1 - pixels if dark_on_light else pixels)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


schemathesis.openapi.format("byte", st.builds(_png, st.integers(1, 5), st.floats(-0.4, 0.4), st.sampled_from([28, 56, 280]),
                                              st.booleans()))
