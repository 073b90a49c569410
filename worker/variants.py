"""Variants of a staged output: ``thumb`` (256 px, WebP) and ``web`` (1024 px, WebP, only when
the image is larger) for images; ``poster`` (the first frame, WebP, at most 1024 px) for videos.

Everything here blocks (decoding, resizing, encoding): the worker runs it in a thread
pool, off the event loop. The source's size was checked against the pixel limit when it was
staged, from its header; it is checked again here before decoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from shared.types import AssetType
from worker import media

THUMB_SIDE = 256
WEB_SIDE = 1024
POSTER_SIDE = 1024
WEBP_QUALITY = 80
# Measured on 1024 px PNGs: method 2 encodes a thumb in about half the time of 3-4 for a file
# about 7 % larger; a reducing gap of 2 lets Pillow halve the image with reduce() before the
# Lanczos pass (a gap of 3 does not reduce a 1024 px image at all for 256 px: 2-3x slower).
WEBP_METHOD = 2
REDUCING_GAP = 2.0
VARIANT_MIME = "image/webp"
KINDS = ("thumb", "web", "poster")


@dataclass(frozen=True)
class Variant:
    """One stored variant file of an asset."""

    kind: str  # thumb | web | poster
    mime: str
    width: int
    height: int
    size: int
    key: str

    def row(self) -> dict[str, object]:
        """As genq_finalize's ``variants`` item."""
        return {"kind": self.kind, "mime_type": self.mime, "width": self.width,
                "height": self.height, "file_size_bytes": self.size, "storage_key": self.key}


def variant_key(asset_key: str, kind: str) -> str:
    """``<user>/<job>/<index>.<kind>.webp`` beside the asset's ``<user>/<job>/<index>.<ext>``."""
    stem = asset_key.rsplit(".", 1)[0]
    return f"{stem}.{kind}.webp"


def _fit(image: Image.Image, side: int) -> Image.Image:
    """A copy that fits in ``side`` x ``side`` (never enlarged)."""
    out = image.copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return out


def _webp(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buffer.getvalue()


def _decoded(image: Image.Image) -> Image.Image:
    """The first frame as RGB, or RGBA if it has transparency."""
    if image.format == "JPEG":
        # Let libjpeg scale down while decoding (1/2, 1/4, 1/8): far less memory and time.
        image.draft("RGB", (WEB_SIDE, WEB_SIDE))
    alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if alpha else "RGB")


def image_variants(source: BinaryIO, limits: media.Limits) -> list[tuple[str, Image.Image]]:
    """``web`` (only if larger than 1024 px) and ``thumb`` of an image."""
    with Image.open(source) as opened:
        if opened.width * opened.height > limits.max_pixels:
            raise media.MediaRefused("image past the pixel limit", code="output_too_large")
        large = max(opened.width, opened.height) > WEB_SIDE
        frame = _decoded(opened)
    out: list[tuple[str, Image.Image]] = []
    base = frame
    if large:
        base = _fit(frame, WEB_SIDE)
        out.append(("web", base))
    out.append(("thumb", _fit(base, THUMB_SIDE)))
    return out


def video_variants(source: BinaryIO) -> list[tuple[str, Image.Image]]:
    """``poster``: the first frame, at most 1024 px."""
    return [("poster", _fit(media.first_frame(source).convert("RGB"), POSTER_SIDE))]


def make_variants(
    source: Path, asset_key: str, kind: media.MediaType, limits: media.Limits
) -> list[tuple[Variant, bytes]]:
    """Every variant of the asset stored under ``asset_key``, read from the local file
    ``source``, with its encoded bytes (blocking: decoding, resizing and encoding only; the
    caller stores them)."""
    with source.open("rb") as handle:
        planned = (image_variants(handle, limits) if kind.kind == AssetType.IMAGE
                   else video_variants(handle))
    made = []
    for name, image in planned:
        encoded = _webp(image)
        key = variant_key(asset_key, name)
        made.append((Variant(name, VARIANT_MIME, image.width, image.height, len(encoded), key),
                     encoded))
    return made
