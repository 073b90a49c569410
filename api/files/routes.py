"""``/v1/files/{key}``: stored bytes by a signed URL (an asset's local ``content_url``), no
Authorization header: the URL's signature is the credential."""

from __future__ import annotations

import time

from starlette.responses import Response

from api.content import mime_type_of, serve_object
from api.errors import FileNotFound
from api.routing import Call, Endpoint
from api.spec import CONTENT_ERRORS, CONTENT_HEADERS, CONTENT_REPLIES, CONTENT_SEMANTICS
from shared.storage import ObjectNotFound, StorageKeyError


async def get_file(call: Call) -> Response:
    """GET or HEAD /v1/files/{key}?exp=&sig=: a stored object by its signed URL, no header
    needed. A tampered URL is 403 ``invalid_signature``, an old one 403 ``url_expired``."""
    ctx, request = call.ctx, call.request
    key = request.path_params["key"]
    exp = request.query_params.get("exp")
    ctx.signer.verify(key, exp, request.query_params.get("sig"))
    assert exp is not None
    remaining = max(0, int(exp) - int(time.time()))
    parts = key.split("/")
    try:
        return await serve_object(
            request, ctx.storage, key, media_type=mime_type_of(key),
            filename="-".join(parts[1:]) if len(parts) > 1 else key,
            cache_control=f"private, max-age={min(remaining, 3600)}",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        raise FileNotFound("nothing is stored at this URL (the asset may have expired)") from exc


ENDPOINTS = [
    Endpoint(
        "GET", "/v1/files/{key:path}", get_file, "getSignedFile",
        "Download stored bytes by a signed URL (an asset's content_url)", CONTENT_REPLIES,
        auth="none", head=True,
        description="No Authorization header: the URL's signature is the credential. "
                    + CONTENT_SEMANTICS,
        parameters=[
            {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The storage key (a path)"},
            {"name": "exp", "in": "query", "required": True, "schema": {"type": "integer"},
             "description": "Expiry, Unix seconds"},
            {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"},
             "description": "HMAC-SHA256 of the key and expiry, base64url"},
            *CONTENT_HEADERS,
        ],
        errors={**CONTENT_ERRORS, 403: "invalid_signature (tampered) or url_expired",
                404: "Nothing stored at this URL"},
    ),
]
