"""Signed /v1/files URLs: the key they are signed with, and what they accept."""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import pytest

from shared.settings import load_settings
from shared.storage import asset_key
from shared.storage.signing import InvalidSignature, UrlExpired, UrlSigner, load_signing_key


def test_generated_key_is_private_and_kept(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", _env_file=None)
    first = load_signing_key(settings)
    path = tmp_path / "data" / "url-signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(settings) == first  # a second process reads the same key
    other = load_signing_key(load_settings(data_dir=tmp_path / "other", _env_file=None))
    assert other != first
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["url-signing.key"]


def test_a_set_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", url_signing_key="k" * 40,
                             _env_file=None)
    assert load_signing_key(settings) == b"k" * 40
    assert not (tmp_path / "data").exists()


def _parts(url: str) -> tuple[str, str, str]:
    path, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    return path.removeprefix("/v1/files/"), params["exp"], params["sig"]


def test_urls_verify_across_signers_sharing_a_key() -> None:
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 0, "png")
    url = UrlSigner(b"s" * 32, 60).files_url(key)
    stored, exp, sig = _parts(url)
    assert stored == key
    UrlSigner(b"s" * 32, 999).verify(key, exp, sig)  # another API process, same key
    with pytest.raises(InvalidSignature):
        UrlSigner(b"t" * 32, 60).verify(key, exp, sig)


def test_expiry_is_checked_after_the_signature() -> None:
    signer = UrlSigner(b"s" * 32, 60)
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 0, "png")
    _, exp, sig = _parts(signer.files_url(key, now=time.time() - 61))
    with pytest.raises(UrlExpired):
        signer.verify(key, exp, sig)
    with pytest.raises(InvalidSignature):  # a forged later expiry is a bad signature
        signer.verify(key, str(int(exp) + 3600), sig)
    for bad_exp, bad_sig in ((None, sig), (exp, None), ("-1", sig), ("9" * 13, sig)):
        with pytest.raises(InvalidSignature):
            signer.verify(key, bad_exp, bad_sig)
