"""The panel of example images: a few validation images and masks per domain, as PNGs in a chart."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import altair as alt
import numpy as np
from PIL import Image

from hrtem_ray.analysis import domain_order
from hrtem_ray.report.vega import axis_title

PANEL = 96


def image_url(image: np.ndarray, robust: bool = True) -> str:
    """A greyscale ``data:`` PNG URL of a 2-D array (:func:`grey_levels`, :func:`png_url`)."""
    return png_url(grey_levels(image, robust))


def grey_levels(image: np.ndarray, robust: bool = True) -> np.ndarray:
    """Grey levels 0-255 (float) of a 2-D array.

    Parameters
    ----------
    image
        2-D array.
    robust
        Scale the 1st-99th percentile range to black-white (images); otherwise
        0-1 (masks, probabilities).
    """
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, (1, 99)) if robust else (0.0, 1.0)
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1) * 255


def png_url(grey: np.ndarray) -> str:
    """A ``data:`` URL of the 8-bit greyscale PNG of 0-255 grey levels (:func:`png_bytes`)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(grey)).decode()


def png_bytes(grey: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D array of grey levels 0-255 (rounded), by Pillow."""
    pixels = np.round(np.asarray(grey, dtype=np.float64)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def examples_chart(
    examples: Mapping[str, tuple[np.ndarray, np.ndarray]], study: str = "defocus"
) -> alt.Chart:
    """Panel of example images (top of each pair) and their masks, one column per domain.

    Parameters
    ----------
    examples
        ``domain -> (images, masks)``, each an ``(n, H, W)`` array.
    study
        Study name, for the column title.
    """
    rows = []
    row_order: list[str] = []
    for domain, (images, masks) in examples.items():
        for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
            for label, url in (
                (f"image {k + 1}", image_url(image)),
                (f"mask {k + 1}", image_url(mask, robust=False)),
            ):
                rows.append({"domain": domain, "row": label, "url": url})
                row_order += [label] if label not in row_order else []
    order = domain_order(examples)
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_image(width=PANEL, height=PANEL)
        .encode(
            x=alt.X("domain:O", sort=order, title=axis_title(study), axis=alt.Axis(orient="top", labelAngle=0)),
            y=alt.Y("row:O", sort=row_order, title=None),
            url="url:N",
        )
        .properties(width=alt.Step(PANEL + 8), height=alt.Step(PANEL + 8))
    )  # fmt: skip
    return chart.properties(
        title=alt.Title(
            "Example validation images and masks",
            subtitle="images scaled 1-99 percentile; masks 0 (black) to 1 (white)",
            anchor="start",
        )
    )
