from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.errors import AddressBlocked
from shared.netguard import is_public, resolve_checked
from shared.retry import backoff_delay, parse_retry_after
from shared.settings import load_settings
from shared.storage import LocalStorage
from tests.media_samples import avif, gif, heic, jpeg, mp4, png, quicktime, webm, webp
from worker import media
from worker.providers.base import BytesOutput
from worker.providers.replicate import api_base_url
from worker.staging import OutputRejected, StagedAsset, Stager


@pytest.mark.parametrize(
    ("make", "mime"),
    [(png, "image/png"), (jpeg, "image/jpeg"), (webp, "image/webp"), (gif, "image/gif"),
     (avif, "image/avif"), (heic, "image/heic"), (mp4, "video/mp4"),
     (quicktime, "video/quicktime"), (webm, "video/webm")],
)
def test_sniff_tells_real_files_apart(make: Callable[[], bytes], mime: str) -> None:
    kind = media.sniff(make()[: media.SNIFF_BYTES])
    assert kind is not None and kind.mime == mime


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7 ...", b"<html><body>", b"GIF90a......", b"", b"\x89P",
     # an ftyp box with no brand genq knows (3GPP), and a Matroska header with no DocType
     b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x00",
     b"\x1a\x45\xdf\xa3\x80\x00\x00\x00"],
)
def test_sniff_refuses_everything_else(data: bytes) -> None:
    assert media.sniff(data) is None


def test_an_avif_that_lists_iso_brands_is_still_avif() -> None:
    head = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf"
    assert media.sniff(head) == media.AVIF


LIMITS = media.Limits(max_pixels=50_000_000, max_duration_s=600)


@pytest.mark.parametrize(("make", "duration"), [(mp4, 2.5), (quicktime, 2.0), (webm, 2.0)])
def test_video_size_duration_and_fps(tmp_path: Path, make: Callable[[], bytes],
                                     duration: float) -> None:
    data = make()
    path = tmp_path / "v"
    path.write_bytes(data)
    for source in (data, path):
        info = media.check_video(source, LIMITS)
        assert (info.width, info.height) == (64, 48)
        assert info.fps == pytest.approx(10.0)
        assert info.duration_s == pytest.approx(duration, abs=0.15)


def test_video_limits_refuse_before_decoding() -> None:
    with pytest.raises(media.MediaRefused) as long:
        media.check_video(mp4(), media.Limits(max_pixels=10**8, max_duration_s=1.0))
    assert long.value.code == "output_too_large"
    with pytest.raises(media.MediaRefused) as wide:
        media.check_video(mp4(), media.Limits(max_pixels=64 * 47, max_duration_s=600))
    assert wide.value.code == "output_too_large"
    with pytest.raises(media.MediaRefused) as broken:
        media.check_video(mp4()[:200], LIMITS)
    assert broken.value.code == "unsupported_output_type"


def test_image_size(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(png(7, 5))
    assert media.image_size(path) == (7, 5)
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert media.image_size(path) is None


def test_bytes_in_memory_measure_like_files() -> None:
    assert media.image_size(png(7, 5)) == (7, 5)
    assert media.image_size(jpeg()) == media.image_size(jpeg())
    assert media.image_size(avif(32, 24)) == (32, 24)
    assert media.image_size(b"\x89PNG\r\n\x1a\n garbage") is None


def test_image_pixel_limit_from_the_header() -> None:
    assert media.check_image(png(7, 5), media.Limits(35, 1)) == (7, 5)
    with pytest.raises(media.MediaRefused) as refused:
        media.check_image(png(7, 5), media.Limits(34, 1))
    assert refused.value.code == "output_too_large"


async def test_an_unreadable_image_in_memory_is_refused_and_never_written(
    tmp_path: Path,
) -> None:
    settings = load_settings(data_dir=tmp_path, _env_file=None)
    storage = LocalStorage(tmp_path / "assets")
    async with httpx.AsyncClient() as http:
        stager = Stager(settings, storage, http)
        user, job = uuid.uuid4(), uuid.uuid4()
        with pytest.raises(OutputRejected) as refused:
            await stager.stage(user, job, 0, BytesOutput(b"\x89PNG\r\n\x1a\n garbage"))
        assert refused.value.code == "unsupported_output_type"
        staged = await stager.stage(user, job, 1, BytesOutput(png(3, 2)))
    assert (staged.width, staged.height, staged.media.mime) == (3, 2, "image/png")
    files = sorted(p.relative_to(storage.root).as_posix()
                   for p in storage.root.rglob("*") if p.is_file())
    assert files == [f"{user}/{job}/1.png"]


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
     ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
     ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False),
     ("fd00::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
     ("::ffff:8.8.8.8", True), ("240.0.0.1", False)],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_backoff_grows_capped_with_jitter() -> None:
    delays = [backoff_delay(n, 1.0, 8.0) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        step = min(8.0, 2.0 ** (n - 1))
        assert step / 2 <= d <= step
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("configured", "base"),
    [("https://api.replicate.com/v1", "https://api.replicate.com"),
     ("https://api.replicate.com/v1/", "https://api.replicate.com"),
     ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
     ("http://proxy/pre/v1", "http://proxy/pre")],
)
def test_replicate_base_url(configured: str, base: str) -> None:
    assert api_base_url(configured) == base


async def test_names_that_resolve_to_loopback_are_refused() -> None:
    with pytest.raises(AddressBlocked):
        await resolve_checked("localhost", 80, [])
    with pytest.raises(AddressBlocked):
        await resolve_checked("[::1]", 80, [])
    allowed = await resolve_checked("LOCALHOST.", 80, ["localhost"])
    assert allowed.host == "localhost" and not is_public(allowed.address)


async def test_discard_removes_variant_files_the_staged_asset_does_not_list(
    tmp_path: Path,
) -> None:
    # A cancel can stop a job while its variants are being made: their files are on disk
    # but not yet on the staged asset.
    settings = load_settings(data_dir=tmp_path, _env_file=None)
    storage = LocalStorage(tmp_path / "assets")
    user, job = uuid.uuid4(), uuid.uuid4()
    key = f"{user}/{job}/0.png"
    for name in (key, f"{user}/{job}/0.thumb.webp", f"{user}/{job}/0.web.webp"):
        storage.write_bytes(name, b"x")
    async with httpx.AsyncClient() as http:
        stager = Stager(settings, storage, http)
        await stager.discard([StagedAsset(0, key, 1, media.PNG, 1, 1, None)])
    assert list(storage.root.rglob("*")) == []
