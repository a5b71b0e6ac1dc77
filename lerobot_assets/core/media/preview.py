"""Small previews for the Dagster UI: thumbnail strips and telemetry plots embedded in Markdown metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from lerobot_assets.core.media.codec import decode_rgb, encode_image

THUMBNAIL_WIDTH = 160


def thumbnail(encoded: bytes, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A JPEG thumbnail ``width`` pixels wide of an encoded image (a JPEG is decoded at reduced scale)."""
    image = Image.fromarray(decode_rgb(encoded, min_width=width))
    height = max(1, round(image.height * width / image.width))
    if image.size != (width, height):
        image = image.resize((width, height))
    return encode_image(image, "jpeg", 80)


def thumbnails_markdown(frames: Mapping[str, list[bytes]], count: int = 1) -> str:
    """Markdown with ``count`` evenly spaced thumbnails per camera, as inline data URIs."""
    lines = []
    for camera, images in frames.items():
        if not images:
            continue
        step = max(1, len(images) // count)
        picked = images[::step][:count]
        tags = " ".join(
            f"![{camera} frame {i * step}](data:image/jpeg;base64,{base64.b64encode(thumbnail(b)).decode()})"
            for i, b in enumerate(picked)
        )
        lines.append(f"**{camera}**\n\n{tags}\n")
    return "\n".join(lines)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_series(series: Mapping[str, np.ndarray], width: int = 480, height: int = 140) -> bytes:
    """A PNG with one small line plot per named series (rows x dims), stacked vertically.

    Drawn with Pillow rather than a plotting library: a glance at state and action over an episode
    is all the UI needs, and it keeps the core dependencies small.
    """
    panels = [(name, np.asarray(values, dtype=np.float64)) for name, values in series.items() if len(values)]
    image = Image.new("RGB", (width, max(1, height * len(panels))), "white")
    draw = ImageDraw.Draw(image)
    for panel, (name, values) in enumerate(panels):
        values = values.reshape(len(values), -1)
        top, margin = panel * height, 18
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = high - low or 1.0
        draw.rectangle([0, top, width - 1, top + height - 1], outline=(200, 200, 200))
        draw.text((4, top + 2), f"{name}  [{low:.3g}, {high:.3g}]", fill=(0, 0, 0))
        xs = np.linspace(4, width - 5, num=len(values))
        for dim in range(values.shape[1]):
            ys = top + height - 4 - (values[:, dim] - low) / span * (height - margin - 8)
            points = [(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
            if len(points) > 1:
                draw.line(points, fill=_COLOURS[dim % len(_COLOURS)], width=1)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing a PNG inline."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
