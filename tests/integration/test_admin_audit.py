"""Every admin route writes exactly one audit row, naming the admin and the request; the audit log
is append-only and listed newest first."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from api.app import endpoints
from shared.db import Pool
from shared.settings import Settings
from tests.integration.api_support import ADMIN, Api, api_fixture, running_app  # noqa: F401

OPS_TOKEN = "ops-admin-token-0123456789abcdefghij"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 1, "params": {}}


@pytest.fixture(name="named")
async def named_admins(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    """The app with two admins: GENQ_ADMIN_TOKEN (``admin``) and ``ops``."""
    both = settings.model_copy(update={"admin_tokens": {"ops": SecretStr(OPS_TOKEN)}})
    async with running_app(both) as (app, client):
        yield Api(app, client, both, pool)


async def _audit_rows(pool: Pool, request_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM audit_log WHERE request_id = $1", request_id)


async def test_every_admin_route_writes_one_audit_row_with_its_admin_and_request(
    named: Api,
) -> None:
    api = named
    user = await api.user(credits=10)
    job = (await api.client.post("/v1/jobs", json=JOB, headers=user.headers)).json()
    await api.pool.execute("UPDATE generation_jobs SET status = 'running', attempt = 1 "
                           "WHERE id = $1", uuid.UUID(job["id"]))
    await api.pool.execute("SELECT genq_finalize($1, 1, 'succeeded', 1, NULL, NULL, "
                           "'[]'::jsonb, 60)", uuid.UUID(job["id"]))
    key = (await api.client.post("/v1/me/keys", headers=user.headers)).json()
    asset = await api.pool.fetchval(
        "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, storage_key, "
        "file_size_bytes, mime_type) VALUES ($1, $2, 0, 'image', 'k', 1, 'image/png') "
        "RETURNING id", user.id, uuid.UUID(job["id"]))
    item = await api.pool.fetchval(
        "SELECT item_id FROM genq_library_save($1, $2, 'abcdefghijk', 'lib/k', '[]'::jsonb, "
        "NULL, '{}'::text[], NULL, false, 'private', $3)", user.id, asset, 10**9)

    calls: dict[tuple[str, str], Callable[[dict[str, str]], Awaitable[httpx.Response]]] = {
        ("POST", "/v1/admin/users"): lambda h: api.client.post(
            "/v1/admin/users", json={"email": f"{uuid.uuid4().hex}@example.com"}, headers=h),
        ("GET", "/v1/admin/users"): lambda h: api.client.get(
            f"/v1/admin/users?email={user.id}@example.com", headers=h),
        ("GET", "/v1/admin/users/{user_id}"): lambda h: api.client.get(
            f"/v1/admin/users/{user.id}", headers=h),
        ("POST", "/v1/admin/users/{user_id}/credits"): lambda h: api.client.post(
            f"/v1/admin/users/{user.id}/credits", json={"amount": -2}, headers=h),
        ("PUT", "/v1/admin/users/{user_id}/plan"): lambda h: api.client.put(
            f"/v1/admin/users/{user.id}/plan", json={"plan": "free"}, headers=h),
        ("PUT", "/v1/admin/users/{user_id}/storage-quota"): lambda h: api.client.put(
            f"/v1/admin/users/{user.id}/storage-quota", json={"quota_bytes": 10**6}, headers=h),
        ("POST", "/v1/admin/users/{user_id}/keys"): lambda h: api.client.post(
            f"/v1/admin/users/{user.id}/keys", headers=h),
        ("DELETE", "/v1/admin/keys/{key_id}"): lambda h: api.client.delete(
            f"/v1/admin/keys/{key['id']}", headers=h),
        ("POST", "/v1/admin/users/{user_id}/disable"): lambda h: api.client.post(
            f"/v1/admin/users/{user.id}/disable", headers=h),
        ("POST", "/v1/admin/users/{user_id}/enable"): lambda h: api.client.post(
            f"/v1/admin/users/{user.id}/enable", headers=h),
        ("POST", "/v1/admin/jobs/{job_id}/refund"): lambda h: api.client.post(
            f"/v1/admin/jobs/{job['id']}/refund", json={"reason": "blurry"}, headers=h),
        ("POST", "/v1/admin/library/{item_id}/takedown"): lambda h: api.client.post(
            f"/v1/admin/library/{item}/takedown", json={"reason": "spam"}, headers=h),
        ("GET", "/v1/admin/audit"): lambda h: api.client.get("/v1/admin/audit", headers=h),
    }
    # Every admin route (GET /metrics takes the admin token too, but a scrape is no action).
    admin_routes = {(e.method, e.path) for e in endpoints() if e.auth == "admin"}
    assert set(calls) == admin_routes - {("GET", "/metrics")}  # a new one must be added here

    for i, (route, call) in enumerate(sorted(calls.items())):
        token, name = (OPS, "ops") if i % 2 else (ADMIN, "admin")
        request_id = f"audit-{i}-{uuid.uuid4().hex}"
        r = await call({**token, "X-Request-ID": request_id})
        assert r.status_code < 300, (route, r.text)
        rows = await _audit_rows(api.pool, request_id)
        assert len(rows) == 1, route
        assert rows[0]["actor"] == name, route

    # The credit actions carry the balance before and after.
    adjust = await api.pool.fetchrow(
        "SELECT * FROM audit_log WHERE action = 'credits.adjust'")
    refund = await api.pool.fetchrow("SELECT * FROM audit_log WHERE action = 'job.refund'")
    assert adjust is not None and refund is not None
    assert (adjust["target_id"], adjust["amount_after"] - adjust["amount_before"]) == (
        str(user.id), -2)
    assert (refund["target_type"], refund["target_id"]) == ("job", job["id"])
    assert refund["amount_after"] - refund["amount_before"] == 1

    # A refused admin request writes nothing.
    count = await api.pool.fetchval("SELECT count(*) FROM audit_log")
    missing = await api.client.post(f"/v1/admin/users/{uuid.uuid4()}/credits",
                                    json={"amount": 1}, headers=ADMIN)
    short = await api.client.post(f"/v1/admin/users/{user.id}/credits",
                                  json={"amount": -10**6}, headers=ADMIN)
    wrong = await api.client.get("/v1/admin/audit", headers={"Authorization": "Bearer nope"})
    assert (missing.status_code, short.status_code, wrong.status_code) == (404, 402, 401)
    assert await api.pool.fetchval("SELECT count(*) FROM audit_log") == count


async def test_the_audit_log_is_listed_newest_first_and_cannot_be_changed(api: Api) -> None:
    for n in range(3):
        await api.user()
        assert n >= 0
    first = await api.client.get("/v1/admin/audit?limit=2", headers=ADMIN)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [e["action"] for e in page["data"]] == ["user.create", "user.create"]
    assert page["data"][0]["id"] > page["data"][1]["id"]
    assert page["data"][0]["actor"] == "admin"
    rest = await api.client.get(f"/v1/admin/audit?cursor={page['next_cursor']}",
                                headers=ADMIN)
    assert [e["action"] for e in rest.json()["data"]] == ["user.create"]
    assert rest.json()["next_cursor"] is None
    bad = await api.client.get("/v1/admin/audit?since=1", headers=ADMIN)
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_error")

    # Reading it is an action too: two reads above, each one row.
    assert await api.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'audit.list'") == 2
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await api.pool.execute(statement)
    assert await api.pool.fetchval("SELECT count(*) FROM audit_log") == 5
