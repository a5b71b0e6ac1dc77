"""Small previews for the Dagster UI: thumbnails embedded in Markdown metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

from PIL import Image

THUMBNAIL_WIDTH = 160


def thumbnail(encoded: bytes, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A JPEG thumbnail ``width`` pixels wide of an encoded image."""
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    height = max(1, round(image.height * width / image.width))
    out = io.BytesIO()
    image.resize((width, height)).save(out, format="JPEG", quality=80)
    return out.getvalue()


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
