"""Copy a provider's outputs into our own storage, safely.

Every output is streamed with a byte cap, typed by its magic bytes (never by its name or its
Content-Type) and kept only if its type is in ``GENQ_OUTPUT_ALLOWED_TYPES``, streamed atomically
into storage under ``<user>/<job>/<index>.<ext>`` (on S3, a multipart upload), and measured from
its header (an image's size; a video's size, duration and frame rate), refused past the pixel
and duration limits before anything is decoded. URLs are fetched only from public addresses (or
allowlisted hosts): the host is resolved, every address checked, and the connection made to the
checked address, for every redirect hop. Variants (``worker/variants.py``) are made afterwards in
a thread pool and stored through the same storage interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.errors import AddressBlocked, GenqError
from shared.logging import get_logger
from shared.netguard import default_port, pinned_request, resolve_checked
from shared.retry import retry
from shared.settings import Settings
from shared.storage import LocalStorage, Storage, asset_key
from shared.types import AssetType
from worker import media, variants
from worker.providers.base import BytesOutput, Output, UrlOutput

log = get_logger(__name__)

MAX_REDIRECTS = 5
DOWNLOAD_ATTEMPTS = 3
CHUNK_BYTES = 256 * 1024
# An output that declares a length up to this is read whole into memory and stored as one
# write (measured from memory, one trip to the storage thread), not streamed chunk by chunk.
IN_MEMORY_BYTES = 1024 * 1024
# How much of a stored image is read back for its dimensions (headers, EXIF included).
IMAGE_HEADER_BYTES = 1024 * 1024


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
    fps: float | None = None
    variants: tuple[variants.Variant, ...] = ()


class Stager:
    """Stages outputs for one worker process (shares its HTTP client)."""

    def __init__(self, settings: Settings, storage: Storage, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.storage = storage
        self.http = http
        self.limits = media.Limits(settings.media_max_pixels, settings.media_max_duration_s)
        self.allowed_types = frozenset(settings.output_allowed_types)
        self._media_pool: ThreadPoolExecutor | None = None
        # Downloads in flight at once, as many as the client keeps connections. The rest wait
        # here, in order, before their timeout starts, rather than in the HTTP pool, which
        # matches every queued request against every connection at each hand-out.
        self._download_slots = asyncio.Semaphore(settings.download_max_connections)

    def close(self) -> None:
        """Stop the variant threads (after the jobs that use them are over)."""
        if self._media_pool is not None:
            self._media_pool.shutdown(wait=True, cancel_futures=True)
            self._media_pool = None

    async def add_variants(self, staged: StagedAsset) -> StagedAsset:
        """``staged`` with its variants made and stored, in the media thread pool (off the
        event loop). A variant that cannot be made is logged and left out: the output itself
        is fine."""
        if not self.settings.variants_enabled:
            return staged
        if self._media_pool is None:
            self._media_pool = ThreadPoolExecutor(
                self.settings.media_threads, thread_name_prefix="genq-media")
        loop = asyncio.get_running_loop()
        try:
            async with self._readable(staged.key) as source:
                planned = await loop.run_in_executor(
                    self._media_pool, variants.make_variants, source, staged.key,
                    staged.media, self.limits,
                )
            made = []
            for variant, data in planned:
                await self.storage.put_bytes(variant.key, data, content_type=variant.mime)
                made.append(variant)
        except Exception as exc:
            log.warning("variants_failed", index=staged.index, key=staged.key,
                        error=repr(exc), exc_info=exc)
            return staged
        return dataclasses.replace(staged, variants=tuple(made))

    async def stage(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, output: Output
    ) -> StagedAsset:
        """Store one output; :class:`OutputRejected` says why it was refused."""
        if isinstance(output, BytesOutput):
            return await self._store_bytes(user_id, job_id, index, output.data)
        assert isinstance(output, UrlOutput)
        try:
            async with self._download_slots, asyncio.timeout(self.settings.download_timeout_s):
                return await self._download(user_id, job_id, index, output.url)
        except TimeoutError as exc:
            raise OutputRejected(
                f"output {index} took longer than {self.settings.download_timeout_s:g} s "
                "to download", code="output_download_failed",
            ) from exc

    async def _download(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, url: str
    ) -> StagedAsset:
        try:
            return await retry(
                lambda: self._download_once(user_id, job_id, index, httpx.URL(url)),
                what="download", attempts=DOWNLOAD_ATTEMPTS,
                retry_on=lambda exc: isinstance(exc, (_Transient, httpx.TransportError)),
                base_s=self.settings.provider_backoff_base_s,
                max_s=self.settings.provider_backoff_max_s, event="download_retry", index=index,
            )
        except (_Transient, httpx.TransportError) as exc:
            raise OutputRejected(
                f"output {index} could not be downloaded: {exc or type(exc).__name__}",
                code="output_download_failed",
            ) from exc

    async def _download_once(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, url: httpx.URL
    ) -> StagedAsset:
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise OutputRejected(f"output {index} has an unsupported URL",
                                     code="output_download_failed")
            try:
                target = await resolve_checked(
                    url.host, default_port(url), self.settings.output_allowed_hosts
                )
            except AddressBlocked as exc:
                raise OutputRejected(exc.message, code=exc.code) from exc
            request = pinned_request(self.http, "GET", url, target)
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
                    if (int(declared) <= IN_MEMORY_BYTES
                            and response.headers.get("content-encoding", "identity")
                            == "identity"):
                        # Framed by that length and not compressed: no more than it is read.
                        data = await response.aread()
                        return await self._store_bytes(user_id, job_id, index, data)
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
        if kind.kind == AssetType.IMAGE:
            staged = self._measure(index, key, kind, len(data), data)
        else:
            # A video's container is probed by FFmpeg: in the thread, not on the loop.
            staged = await asyncio.to_thread(self._measure, index, key, kind, len(data), data)
        await self.storage.put_bytes(key, data, content_type=kind.mime)
        return staged

    def _kind(self, index: int, head: bytes) -> media.MediaType:
        kind = media.sniff(head)
        if kind is None:
            raise OutputRejected(
                f"output {index} is not a recognised image or video type",
                code="unsupported_output_type",
            )
        if kind.mime not in self.allowed_types:
            raise OutputRejected(
                f"output {index} is {kind.mime}, which is not an allowed output type "
                f"({', '.join(sorted(self.allowed_types))})",
                code="unsupported_output_type",
            )
        return kind

    def _measure(self, index: int, key: str, kind: media.MediaType, size: int,
                 data: Path | bytes) -> StagedAsset:
        """The output's dimensions, and a video's duration and frame rate, read from the
        header of ``data`` (bytes in memory, or a file). An unreadable file, or one past the
        pixel or duration limit, is refused (nothing is decoded). Blocking for a video: call
        it from a thread."""
        try:
            if kind.kind == AssetType.IMAGE:
                width, height = media.check_image(data, self.limits)
                return StagedAsset(index, key, size, kind, width, height, None)
            info = media.check_video(data, self.limits)
        except media.MediaRefused as exc:
            raise OutputRejected(f"output {index} was refused: {exc.message}",
                                 code=exc.code) from exc
        return StagedAsset(index, key, size, kind, info.width, info.height, info.duration_s,
                           info.fps)

    async def _measure_stored(self, index: int, key: str, kind: media.MediaType,
                              size: int) -> StagedAsset:
        """:meth:`_measure` for an output already stored under ``key``: an image from its
        header (one range read, the same on every backend), a video by FFmpeg from a local file
        (in a thread). A refused output's stored object is deleted."""
        try:
            if kind.kind == AssetType.IMAGE:
                header = await self.storage.read_bytes(key, 0, min(size, IMAGE_HEADER_BYTES))
                return self._measure(index, key, kind, size, header)
            async with self._readable(key) as path:
                return await asyncio.to_thread(self._measure, index, key, kind, size, path)
        except OutputRejected:
            await self.storage.delete(key)
            raise

    @contextlib.asynccontextmanager
    async def _readable(self, key: str) -> AsyncIterator[Path]:
        """A local file holding the stored object ``key``, for FFmpeg and Pillow: the file
        itself on the local folder, else a private temporary copy (streamed, removed after)."""
        if isinstance(self.storage, LocalStorage):
            yield self.storage.path(key)
            return
        with tempfile.TemporaryDirectory(prefix="genq-media-") as folder:
            path = Path(folder) / "object"
            reader = await self.storage.open_range(key)
            with path.open("wb") as handle:
                async for chunk in reader.chunks():
                    await asyncio.to_thread(handle.write, chunk)
            yield path

    async def persist(self, assets: list[StagedAsset]) -> None:
        """Make the staged objects' names durable before the asset rows that point at them
        commit (on the local folder: their folders fsynced, grouped with other jobs')."""
        if assets:
            await self.storage.persist(
                [key for a in assets for key in (a.key, *(v.key for v in a.variants))])

    async def discard(self, assets: list[StagedAsset]) -> None:
        """Delete staged objects that will not become assets (the job failed or was
        canceled); on the local folder, emptied job and user folders go too."""
        for asset in assets:
            await self.storage.delete(asset.key)
            # Every kind, not only asset.variants: a cancel may have stopped the job while
            # its variants were being made.
            for kind in variants.KINDS:
                await self.storage.delete(variants.variant_key(asset.key, kind))
