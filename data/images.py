"""Encoded image helpers: sniff the format from the bytes, and spot all-zero (missing) cameras cheaply."""

from __future__ import annotations

import io

from PIL import Image

MIME = {"jpeg": "image/jpeg", "png": "image/png"}


def sniff_image(data: bytes) -> str:
    """Encoding from the magic bytes: TFDS specs do not always say (Open-X bridge stores PNG silently)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"\x89PNG":
        return "png"
    return "unknown"


def is_blank(data: bytes, threshold: int = 8) -> bool:
    """True for an (almost) all-black frame: how RLDS datasets fill cameras that were not recorded."""
    im = Image.open(io.BytesIO(data))
    im.draft("L", (32, 32))  # JPEG: decode at 1/8 scale, enough to tell black from content
    return max(im.convert("L").getextrema()) < threshold
