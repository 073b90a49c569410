"""Copy a provider's outputs into our own storage, safely.

Every output is streamed with a byte cap, typed by its magic bytes (never by its name or its
Content-Type) and kept only if its type is in ``GENQ_OUTPUT_ALLOWED_TYPES``, written atomically
under ``<user>/<job>/<index>.<ext>``, and measured from its header (an image's size; a video's
size, duration and frame rate), refused past the pixel and duration limits before anything is
decoded. URLs are fetched only from public addresses (or allowlisted hosts): the host is
resolved, every address checked, and the connection made to the checked address, for every
redirect hop. Variants (``worker/variants.py``) are made afterwards in a thread pool.

The worker writes and reads outputs through ``writer``, ``write_bytes``, ``path``, ``open`` and
``delete`` of :class:`LocalStorage`, here and in ``worker/variants.py`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from shared.errors import GenqError
from shared.logging import get_logger
from shared.retry import retry
from shared.settings import Settings
from shared.storage import LocalStorage, asset_key
from shared.types import AssetType
from worker import media, variants
from worker.netguard import AddressBlocked, resolve_checked
from worker.providers.base import BytesOutput, Output, UrlOutput

log = get_logger(__name__)

MAX_REDIRECTS = 5
DOWNLOAD_ATTEMPTS = 3
CHUNK_BYTES = 256 * 1024


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


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class Stager:
    """Stages outputs for one worker process (shares its HTTP client)."""

    def __init__(self, settings: Settings, storage: LocalStorage, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.storage = storage
        self.http = http
        self.limits = media.Limits(settings.media_max_pixels, settings.media_max_duration_s)
        self.allowed_types = frozenset(settings.output_allowed_types)
        self._media_pool: ThreadPoolExecutor | None = None

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
            made = await loop.run_in_executor(
                self._media_pool, variants.make_variants, self.storage, staged.key,
                staged.media, self.limits,
            )
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
        total = len(head)
        # The file calls block on the disk (mkdir, open, write, fsync, rename): they run in a
        # thread, so one output's fsync never stalls the other jobs and heartbeats on this loop.
        writer = self.storage.writer(key)
        handle = await asyncio.to_thread(_open_and_write, writer, head)
        try:
            async for chunk in chunks:
                total += len(chunk)
                self._check_size(index, total)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException as exc:
            # Close and remove the temp file; no fsync on this path, so no need for a thread.
            writer.__exit__(type(exc), exc, exc.__traceback__)
            raise

        def close_and_measure() -> StagedAsset:
            writer.__exit__(None, None, None)
            return self._measure(index, key, kind, total)

        return await asyncio.to_thread(close_and_measure)

    async def _store_bytes(
        self, user_id: uuid.UUID, job_id: uuid.UUID, index: int, data: bytes
    ) -> StagedAsset:
        """An output already in memory: measured from its header on the event loop (an
        unreadable one is never written), then written in one trip to a thread, which makes
        nothing but system calls there."""
        self._check_size(index, len(data))
        kind = self._kind(index, data[: media.SNIFF_BYTES])
        key = asset_key(user_id, job_id, index, kind.ext)
        if kind.kind == AssetType.IMAGE:
            staged = self._measure(index, key, kind, len(data), data)
        else:
            # A video's container is probed by FFmpeg: in the thread, not on the loop.
            staged = await asyncio.to_thread(self._measure, index, key, kind, len(data), data)
        await asyncio.to_thread(self.storage.write_bytes, key, data)
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
                 data: bytes | None = None) -> StagedAsset:
        """The output's dimensions, and a video's duration and frame rate, read from the
        header of ``data`` if given, else from the stored file (blocking: call from a thread).
        An unreadable file, or one past the pixel or duration limit, is refused (nothing is
        decoded) and its stored file deleted."""
        source = self.storage.path(key) if data is None else data
        try:
            if kind.kind == AssetType.IMAGE:
                width, height = media.check_image(source, self.limits)
                return StagedAsset(index, key, size, kind, width, height, None)
            info = media.check_video(source, self.limits)
        except media.MediaRefused as exc:
            if data is None:
                self.storage.delete(key)
            raise OutputRejected(f"output {index} was refused: {exc.message}",
                                 code=exc.code) from exc
        return StagedAsset(index, key, size, kind, info.width, info.height, info.duration_s,
                           info.fps)

    def discard(self, user_id: uuid.UUID, job_id: uuid.UUID, assets: list[StagedAsset]) -> None:
        """Delete staged files that will not become assets (the job failed or was canceled).

        Call once staging is over: the job's folder goes too if nothing else is in it.
        """
        for asset in assets:
            self.storage.delete(asset.key)
            # Every kind, not only asset.variants: a cancel may have stopped the job while
            # its variants were being made.
            for kind in variants.KINDS:
                self.storage.delete(variants.variant_key(asset.key, kind))
        folder = self.storage.path(f"{user_id}/{job_id}")
        for parent in (folder, folder.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()


def _open_and_write(writer: contextlib.AbstractContextManager[BinaryIO], data: bytes) -> BinaryIO:
    """Enter ``writer`` and write ``data``; on failure, leave nothing behind."""
    handle = writer.__enter__()
    try:
        handle.write(data)
    except BaseException as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return handle
