from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import httpx
import pytest

from shared.retry import backoff_delay, parse_retry_after
from shared.settings import load_settings
from shared.storage import LocalStorage
from tests.media_samples import jpeg, mp4, png
from worker import media
from worker.netguard import AddressBlocked, is_public, resolve_checked
from worker.providers.base import BytesOutput
from worker.providers.replicate import api_base_url
from worker.staging import OutputRejected, Stager


@pytest.mark.parametrize(
    ("data", "mime"),
    [(png(), "image/png"), (jpeg(), "image/jpeg"), (mp4(), "video/mp4"),
     (b"RIFF\x00\x00\x00\x00WEBPVP8L", "image/webp")],
)
def test_sniff_allowed_types(data: bytes, mime: str) -> None:
    kind = media.sniff(data[: media.SNIFF_BYTES])
    assert kind is not None and kind.mime == mime


@pytest.mark.parametrize("data", [b"%PDF-1.7 ...", b"<html><body>", b"GIF89a......", b"", b"\x89P"])
def test_sniff_refuses_everything_else(data: bytes) -> None:
    assert media.sniff(data) is None


@pytest.mark.parametrize("version", [0, 1])
def test_mp4_duration_from_mvhd(tmp_path: Path, version: int) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4(2.5, version=version))
    assert media.mp4_duration(path) == pytest.approx(2.5)


def test_mp4_without_moov_has_no_duration(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4()[:40])
    assert media.mp4_duration(path) is None


def test_image_size(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(png(7, 5))
    assert media.image_size(path) == (7, 5)
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert media.image_size(path) is None


def test_bytes_in_memory_measure_like_files() -> None:
    assert media.image_size(png(7, 5)) == (7, 5)
    assert media.image_size(jpeg()) == media.image_size(jpeg())
    assert media.image_size(b"\x89PNG\r\n\x1a\n garbage") is None
    assert media.mp4_duration(mp4(2.5)) == pytest.approx(2.5)
    assert media.mp4_duration(mp4()[:40]) is None


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
        assert refused.value.code == "output_type_not_allowed"
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
