"""A user as an admin sees them."""

from __future__ import annotations

import uuid

from api.admin.models import AdminUser, Usage
from api.keys.models import ApiKey
from api.me.reads import load_me
from shared.db import Connection
from shared.users import ApiKeyRow
from sql import queries


async def load_admin_user(conn: Connection, user_id: uuid.UUID, *,
                          default_quota_bytes: int) -> AdminUser | None:
    """What ``GET /v1/me`` shows of the user, with their disable, usage and keys; None: no such
    user. ``default_quota_bytes``: the server's storage quota (GENQ_LIBRARY_QUOTA_BYTES)."""
    me = await load_me(conn, user_id, default_quota_bytes=default_quota_bytes)
    if me is None:
        return None
    usage = await conn.fetchrow(queries["user_usage"], user_id)
    assert usage is not None
    keys = await conn.fetch(queries["keys_of_user"], user_id)
    return AdminUser(
        **me.model_dump(), disabled_at=usage["disabled_at"],
        usage=Usage(jobs=dict(usage["jobs"]), credits_spent=usage["credits_spent"],
                    library_bytes=me.storage.used_bytes),
        keys=[ApiKey.of(ApiKeyRow.from_row(k)) for k in keys])
