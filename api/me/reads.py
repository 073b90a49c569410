"""A user as ``/v1/me`` shows them (also the answer of an admin's plan or quota change)."""

from __future__ import annotations

import uuid

from api.credits.models import Credits
from api.me.models import ExternalIdentity, Me, StorageUse
from api.plans.models import Plan
from shared.db import Connection
from sql import queries


async def load_me(conn: Connection, user_id: uuid.UUID, *,
                  default_quota_bytes: int) -> Me | None:
    """The user, their plan, credits, library storage (``default_quota_bytes``: the server's
    GENQ_LIBRARY_QUOTA_BYTES) and external identities; None: no such user."""
    row = await conn.fetchrow(queries["user_with_plan"], user_id)
    if row is None:
        return None
    storage = await conn.fetchrow(queries["user_storage"], user_id, default_quota_bytes)
    assert storage is not None  # the user exists (read just now; users are never deleted)
    identities = await conn.fetch(queries["identities_of_user"], user_id)
    return Me(
        id=row["id"], email=row["email"], created_at=row["created_at"],
        plan=Plan.from_row(row),
        max_running=row["user_max_running"] if row["user_max_running"] is not None
        else row["max_running"],
        credits=Credits(balance=row["balance"] or 0, reserved=row["reserved"] or 0),
        storage=StorageUse(
            used_bytes=storage["used_bytes"], quota_bytes=storage["quota_bytes"],
            quota_source="user" if storage["user_quota_bytes"] is not None
            else "plan" if storage["plan_quota_bytes"] is not None else "server"),
        identities=[ExternalIdentity(issuer=r["issuer"], subject=r["subject"],
                                     email=r["email"], created_at=r["created_at"])
                    for r in identities])
