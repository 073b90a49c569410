"""Where asset bytes live: one interface (:class:`Storage`), two backends, chosen by URL.

``GENQ_STORAGE_URL`` is ``file:///path`` (the local folder, the default under the data dir) or
``s3://bucket/prefix`` (any S3-compatible store). Nothing outside this package touches files or
paths for asset bytes. :mod:`shared.storage.signing` makes the URLs clients load them from.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.settings import Settings
from shared.storage.base import (
    TMP_SUFFIX,
    ObjectInfo,
    ObjectNotFound,
    ObjectReader,
    Storage,
    StorageKeyError,
    asset_key,
    check_key,
)
from shared.storage.local import LocalStorage

__all__ = [
    "TMP_SUFFIX",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectReader",
    "Storage",
    "StorageKeyError",
    "asset_key",
    "check_key",
    "open_storage",
]


def open_storage(settings: Settings) -> Storage:
    """The backend ``settings.storage_url`` names (the local folder when it is unset)."""
    url = settings.storage_url
    if url is None:
        return LocalStorage(settings.storage_root)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"GENQ_STORAGE_URL: a file:// URL names no host, got {url!r}")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from shared.storage.s3 import S3Storage  # obstore loads only when S3 is used

        if not parts.netloc:
            raise ConfigError(f"GENQ_STORAGE_URL: s3:// URL without a bucket: {url!r}")
        return S3Storage(
            parts.netloc, unquote(parts.path),
            endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
        )
    raise ConfigError(f"GENQ_STORAGE_URL must be file:///path or s3://bucket/prefix, got {url!r}")
