"""Copy a provider's outputs into our own storage, safely.

Every output is streamed with a byte cap, typed by its magic bytes (never by its name or its
Content-Type), and streamed atomically into storage under ``<user>/<job>/<index>.<ext>`` (on S3,
a multipart upload). URLs are fetched only from public addresses (or allowlisted hosts): the
host is resolved, every address checked, and the connection made to the checked address, for
every redirect hop.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from shared.errors import GenqError
from shared.logging import get_logger
from shared.settings import Settings
from shared.storage import Storage, asset_key
from worker import media
from worker.backoff import backoff_delay
from worker.netguard import AddressBlocked, resolve_checked
from worker.providers.base import BytesOutput, Output, UrlOutput

log = get_logger(__name__)

MAX_REDIRECTS = 5
DOWNLOAD_ATTEMPTS = 3
CHUNK_BYTES = 256 * 1024
# How much of a stored image is read back for its dimensions (headers, EXIF included).
IMAGE_HEADER_BYTES = 1024 * 1024
# How far into a stored MP4 its moov box is looked for, and how large it may be.
MAX_TOP_LEVEL_BOXES = 64
MAX_MOOV_BYTES = 64 * 1024 * 1024


class OutputRejected(GenqError):
    """An output could not be accepted."""

    code = "output_rejected"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Transient(Exception):
    """A download failure worth another try."""


@dataclass(frozen=True)
class StagedAsset:
    """One output stored under ``key``, with what we learned about it."""

    index: int
    key: str
    size: int
    media: media.MediaType
    width: int | None
    height: int | None
    duration_s: float | None


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class Stager:
    """Stages outputs for one worker process (shares its HTTP client)."""

    def __init__(self, settings: Settings, storage: Storage, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.storage = storage
        self.http = http

    async def stage(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, output: Output
    ) -> StagedAsset:
        """Store one output; :class:`OutputRejected` says why it was refused."""
        if isinstance(output, BytesOutput):
            return await self._store_bytes(user_id, job_id, index, output.data)
        assert isinstance(output, UrlOutput)
        try:
            async with asyncio.timeout(self.settings.download_timeout_s):
                return await self._download(user_id, job_id, index, output.url)
        except TimeoutError as exc:
            raise OutputRejected(
                f"output {index} took longer than {self.settings.download_timeout_s:g} s "
                "to download", code="output_download_failed",
            ) from exc

    async def _download(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, url: str
    ) -> StagedAsset:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return await self._download_once(user_id, job_id, index, httpx.URL(url))
            except (_Transient, httpx.TransportError) as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise OutputRejected(
                        f"output {index} could not be downloaded: {exc or type(exc).__name__}",
                        code="output_download_failed",
                    ) from exc
                delay = backoff_delay(attempt, self.settings.provider_backoff_base_s,
                                      self.settings.provider_backoff_max_s)
                log.warning("download_retry", index=index, attempt=attempt, error=str(exc))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _download_once(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, url: httpx.URL
    ) -> StagedAsset:
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise OutputRejected(f"output {index} has an unsupported URL",
                                     code="output_download_failed")
            try:
                target = await resolve_checked(
                    url.host, _default_port(url), self.settings.output_allowed_hosts
                )
            except AddressBlocked as exc:
                raise OutputRejected(exc.message, code=exc.code) from exc
            # Connect to the address we checked; Host and TLS SNI still name the real host.
            pinned = url.copy_with(host=str(target.address))
            host_header = url.netloc.decode("ascii")
            extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
            request = self.http.build_request(
                "GET", pinned, headers={"Host": host_header}, extensions=extensions
            )
            response = await self.http.send(request, stream=True, follow_redirects=False)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise OutputRejected(
                        f"output {index} could not be downloaded (HTTP {response.status_code})",
                        code="output_download_failed",
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit():
                    self._check_size(index, int(declared))
                return await self._store(
                    user_id, job_id, index, response.aiter_bytes(CHUNK_BYTES), None
                )
            finally:
                await response.aclose()
        raise OutputRejected(f"output {index}: too many redirects", code="output_download_failed")

    def _check_size(self, index: int, size: int) -> None:
        if size > self.settings.output_max_bytes:
            raise OutputRejected(
                f"output {index} is larger than the {self.settings.output_max_bytes} byte limit",
                code="output_too_large",
            )

    async def _store(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int,
        chunks: AsyncIterator[bytes], size_hint: int | None,
    ) -> StagedAsset:
        if size_hint is not None:
            self._check_size(index, size_hint)
        head = b""
        async for chunk in chunks:
            head += chunk
            if len(head) >= media.SNIFF_BYTES:
                break
        kind = self._kind(index, head)
        self._check_size(index, len(head))
        key = asset_key(user_id, job_id, index, kind.ext)

        async def body() -> AsyncIterator[bytes]:
            # Streamed into storage chunk by chunk (constant memory); a chunk past the cap
            # raises here, and the storage keeps nothing of the output.
            total = len(head)
            yield head
            async for chunk in chunks:
                total += len(chunk)
                self._check_size(index, total)
                yield chunk

        size = await self.storage.put(key, body(), content_type=kind.mime)
        return await self._measure_stored(index, key, kind, size)

    async def _store_bytes(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, data: bytes
    ) -> StagedAsset:
        """An output already in memory: measured from its header on the event loop (an
        unreadable one is never written), then written in one call (on the local backend,
        one trip to a thread, which makes nothing but system calls there)."""
        self._check_size(index, len(data))
        kind = self._kind(index, data[: media.SNIFF_BYTES])
        key = asset_key(user_id, job_id, index, kind.ext)
        staged = self._measure(index, key, kind, len(data), data)
        await self.storage.put_bytes(key, data, content_type=kind.mime)
        return staged

    @staticmethod
    def _kind(index: int, head: bytes) -> media.MediaType:
        kind = media.sniff(head)
        if kind is None:
            raise OutputRejected(
                f"output {index} is not an allowed type (PNG, JPEG, WebP or MP4)",
                code="output_type_not_allowed",
            )
        return kind

    def _measure(self, index: int, key: str, kind: media.MediaType, size: int,
                 data: bytes) -> StagedAsset:
        """The output's dimensions or duration, read from the header in ``data``; an
        unreadable image is refused."""
        width = height = None
        duration = None
        if kind.kind == "image":
            dims = media.image_size(data)
            if dims is None:
                raise OutputRejected(f"output {index} is not a readable image",
                                     code="output_type_not_allowed")
            width, height = dims
        else:
            duration = media.mp4_duration(data)
        return StagedAsset(index, key, size, kind, width, height, duration)

    async def _measure_stored(self, index: int, key: str, kind: media.MediaType,
                              size: int) -> StagedAsset:
        """:meth:`_measure` for an output already stored under ``key``, reading only the
        parts of it that hold the answer (range reads: the same on every backend). An
        unreadable image is refused, and its stored object deleted."""
        if kind.kind == "image":
            header = await self.storage.read_bytes(key, 0, min(size, IMAGE_HEADER_BYTES))
        else:
            header = await _mp4_moov(self.storage, key, size)
        try:
            return self._measure(index, key, kind, size, header)
        except OutputRejected:
            await self.storage.delete(key)
            raise

    async def discard(self, assets: list[StagedAsset]) -> None:
        """Delete staged objects that will not become assets (the job failed or was
        canceled); on the local folder, emptied job and user folders go too."""
        for asset in assets:
            await self.storage.delete(asset.key)


async def _mp4_moov(storage: Storage, key: str, size: int) -> bytes:
    """The top-level ``moov`` box of a stored MP4 (found by reading box headers only), or b""
    if there is none within reach; :func:`media.mp4_duration` reads its ``mvhd``."""
    pos = 0
    for _ in range(MAX_TOP_LEVEL_BOXES):
        if pos + 8 > size:
            break
        header = await storage.read_bytes(key, pos, min(pos + 16, size))
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1 and len(header) >= 16:
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:
            box_size = size - pos
        if box_size < 8:
            break
        if box_type == b"moov":
            if box_size > MAX_MOOV_BYTES:
                break
            return await storage.read_bytes(key, pos, min(pos + box_size, size))
        pos += box_size
    return b""
