"""What a file really is: its type from magic bytes, an image's size from its header, a
video's size, duration and frame rate from its container (PyAV), with limits that refuse
decompression bombs before anything is decoded."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import av.error
from PIL import Image

from shared.types import AssetType

# Enough leading bytes to recognise every known type: an ISO-BMFF ``ftyp`` box with its
# compatible brands, or a Matroska EBML header with its DocType.
SNIFF_BYTES = 64


@dataclass(frozen=True)
class MediaType:
    """A recognised file type."""

    mime: str
    ext: str
    kind: AssetType


PNG = MediaType("image/png", "png", AssetType.IMAGE)
JPEG = MediaType("image/jpeg", "jpg", AssetType.IMAGE)
WEBP = MediaType("image/webp", "webp", AssetType.IMAGE)
GIF = MediaType("image/gif", "gif", AssetType.IMAGE)
AVIF = MediaType("image/avif", "avif", AssetType.IMAGE)
HEIC = MediaType("image/heic", "heic", AssetType.IMAGE)
HEIF = MediaType("image/heif", "heif", AssetType.IMAGE)
MP4 = MediaType("video/mp4", "mp4", AssetType.VIDEO)
WEBM = MediaType("video/webm", "webm", AssetType.VIDEO)
QUICKTIME = MediaType("video/quicktime", "mov", AssetType.VIDEO)
MATROSKA = MediaType("video/x-matroska", "mkv", AssetType.VIDEO)
KNOWN = (PNG, JPEG, WEBP, GIF, AVIF, HEIC, HEIF, MP4, WEBM, QUICKTIME, MATROSKA)
BY_MIME = {t.mime: t for t in KNOWN}
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_MP4_BRANDS = frozenset({
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9",
    b"mp41", b"mp42", b"avc1", b"dash", b"mmp4", b"M4V ", b"M4VH", b"M4VP", b"f4v ",
})
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE = b"\x42\x82"


def _ftyp_brands(head: bytes) -> tuple[bytes, set[bytes]] | None:
    """The major brand and every brand listed in a leading ``ftyp`` box (as far as ``head``
    reaches), or None if ``head`` does not start with one."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    end = min(size if size >= 16 else len(head), len(head))
    major = head[8:12]
    brands = {major}
    # major brand, minor version (4 bytes), then compatible brands, 4 bytes each.
    for pos in range(16, end - 3, 4):
        brands.add(head[pos:pos + 4])
    return major, brands


def _sniff_ftyp(head: bytes) -> MediaType | None:
    found = _ftyp_brands(head)
    if found is None:
        return None
    major, brands = found
    # Image brands first: an AVIF or HEIC file also lists generic ISO brands.
    if major in _AVIF_BRANDS or (brands & _AVIF_BRANDS and major not in _MP4_BRANDS):
        return AVIF
    if major in _HEIC_BRANDS or (brands & _HEIC_BRANDS and major not in _MP4_BRANDS):
        return HEIC
    if major in _HEIF_BRANDS:
        return HEIF
    if major == b"qt  ":
        return QUICKTIME
    if major in _MP4_BRANDS or brands & _MP4_BRANDS:
        return MP4
    return None


def _sniff_ebml(head: bytes) -> MediaType | None:
    """WebM or Matroska by the EBML header's DocType."""
    if not head.startswith(_EBML_MAGIC):
        return None
    at = head.find(_EBML_DOCTYPE, 4)
    if at < 0 or at + 3 > len(head):
        return None
    size_byte = head[at + 2]
    if not size_byte & 0x80:  # only the one-byte size form is used for a short DocType
        return None
    doctype = head[at + 3:at + 3 + (size_byte & 0x7F)]
    if doctype == b"webm":
        return WEBM
    if doctype == b"matroska":
        return MATROSKA
    return None


def sniff(head: bytes) -> MediaType | None:
    """The known type these leading bytes (up to :data:`SNIFF_BYTES`) belong to, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    return _sniff_ftyp(head) or _sniff_ebml(head)


class MediaRefused(ValueError):
    """A file that cannot be accepted: unreadable, or past a size limit."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Decompression-bomb limits: pixels of an image or a video frame, and video length."""

    max_pixels: int
    max_duration_s: float


def _open_image(source: Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def image_size(source: Path | bytes) -> tuple[int, int] | None:
    """Width and height from the image header (of a file, or of bytes in memory); None if
    Pillow cannot read it. Nothing is decoded."""
    try:
        with warnings.catch_warnings():
            # A huge canvas is refused by check_image, not here: we only read the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(source) as image:
                return int(image.width), int(image.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def check_image(source: Path | bytes, limits: Limits) -> tuple[int, int]:
    """Width and height from the header, refused if unreadable or past ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(source) as image:
                dims: tuple[int, int] | None = (int(image.width), int(image.height))
    except Image.DecompressionBombError as exc:
        # Past twice Pillow's own limit: refused by Pillow's header check already.
        raise MediaRefused(f"it has more than the {limits.max_pixels} pixel limit",
                           code="output_too_large") from exc
    except (OSError, ValueError):
        dims = None
    if dims is None:
        raise MediaRefused("it is not a readable image", code="unsupported_output_type")
    width, height = dims
    if width * height > limits.max_pixels:
        raise MediaRefused(
            f"it is {width}x{height} pixels, more than the {limits.max_pixels} pixel limit",
            code="output_too_large",
        )
    return width, height


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream."""

    width: int
    height: int
    duration_s: float | None
    fps: float | None


Source = Path | bytes | BinaryIO


def _open_container(source: Source) -> av.container.InputContainer:
    if isinstance(source, bytes):
        return av.open(io.BytesIO(source), "r")
    return av.open(str(source) if isinstance(source, Path) else source, "r")


def _video_info(container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise MediaRefused("it has no video stream", code="unsupported_output_type")
    stream = container.streams.video[0]
    width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if isinstance(rate, Fraction) and rate > 0 else None
    return VideoInfo(width, height, duration, fps)


def check_video(source: Source, limits: Limits) -> VideoInfo:
    """Size, duration and frame rate from the container's metadata (nothing decoded), refused
    if unreadable or past the limits."""
    try:
        with _open_container(source) as container:
            info = _video_info(container)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, MediaRefused):
            raise
        raise MediaRefused("it is not a readable video", code="unsupported_output_type") from exc
    if info.width <= 0 or info.height <= 0:
        raise MediaRefused("its video stream has no size", code="unsupported_output_type")
    if info.width * info.height > limits.max_pixels:
        raise MediaRefused(
            f"its frames are {info.width}x{info.height} pixels, more than the "
            f"{limits.max_pixels} pixel limit", code="output_too_large",
        )
    if info.duration_s is not None and info.duration_s > limits.max_duration_s:
        raise MediaRefused(
            f"it lasts {info.duration_s:.1f} s, more than the {limits.max_duration_s:g} s limit",
            code="output_too_large",
        )
    return info


def first_frame(source: Source, max_packets: int = 500) -> Image.Image:
    """The first decodable frame of a video as a Pillow image; decoding stops there (and after
    ``max_packets`` packets at most, for a stream that never yields a frame)."""
    with _open_container(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for n, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
                return image
            if n >= max_packets:
                break
    raise MediaRefused("no frame could be decoded", code="unsupported_output_type")
