"""Small real media files for tests."""

from __future__ import annotations

import io
import random
import struct
import zlib

import av
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


def webp(width: int = 32, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 30, 200)).save(buf, format="WEBP")
    return buf.getvalue()


def gif(width: int = 40, height: int = 30, frames: int = 3) -> bytes:
    """An animated GIF."""
    images = [Image.new("P", (width, height), i * 40) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100)
    return buf.getvalue()


def avif(width: int = 32, height: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 10, 160)).save(buf, format="AVIF")
    return buf.getvalue()


def heic(width: int = 64, height: int = 64) -> bytes:
    """A real HEIC image (libheif through pillow-heif)."""
    import pillow_heif

    heif = pillow_heif.from_pillow(Image.new("RGB", (width, height), (160, 90, 10)))
    buf = io.BytesIO()
    heif.save(buf, quality=50)
    return buf.getvalue()


def video(container: str = "mp4", *, codec: str = "libx264", width: int = 64,
          height: int = 48, fps: int = 10, frames: int = 20) -> bytes:
    """A real video encoded with PyAV: mp4 (H.264), mov (QuickTime), webm (VP9)..."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n in range(frames):
            image = Image.new("RGB", (width, height), (n * 10 % 256, 100, 50))
            for packet in stream.encode(av.VideoFrame.from_image(image)):  # type: ignore[no-untyped-call]
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def mp4(width: int = 64, height: int = 48, fps: int = 10, frames: int = 25) -> bytes:
    """A real H.264 MP4 (frames / fps seconds long)."""
    return video("mp4", width=width, height=height, fps=fps, frames=frames)


def quicktime() -> bytes:
    return video("mov")


def webm() -> bytes:
    return video("webm", codec="libvpx-vp9")


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG of one colour, ``width`` x ``height`` pixels, a few hundred KB at most:
    written by hand (zlib, one row repeated), never held decoded in memory."""
    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))
