"""Example images as PNG data URLs (Pillow): the grey levels survive the round trip."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from hrtem_ray.report.images import image_url


def _decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_image_url_is_an_8_bit_greyscale_png_of_the_scaled_array():
    image = np.arange(12.0).reshape(3, 4)
    png = _decoded(image_url(image, robust=False))
    assert png.format == "PNG" and png.mode == "L" and png.size == (4, 3)
    expected = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(png), expected)
    robust = np.asarray(_decoded(image_url(np.random.default_rng(0).normal(size=(20, 30)))))
    assert robust.shape == (20, 30) and robust.min() == 0 and robust.max() == 255
