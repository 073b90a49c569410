"""API keys and accounts: a user's own keys, an admin's view of a user, revocation and
disabling (queued jobs canceled and refunded, running ones left to finish)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from api.jobs.intake import SubmitItem
from api.jobs.models import JobCreate
from shared.catalog import load_rules
from shared.db import Pool
from shared.settings import Settings
from sql import queries
from tests.factories import assert_invariants
from tests.integration.api_support import (  # noqa: F401
    ADMIN,
    Api,
    User,
    api_fixture,
    proxy_to,
    running_app,
)

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 1, "params": {}}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _cache_live(api: Api) -> None:
    """Wait until the app is subscribed to invalidations (it caches keys only then)."""
    for _ in range(100):
        if api.app.state.genq.keys.live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the key cache never went live")


async def test_a_user_makes_lists_and_revokes_their_own_keys(api: Api) -> None:
    await _cache_live(api)
    user = await api.user(credits=5)
    made = await api.client.post("/v1/me/keys", headers=user.headers)
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    new = made.json()
    assert new["api_key"].startswith(new["prefix"]) and new["revoked_at"] is None
    assert (await api.client.get("/v1/credits", headers=_bearer(new["api_key"]))).status_code \
        == 200

    listed = (await api.client.get("/v1/me/keys", headers=user.headers)).json()
    assert listed["data"][0]["id"] == new["id"]
    assert len(listed["data"]) == 2 and listed["next_cursor"] is None
    assert all("api_key" not in k for k in listed["data"])
    # Used just now (once through the cache miss), so it shows.
    assert listed["data"][0]["last_used_at"] is not None
    page = (await api.client.get("/v1/me/keys?limit=1", headers=user.headers)).json()
    rest = (await api.client.get(f"/v1/me/keys?cursor={page['next_cursor']}",
                                 headers=user.headers)).json()
    assert [k["id"] for k in page["data"] + rest["data"]] == [k["id"] for k in listed["data"]]

    # Revoked: refused at once in this process, although it was cached.
    assert len(api.app.state.genq.keys) >= 1
    gone = await api.client.delete(f"/v1/me/keys/{new['id']}", headers=user.headers)
    assert gone.status_code == 204
    refused = await api.client.get("/v1/credits", headers=_bearer(new["api_key"]))
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    again = await api.client.delete(f"/v1/me/keys/{new['id']}", headers=user.headers)
    assert again.status_code == 204
    listed = (await api.client.get("/v1/me/keys", headers=user.headers)).json()
    assert listed["data"][0]["revoked_at"] is not None

    # Another user's key is not theirs to see or revoke.
    other = await api.user()
    theirs = (await api.client.post("/v1/me/keys", headers=other.headers)).json()
    nope = await api.client.delete(f"/v1/me/keys/{theirs['id']}", headers=user.headers)
    assert (nope.status_code, nope.json()["error"]["code"]) == (404, "api_key_not_found")
    assert (await api.client.get("/v1/me", headers=_bearer(theirs["api_key"]))).status_code \
        == 200


async def test_an_admin_finds_a_user_and_manages_their_keys(api: Api) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    made = (await api.client.post("/v1/admin/users", json={"email": email},
                                  headers=ADMIN)).json()
    user = User(uuid.UUID(made["id"]), made["api_key"])
    await api.client.post(f"/v1/admin/users/{user.id}/credits", json={"amount": 7},
                          headers=ADMIN)
    found = await api.client.get(f"/v1/admin/users?email={email.upper()}", headers=ADMIN)
    assert [u["id"] for u in found.json()["data"]] == [str(user.id)]
    assert found.json()["data"][0]["credits"] == {"balance": 7, "reserved": 0}
    none = await api.client.get("/v1/admin/users?email=nobody@example.com", headers=ADMIN)
    assert none.json() == {"data": [], "next_cursor": None}

    key = (await api.client.post(f"/v1/admin/users/{user.id}/keys", headers=ADMIN)).json()
    assert (await api.client.get("/v1/me", headers=_bearer(key["api_key"]))).status_code == 200
    await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
    shown = await api.client.get(f"/v1/admin/users/{user.id}", headers=ADMIN)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["email"], body["disabled_at"], body["plan"]["name"]) == (email, None, "free")
    assert body["credits"] == {"balance": 6, "reserved": 1}
    assert body["usage"] == {"jobs": {"queued": 1}, "credits_spent": 0, "library_bytes": 0}
    assert [k["prefix"] for k in body["keys"]] == [key["prefix"], made["api_key"][:10]]
    assert all("api_key" not in k for k in body["keys"])

    revoked = await api.client.delete(f"/v1/admin/keys/{key['id']}", headers=ADMIN)
    assert revoked.status_code == 204
    assert (await api.client.get("/v1/me", headers=_bearer(key["api_key"]))).status_code == 401
    assert (await api.client.get("/v1/me", headers=user.headers)).status_code == 200
    missing = await api.client.delete(f"/v1/admin/keys/{uuid.uuid4()}", headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "api_key_not_found")
    # A user's key is no admin token.
    assert (await api.client.get("/v1/admin/audit", headers=user.headers)).status_code == 401


async def test_disabling_cancels_and_refunds_queued_jobs_and_lets_running_ones_finish(
    api: Api,
) -> None:
    user = await api.user(credits=10)
    queued = [(await api.client.post("/v1/jobs", json=JOB, headers=user.headers)).json()["id"]
              for _ in range(3)]
    running = (await api.client.post("/v1/jobs", json=JOB, headers=user.headers)).json()["id"]
    await api.pool.execute("UPDATE generation_jobs SET status = 'running', attempt = 1 "
                           "WHERE id = $1", uuid.UUID(running))
    assert await api.balance(user) == (6, 4)

    r = await api.client.post(f"/v1/admin/users/{user.id}/disable", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["canceled_jobs"]) == sorted(queued)
    assert body["refunded"] == 3 and body["user"]["disabled_at"] is not None
    statuses = {r["id"]: r["status"] for r in await api.pool.fetch(
        "SELECT id::text, status FROM generation_jobs WHERE user_id = $1", user.id)}
    assert statuses == {**dict.fromkeys(queued, "canceled"), running: "running"}
    account = await assert_invariants(api.pool, user.id)
    assert (account.balance, account.reserved) == (9, 1)

    refused = await api.client.get("/v1/credits", headers=user.headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_disabled")
    submit = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
    assert submit.status_code == 403
    # The running job still finishes, and settles as any other.
    status = await api.pool.fetchval(
        "SELECT genq_finalize($1, 1, 'succeeded', 1, NULL, NULL, '[]'::jsonb, 60)",
        uuid.UUID(running))
    assert status == "succeeded"
    account = await assert_invariants(api.pool, user.id)
    assert (account.balance, account.reserved) == (9, 0)

    enabled = await api.client.post(f"/v1/admin/users/{user.id}/enable", headers=ADMIN)
    assert enabled.json()["user"]["disabled_at"] is None
    assert (await api.client.get("/v1/credits", headers=user.headers)).status_code == 200
    missing = await api.client.post(f"/v1/admin/users/{uuid.uuid4()}/disable", headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "user_not_found")


async def test_the_database_refuses_a_hold_for_a_disabled_user(pool: Pool, api: Api) -> None:
    user = await api.user(credits=10)
    await pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user.id)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(
            "SELECT * FROM genq_reserve($1, 2, NULL, NULL, now() + interval '1 hour')", user.id)
    assert caught.value.constraint_name == "users_account_disabled"
    # Grants and refunds still work for a disabled user.
    await pool.execute("SELECT * FROM genq_grant($1, 1, NULL, NULL)", user.id)
    account = await assert_invariants(pool, user.id)
    assert (account.balance, account.reserved) == (11, 0)


async def test_a_submission_authenticated_before_a_disable_is_refused_by_the_database(
    api: Api,
) -> None:
    # The key is cached as it was before the disable, which reaches the database alone (no
    # invalidation is published), so these submissions pass authentication and meet the
    # submit statement's own check: with and without an Idempotency-Key.
    await _cache_live(api)
    user = await api.user(credits=10)
    assert await api.balance(user) == (10, 0)
    await api.pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user.id)
    for headers in (user.headers, {**user.headers, "Idempotency-Key": "after-disable"}):
        r = await api.client.post("/v1/jobs", json=JOB, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "account_disabled"), r.text
    enabled = await api.client.post(f"/v1/admin/users/{user.id}/enable", headers=ADMIN)
    assert enabled.status_code == 200
    assert await api.balance(user) == (10, 0)
    assert (await api.client.get("/v1/jobs", headers=user.headers)).json()["data"] == []
    await assert_invariants(api.pool, user.id)


async def _submit_item(api: Api, user_id: uuid.UUID) -> SubmitItem:
    """JOB for ``user_id`` as the intake checks it before its submit statement."""
    async with api.pool.acquire() as conn:
        rules = (await load_rules(conn))["local/sketch"]
    return SubmitItem.checked(uuid.uuid4(), user_id, JobCreate.model_validate(JOB), None, None,
                              rules)


async def test_a_batch_refuses_only_the_disabled_users_items(api: Api) -> None:
    # The intake's statement (genq_submit_batch) with one batch over two accounts.
    disabled, other = await api.user(credits=10), await api.user(credits=10)
    await api.pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", disabled.id)
    items = [await _submit_item(api, owner.id) for owner in (disabled, other, disabled)]
    rows = await api.pool.fetch(queries["submit_jobs"],
                                [it.payload(i) for i, it in enumerate(items)], 3, 60.0, 60.0)
    refused = {r["item"]: r["error_constraint"] for r in rows}
    assert refused == {0: "users_account_disabled", 1: None, 2: "users_account_disabled"}
    assert await api.balance(other) == (9, 1)
    await api.client.post(f"/v1/admin/users/{disabled.id}/enable", headers=ADMIN)
    assert await api.balance(disabled) == (10, 0)
    assert (await api.client.get("/v1/jobs", headers=disabled.headers)).json()["data"] == []
    await assert_invariants(api.pool, disabled.id)


async def test_genq_submit_refuses_a_disabled_user(api: Api) -> None:
    user = await api.user(credits=10)
    await api.pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user.id)
    item = await _submit_item(api, user.id)
    async with api.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await conn.fetch(
                "SELECT * FROM genq_submit($1, $2, 'local/sketch', 'a lighthouse', 1, $3, 1, 3,"
                " NULL, NULL, 60, 60, $4, $5)",
                item.job_id, user.id, item.params, item.price_per_output, item.revision)
    assert caught.value.constraint_name == "users_account_disabled"
    await api.client.post(f"/v1/admin/users/{user.id}/enable", headers=ADMIN)
    assert await api.balance(user) == (10, 0)


async def test_submissions_racing_a_disable_leave_no_queued_job(api: Api) -> None:
    user = await api.user(credits=1000)

    async def submit() -> int:
        r = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
        return r.status_code

    async def disable() -> int:
        await asyncio.sleep(0.02)
        r = await api.client.post(f"/v1/admin/users/{user.id}/disable", headers=ADMIN)
        return r.status_code

    codes = await asyncio.gather(*(submit() for _ in range(40)), disable())
    assert codes[-1] == 200
    assert set(codes[:-1]) <= {202, 403}, codes
    assert await api.pool.fetchval(
        "SELECT count(*) FROM generation_jobs WHERE user_id = $1 AND status = 'queued'",
        user.id) == 0
    account = await assert_invariants(api.pool, user.id)
    assert (account.balance, account.reserved) == (1000, 0)


async def test_without_its_redis_subscription_a_process_uses_no_cached_key(
    settings: Settings, pool: Pool,
) -> None:
    assert settings.redis_url is not None
    async with proxy_to(settings.redis_url) as proxy:
        via_proxy = settings.model_copy(update={"redis_url": proxy.url_for(settings.redis_url)})
        async with running_app(via_proxy) as (app, client):
            api = Api(app, client, via_proxy, pool)
            await _cache_live(api)
            user = await api.user()
            assert (await client.get("/v1/credits", headers=user.headers)).status_code == 200
            keys = app.state.genq.keys
            assert len(keys) == 1
            await proxy.cut()
            for _ in range(100):
                if not keys.live:
                    break
                await asyncio.sleep(0.05)
            assert not keys.live and len(keys) == 0
            # Revoked by a process whose message cannot arrive: refused here all the same.
            await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1",
                               user.id)
            refused = await client.get("/v1/credits", headers=user.headers)
            assert refused.status_code == 401
            # Subscribed again: it starts from an empty cache.
            await proxy.start()
            await _cache_live(api)
            assert len(keys) == 0
            assert (await client.get("/v1/credits", headers=user.headers)).status_code == 401
