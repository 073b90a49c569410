"""What a file really is: MIME by magic bytes, image size, MP4 duration."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from shared.types import AssetType

# Enough leading bytes to recognise every allowed type.
SNIFF_BYTES = 12


@dataclass(frozen=True)
class MediaType:
    """An allowed output type."""

    mime: str
    ext: str
    kind: AssetType


PNG = MediaType("image/png", "png", AssetType.IMAGE)
JPEG = MediaType("image/jpeg", "jpg", AssetType.IMAGE)
WEBP = MediaType("image/webp", "webp", AssetType.IMAGE)
MP4 = MediaType("video/mp4", "mp4", AssetType.VIDEO)
ALLOWED = (PNG, JPEG, WEBP, MP4)


def sniff(head: bytes) -> MediaType | None:
    """The allowed type these leading bytes belong to, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return MP4
    return None


def image_size(source: Path | bytes) -> tuple[int, int] | None:
    """Width and height from the image header (of a file, or of bytes in memory); None if
    Pillow cannot read it."""
    try:
        with warnings.catch_warnings():
            # A huge canvas is still a valid output: we only read the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            with opened as image:
                return int(image.width), int(image.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _boxes(f: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload offset, payload end) of each ISO-BMFF box in [start, end)."""
    found = []
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            break
        size, kind = struct.unpack(">I4s", header)
        payload = pos + 8
        if size == 1:
            large = f.read(8)
            if len(large) < 8:
                break
            size = struct.unpack(">Q", large)[0]
            payload = pos + 16
        elif size == 0:
            size = end - pos
        if size < payload - pos:
            break
        found.append((kind, payload, min(pos + size, end)))
        pos += size
    return found


def mp4_duration(source: Path | bytes) -> float | None:
    """Seconds from the ``moov/mvhd`` box of a file or of bytes in memory (best effort; None
    if absent or odd)."""
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
        with opened as f:
            end = f.seek(0, 2)
            for kind, start, stop in _boxes(f, 0, end):
                if kind != b"moov":
                    continue
                for inner, pstart, _ in _boxes(f, start, stop):
                    if inner != b"mvhd":
                        continue
                    f.seek(pstart)
                    version = f.read(4)[0]
                    if version == 1:
                        timescale, duration = struct.unpack(">16xIQ", f.read(28))
                    else:
                        timescale, duration = struct.unpack(">8xII", f.read(16))
                    return duration / timescale if timescale else None
    except (OSError, struct.error, IndexError):
        return None
    return None
