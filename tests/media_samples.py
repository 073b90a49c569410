"""Small real media files for tests."""

from __future__ import annotations

import io
import random
import struct

from PIL import Image


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(width: int, height: int, seed: int = 1) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(
        buf, format="PNG")
    return buf.getvalue()


def jpeg(width: int = 32, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4(duration_s: float = 2.5, timescale: int = 1000, *, version: int = 0) -> bytes:
    """ftyp + mdat + moov/mvhd (moov last, as many encoders write it)."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    mdat = _box(b"mdat", b"\x00" * 64)
    duration = int(duration_s * timescale)
    if version == 1:
        body = struct.pack(">B3xQQIQ", 1, 0, 0, timescale, duration)
    else:
        body = struct.pack(">B3xIIII", 0, 0, 0, timescale, duration)
    mvhd = _box(b"mvhd", body + b"\x00" * 80)
    return ftyp + mdat + _box(b"moov", mvhd)
