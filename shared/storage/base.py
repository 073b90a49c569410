"""The storage interface every backend implements, and what it hands back.

Keys are relative POSIX paths (``<user_id>/<job_id>/<index>.<ext>`` for workspace assets);
a backend refuses keys that are absolute, empty, or climb with ``..``. Writes are atomic: a
reader never sees half an object under a real key, whatever happens during the write.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from shared.errors import ObjectNotFound as ObjectNotFound  # where storage callers find it

# Temporary names of objects being written (the local backend's temp files).
TMP_SUFFIX = ".part"


class StorageKeyError(ValueError):
    """A key that would escape the storage root or is malformed."""


def asset_key(user_id: uuid.UUID, job_id: uuid.UUID, index: int, ext: str) -> str:
    """The storage key of output ``index`` of a job."""
    if index < 0 or not ext.isalnum():
        raise StorageKeyError(f"bad asset index or extension: {index!r}, {ext!r}")
    return f"{user_id}/{job_id}/{index}.{ext}"


def check_key(key: str) -> PurePosixPath:
    """``key`` as a relative path; :class:`StorageKeyError` if it could leave the root."""
    pure = PurePosixPath(key)
    if (not key or key.endswith("/") or pure.is_absolute() or ".." in pure.parts
            or not pure.parts or "\\" in key or "\x00" in key or str(pure) != key):
        raise StorageKeyError(f"bad storage key {key!r}")
    return pure


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one stored object."""

    key: str
    size: int
    etag: str
    last_modified: datetime


class ObjectReader(abc.ABC):
    """An opened object (or a byte range of it): read its chunks once, then close it.

    Opening pins the object: deleting it afterwards does not cut a read already opened on the
    local backend (the open file stays readable), and S3 streams what the GET returned.
    """

    info: ObjectInfo

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes of the opened range, in order; closes the reader when exhausted."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the reader (idempotent)."""


class Storage(abc.ABC):
    """Where asset bytes live. Chosen by ``GENQ_STORAGE_URL`` (:func:`open_storage`)."""

    #: ``file`` or ``s3``.
    scheme: str

    @abc.abstractmethod
    async def put(self, key: str, chunks: AsyncIterable[bytes], *,
                  content_type: str | None = None) -> int:
        """Store the stream under ``key`` atomically (replacing any object); return its size.

        If the stream raises, nothing is stored under ``key`` (an object already there stays).
        """

    @abc.abstractmethod
    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> int:
        """Store ``data`` under ``key`` atomically; return its size."""

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Size, ETag and modification time; :class:`ObjectNotFound` if there is none."""

    @abc.abstractmethod
    async def open_range(self, key: str, start: int = 0, end: int | None = None
                         ) -> ObjectReader:
        """Open bytes ``[start, end)`` (to the end when ``end`` is None) for streaming;
        :class:`ObjectNotFound` if nothing is stored."""

    async def read_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` in memory: for small objects and headers only."""
        reader = await self.open_range(key, start, end)
        try:
            return b"".join([chunk async for chunk in reader.chunks()])
        finally:
            await reader.aclose()

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete the object; one already gone is fine. Returns whether one was removed (a
        backend that cannot tell, like S3, returns True)."""

    @abc.abstractmethod
    async def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` (replacing it); :class:`ObjectNotFound` if ``src`` is gone."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder: ``"user/job/"``), in no
        particular order; objects being written may show up under their temporary name."""

    @abc.abstractmethod
    async def presign(self, key: str, ttl_s: int) -> str | None:
        """A URL that serves ``key`` for ``ttl_s`` seconds without credentials, or None if the
        backend cannot make one (the local folder: the API signs its own ``/v1/files`` URLs)."""

    async def persist(self, keys: Sequence[str]) -> None:  # noqa: B027 - durable by default
        """Make the names of these stored objects survive a power loss (a backend whose
        ``put`` is durable when it returns, like S3, has nothing to do). Call before a row
        that points at them commits."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the backend holds open."""
