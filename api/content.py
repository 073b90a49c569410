"""Serving stored bytes over HTTP, the same way for every route and every backend.

``Range`` (one range: 206, or 416 when it cannot be satisfied), ``ETag`` with ``If-None-Match``
(304) and ``If-Range``, ``Last-Modified``, ``HEAD``, ``Content-Disposition: inline``,
``X-Content-Type-Options: nosniff`` and ``Cache-Control``. The body streams from storage chunk
by chunk, so memory stays flat whatever the object's size.
"""

from __future__ import annotations

import email.utils
import re

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.errors import RangeNotSatisfiable, error_response, status_of
from shared.storage import ObjectInfo, Storage

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp",
              "image/gif": "gif", "image/avif": "avif", "video/mp4": "mp4",
              "video/webm": "webm", "video/quicktime": "mov", "video/x-matroska": "mkv"}
MIME_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()} | {"jpeg": "image/jpeg"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def mime_type_of(key: str) -> str:
    """The MIME type of a stored key, from its extension."""
    return MIME_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single-range ``Range`` header; None to send the whole object (no
    header, a malformed one, or several ranges, which RFC 9110 lets a server ignore).
    :class:`RangeNotSatisfiable` when the range starts past the end."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable("the requested range is empty",
                                      details={"size": size})
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at {start}, past the last byte",
                                  details={"size": size})
    return start, end


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of ``If-None-Match`` against ``etag``."""
    if header.strip() == "*":
        return True
    mine = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == mine for tag in header.split(","))


def _http_date(info: ObjectInfo) -> str:
    return email.utils.format_datetime(info.last_modified.replace(microsecond=0), usegmt=True)


async def serve_object(
    request: Request, storage: Storage, key: str, *, media_type: str, filename: str,
    cache_control: str,
) -> Response:
    """The response for GET or HEAD of ``key``; :class:`shared.storage.ObjectNotFound` if
    nothing is stored there."""
    info = await storage.stat(key)
    headers = {
        "ETag": info.etag,
        "Last-Modified": _http_date(info),
        "Cache-Control": cache_control,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, info.etag):
        return Response(status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() not in (info.etag, headers["Last-Modified"]):
        wanted = None  # the client's copy is stale: send the whole new one
    try:
        byte_range = parse_range(wanted, info.size)
    except RangeNotSatisfiable as exc:
        return error_response(status_of(RangeNotSatisfiable), exc.code, exc.message, exc.details,
                              {**headers, "Content-Range": f"bytes */{info.size}"})
    status = 200
    start, end = 0, info.size
    if byte_range is not None:
        start, end = byte_range
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    # Opened before answering: on the local folder, a cleanup that deletes the object now
    # cannot cut the stream.
    reader = await storage.open_range(key, start, end)
    return StreamingResponse(reader.chunks(), status_code=status, headers=headers,
                             media_type=media_type, background=BackgroundTask(reader.aclose))
