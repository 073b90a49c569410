"""The S3 backend: any S3-compatible store (AWS S3, R2, GCS interoperability, MinIO), through
obstore (the Rust ``object_store`` crate): streamed multipart uploads, ranged GETs, listing,
server-side copy and presigned GET URLs, all async, with no hand-written S3 calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

from shared.storage.base import ObjectInfo, ObjectNotFound, ObjectReader, Storage, check_key

if TYPE_CHECKING:
    from obstore import GetResult, ObjectMeta

CHUNK_BYTES = 256 * 1024
# Parts of a streamed upload: the smallest S3 allows but the last, so a worker holds at most
# PART_BYTES x PART_CONCURRENCY of one output in memory.
PART_BYTES = 5 * 1024 * 1024
PART_CONCURRENCY = 4


def _info(key: str, meta: ObjectMeta) -> ObjectInfo:
    etag = meta["e_tag"] or f'"{meta["size"]:x}-{meta["last_modified"].timestamp():.0f}"'
    if not etag.startswith(('"', "W/")):
        etag = f'"{etag}"'
    return ObjectInfo(key=key, size=meta["size"], etag=etag,
                      last_modified=meta["last_modified"])


class _S3Reader(ObjectReader):
    def __init__(self, result: GetResult, info: ObjectInfo) -> None:
        self.info = info
        self._result = result
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._result.stream(min_chunk_size=CHUNK_BYTES):
                yield bytes(chunk)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._closed = True


class S3Storage(Storage):
    """Objects in one bucket, under an optional key prefix."""

    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None) -> None:
        config: dict[str, Any] = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if region:
            config["region"] = region
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        client: Mapping[str, Any] = {"allow_http": bool(endpoint_url
                                                         and endpoint_url.startswith("http:"))}
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Credentials not given here come from the environment (AWS_ACCESS_KEY_ID, ...).
        self.store = S3Store(bucket, prefix=self.prefix or None, config=config,  # type: ignore[arg-type]
                             client_options=client)  # type: ignore[arg-type]

    async def put(self, key: str, chunks: AsyncIterable[bytes], *,
                  content_type: str | None = None) -> int:
        check_key(key)
        total = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal total
            async for chunk in chunks:
                total += len(chunk)
                yield chunk

        # A streamed multipart upload: the object appears only when it completes; a failed
        # stream aborts it, so nothing shows up under the key.
        await obstore.put_async(
            self.store, key, counted(), attributes=_attributes(key, content_type),
            chunk_size=PART_BYTES, max_concurrency=PART_CONCURRENCY,
        )
        return total

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> int:
        check_key(key)
        await obstore.put_async(self.store, key, data, attributes=_attributes(key, content_type),
                                chunk_size=PART_BYTES, max_concurrency=PART_CONCURRENCY)
        return len(data)

    async def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        try:
            return _info(key, await obstore.head_async(self.store, key))
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"nothing stored under {key!r}") from exc

    async def open_range(self, key: str, start: int = 0, end: int | None = None
                         ) -> ObjectReader:
        check_key(key)
        options: dict[str, Any] = {}
        if end is not None:
            if end <= start:  # an empty range: S3 refuses it, so ask for the metadata only
                info = await self.stat(key)
                return _EmptyReader(info)
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        try:
            result = await obstore.get_async(self.store, key, options=options or None)  # type: ignore[arg-type]
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"nothing stored under {key!r}") from exc
        return _S3Reader(result, _info(key, result.meta))

    async def delete(self, key: str) -> bool:
        check_key(key)
        await obstore.delete_async(self.store, key)
        return True

    async def copy(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        try:
            await obstore.copy_async(self.store, src, dst)
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"nothing stored under {src!r}") from exc

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        stream = obstore.list(self.store, prefix.rstrip("/") or None, chunk_size=1000)
        async for batch in stream:
            for meta in batch:
                yield _info(meta["path"], meta)

    async def presign(self, key: str, ttl_s: int) -> str | None:
        check_key(key)
        return await obstore.sign_async(self.store, "GET", key, timedelta(seconds=ttl_s))


class _EmptyReader(ObjectReader):
    def __init__(self, info: ObjectInfo) -> None:
        self.info = info

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        return None


def _attributes(key: str, content_type: str | None) -> dict[str, str]:
    """What the store answers a presigned GET with: the type, shown inline (under the key's
    last two segments, ``<job>-<index>.<ext>``), cached privately."""
    name = "-".join(key.split("/")[-2:])
    attributes = {"Content-Disposition": f'inline; filename="{name}"',
                  "Cache-Control": "private, max-age=3600"}
    if content_type:
        attributes["Content-Type"] = content_type
    return attributes
