"""Users known by an identity provider: the JWT's ``sub``, unique per issuer, maps to one user,
created on first sight with its starting credits.

However many first requests of a new subject arrive at once, one user and one starting grant
are made: each request tries to create the user and its identity in one transaction; the
identity's primary key lets exactly one of them commit, the others roll back and read the
winner's user. The grant is also keyed (``signup:<issuer>:<subject>``), so it is given at most
once even if a grant were retried.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.db import Pool
from shared.ledger import create_account, grant
from sql import queries

#: The reason written on the ledger entry of a new user's starting credits.
SIGNUP_GRANT_REASON = "starting credits"


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is."""

    issuer: str
    subject: str
    email: str | None = None


def signup_grant_key(identity: Identity) -> str:
    """The idempotency key of the starting grant of ``identity``'s user."""
    return f"signup:{identity.issuer}:{identity.subject}"


class _LostRace(Exception):
    """Another request created this identity first: roll back and read its user."""


async def user_for_identity(pool: Pool, identity: Identity, starting_credits: int) -> uuid.UUID:
    """The user ``identity`` signs in as, created (with ``starting_credits``) on first sight."""
    existing = await pool.fetchval(queries["user_for_identity"], identity.issuer,
                                   identity.subject)
    if existing is not None:
        assert isinstance(existing, uuid.UUID)
        return existing
    try:
        async with pool.acquire() as conn, conn.transaction():
            user_id = None
            if identity.email:
                user_id = await conn.fetchval(queries["create_identity_user"], identity.email)
            if user_id is None:
                user_id = await conn.fetchval(queries["create_identity_user"], None)
            assert isinstance(user_id, uuid.UUID)
            created = await conn.fetchval(queries["create_identity"], identity.issuer,
                                          identity.subject, user_id, identity.email)
            if created is None:
                raise _LostRace
            await create_account(conn, user_id)
            if starting_credits > 0:
                await grant(conn, user_id, starting_credits,
                            idempotency_key=signup_grant_key(identity),
                            reason=SIGNUP_GRANT_REASON)
            return user_id
    except _LostRace:
        pass
    winner = await pool.fetchval(queries["user_for_identity"], identity.issuer, identity.subject)
    assert isinstance(winner, uuid.UUID)
    return winner
