"""Signed, expiring URLs for stored objects: what ``content_url`` is.

With S3 the store presigns a GET (or, for public items, ``GENQ_PUBLIC_BASE_URL`` names a CDN in
front of the bucket). With the local folder the API serves ``/v1/files/<key>?exp=&sig=``, where
``sig`` is HMAC-SHA256 of the key and the expiry under ``GENQ_URL_SIGNING_KEY``; every API
process of one installation must share that key. Unset, a random key is generated once under
the data dir (mode 0600) and reused, which is enough when the APIs share that folder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from shared.errors import InvalidSignature as InvalidSignature  # re-exported
from shared.errors import UrlExpired as UrlExpired
from shared.settings import Settings
from shared.storage.base import Storage, check_key

KEY_FILE = "url-signing.key"
FILES_PREFIX = "/v1/files/"


def load_signing_key(settings: Settings) -> bytes:
    """``GENQ_URL_SIGNING_KEY``, or the key generated once under the data dir (0600)."""
    if settings.url_signing_key is not None:
        return settings.url_signing_key.get_secret_value().encode()
    path = settings.data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        # link() never replaces: of processes starting together, the first key wins for all.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable URL signing key")
    return key.encode()


class UrlSigner:
    """Signs and checks ``/v1/files`` URLs, and asks the store for presigned ones."""

    def __init__(self, key: bytes, ttl_s: int, public_base_url: str | None = None) -> None:
        self._key = key
        self.ttl_s = ttl_s
        self.public_base_url = public_base_url

    def signature(self, key: str, exp: int) -> str:
        """The signature of ``key`` valid until ``exp`` (Unix seconds)."""
        mac = hmac.new(self._key, f"{key}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def files_url(self, key: str, *, now: float | None = None) -> str:
        """``/v1/files/<key>?exp=&sig=``, valid for ``ttl_s`` seconds from ``now``."""
        check_key(key)
        exp = int(now if now is not None else time.time()) + self.ttl_s
        return f"{FILES_PREFIX}{quote(key)}?exp={exp}&sig={self.signature(key, exp)}"

    def verify(self, key: str, exp: str | None, sig: str | None, *,
               now: float | None = None) -> None:
        """Raise :class:`InvalidSignature` or :class:`UrlExpired` unless the URL is good.

        The signature is checked first (in constant time), so a forged expiry is refused as a
        bad signature, never reported as expired.
        """
        if not exp or not sig or not exp.isdigit() or len(exp) > 12:
            raise InvalidSignature("the URL is not signed: exp and sig are required")
        if not hmac.compare_digest(self.signature(key, int(exp)).encode(), sig.encode()):
            raise InvalidSignature("the URL's signature does not match")
        if int(exp) <= (now if now is not None else time.time()):
            raise UrlExpired("the signed URL has expired; fetch the asset again for a new one")

    async def signed_url(self, storage: Storage, key: str, *, public: bool = False) -> str:
        """The URL a browser loads ``key`` from, without an Authorization header: the CDN URL
        of a public item, the store's presigned GET, or a signed ``/v1/files`` URL."""
        if public and self.public_base_url:
            check_key(key)
            return f"{self.public_base_url}/{quote(key)}"
        presigned = await storage.presign(key, self.ttl_s)
        return presigned if presigned is not None else self.files_url(key)


def url_signer(settings: Settings, storage: Storage) -> UrlSigner:
    """The signer of every process that hands out ``content_url``s (the API, and the webhook
    deliveries). ``/v1/files`` URLs are only made for the local folder: with S3 (and no key
    set) nothing is written to the data dir, and a random key refuses any ``/v1/files`` URL."""
    key = (load_signing_key(settings)
           if storage.scheme == "file" or settings.url_signing_key is not None
           else secrets.token_bytes(32))
    return UrlSigner(key, settings.url_ttl_s, settings.public_base_url)
