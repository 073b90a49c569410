"""The generated OpenAPI document describes what the app really answers: every route of the app
is in it, and every answer of every route, driven through the real app, has a documented status
and validates against its documented schema (JSON Schema 2020-12) and required headers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from starlette.routing import Match, Route

from api.jobs.models import Job
from api.openapi import openapi_path
from shared.storage import LocalStorage, asset_key
from sql import queries
from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401

JOB = {"model": "local/sketch", "prompt": "a lighthouse"}


@dataclass(frozen=True)
class Answer:
    """One answer the app gave, as the client saw it."""

    method: str
    path: str
    status: int
    headers: httpx.Headers
    content_type: str
    body: bytes


def _operation(api: Api, method: str, path: str) -> tuple[str, str]:
    """The documented (path template, method) the app routed ``method path`` to."""
    scope = {"type": "http", "method": method, "path": path}
    for route in api.app.routes:
        if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
            return openapi_path(route.path), method.lower()
    raise AssertionError(f"no route for {method} {path}")


async def _drive(api: Api) -> list[Answer]:
    """Call every route, with successes and the errors a client meets."""
    answers: list[Answer] = []

    async def record(response: httpx.Response) -> None:
        await response.aread()
        answers.append(Answer(
            response.request.method, response.request.url.path, response.status_code,
            response.headers, response.headers.get("content-type", ""), response.content,
        ))

    api.client.event_hooks["response"].append(record)
    get, post = api.client.get, api.client.post

    await get("/healthz")
    await get("/readyz")
    await get("/openapi.json")

    # Admin: users and grants.
    user = await api.user(credits=10)
    other = await api.user()
    grant = {**ADMIN, "Idempotency-Key": f"g-{user.id}"}
    await post(f"/v1/admin/users/{other.id}/credits", json={"amount": 5}, headers=grant)
    await post(f"/v1/admin/users/{other.id}/credits", json={"amount": 5}, headers=grant)
    await post(f"/v1/admin/users/{uuid.uuid4()}/credits", json={"amount": 1}, headers=ADMIN)
    await post("/v1/admin/users", json={"email": "nope"}, headers=ADMIN)
    await post("/v1/admin/users", json={"email": "a@b.c"},
               headers={"Authorization": "Bearer wrong"})
    put = api.client.put
    await put(f"/v1/admin/users/{other.id}/plan", json={"plan": "free", "max_running": 2},
              headers=ADMIN)
    await put(f"/v1/admin/users/{other.id}/plan", json={"plan": "nope"}, headers=ADMIN)
    await put(f"/v1/admin/users/{uuid.uuid4()}/plan", json={"plan": "free"}, headers=ADMIN)
    quota = f"/v1/admin/users/{other.id}/storage-quota"
    await put(quota, json={"quota_bytes": 10**9}, headers=ADMIN)
    await put(quota, json={"quota_bytes": None}, headers=ADMIN)
    await put(quota, json={"quota_bytes": -1}, headers=ADMIN)
    await put(f"/v1/admin/users/{uuid.uuid4()}/storage-quota", json={"quota_bytes": 1},
              headers=ADMIN)

    # Jobs: submit, replay, refusals.
    auth, keyed = user.headers, {**user.headers, "Idempotency-Key": "k1"}
    job = (await post("/v1/jobs", json=JOB, headers=keyed)).json()
    await post("/v1/jobs", json=JOB, headers=keyed)
    await post("/v1/jobs", json={**JOB, "prompt": "other"}, headers=keyed)
    await post("/v1/jobs", json={**JOB, "num_outputs": 100}, headers=auth)
    await post("/v1/jobs", json={"model": "local/poster", "prompt": "p", "num_outputs": 2},
               headers=other.headers)  # 6 credits, the account holds 5
    await post("/v1/jobs", json={"model": "local/sketch"}, headers=auth)
    await post("/v1/jobs", content=b"{", headers={**auth, "Content-Type": "application/json"})
    await post("/v1/jobs", content=b"x", headers={**auth, "Content-Type": "text/plain"})
    await post("/v1/jobs", json=JOB)
    await get("/v1/jobs", headers=auth)
    await get("/v1/jobs?status=queued&limit=1", headers=auth)
    await get("/v1/jobs?status=nope", headers=auth)
    await get(f"/v1/jobs/{job['id']}", headers=auth)
    await get(f"/v1/jobs/{uuid.uuid4()}", headers=auth)
    await post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    await post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    # Its events, queued then canceled (the stream ends there); another's job; a bad resume.
    events = await get(f"/v1/jobs/{job['id']}/events", headers=auth)
    assert events.text.count("event: job.") == 2, events.text
    await get(f"/v1/jobs/{job['id']}/events", headers=other.headers)
    await get("/v1/events", headers={**auth, "Last-Event-ID": "x"})
    await get("/v1/events?job_id=1", headers=auth)
    running = (await post("/v1/jobs", json=JOB, headers=auth)).json()
    await api.pool.execute(
        "UPDATE generation_jobs SET status = 'running', started_at = now(), attempt = 1, "
        "lease_owner = 'test', lease_expires_at = now() + interval '1 hour' WHERE id = $1",
        uuid.UUID(running["id"]),
    )
    await post(f"/v1/jobs/{running['id']}/cancel", headers=auth)
    # Webhooks: a job with one (canceled: its job.completed waits in the outbox), a refused
    # URL, the job's deliveries, the secret and its rotation.
    hooked = (await post("/v1/jobs", json={**JOB, "webhook_url": "https://1.1.1.1/hooks"},
                         headers=auth)).json()
    await post("/v1/jobs", json={**JOB, "webhook_url": "http://10.0.0.1/x"}, headers=auth)
    await post(f"/v1/jobs/{hooked['id']}/cancel", headers=auth)
    await get(f"/v1/jobs/{hooked['id']}/webhooks", headers=auth)
    await get(f"/v1/jobs/{uuid.uuid4()}/webhooks", headers=auth)
    await get(f"/v1/jobs/{hooked['id']}/webhooks?x=1", headers=auth)
    await get("/v1/webhooks/secret", headers=auth)
    await get("/v1/webhooks/secret?x=1", headers=auth)
    await post("/v1/webhooks/secret/rotate", headers=auth)
    await post("/v1/webhooks/secret/rotate?x=1", headers=auth)

    # Credits and the catalog.
    await get("/v1/credits", headers=auth)
    await get("/v1/credits/ledger?limit=1", headers=auth)
    await get("/v1/credits/ledger?cursor=x", headers=auth)
    await get("/v1/models", headers=auth)
    await get("/v1/models?x=1", headers=auth)
    await get("/v1/me", headers=auth)
    await get("/v1/me")

    # Assets: one stored output with a variant, as a worker leaves them.
    job_id = uuid.UUID(job["id"])
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    key, thumb_key = asset_key(user.id, job_id, 0, "png"), asset_key(user.id, job_id, 1, "webp")
    storage = LocalStorage(api.settings.storage_root)
    storage.write_bytes(key, data)
    storage.write_bytes(thumb_key, b"RIFF0000WEBP")
    asset_id = await api.pool.fetchval(
        "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, storage_key, "
        "file_size_bytes, mime_type, width, height, generation_seed) "
        "VALUES ($1, $2, 0, 'image', $3, $4, 'image/png', 2, 2, 7) RETURNING id",
        user.id, job_id, key, len(data),
    )
    await api.pool.execute(
        "INSERT INTO asset_variants (asset_id, kind, mime_type, width, height, "
        "file_size_bytes, storage_key) VALUES ($1, 'thumb', 'image/webp', 1, 1, 12, $2)",
        asset_id, thumb_key,
    )
    assets = (await get("/v1/assets", headers=auth)).json()
    await get(f"/v1/assets?job_id={job_id}", headers=auth)
    await get("/v1/assets?job_id=nope", headers=auth)
    await get(f"/v1/jobs/{job_id}", headers=auth)
    await get(f"/v1/assets/{asset_id}", headers=auth)
    await get(f"/v1/assets/{uuid.uuid4()}", headers=auth)
    content = await get(f"/v1/assets/{asset_id}/content", headers=auth)
    await get(f"/v1/assets/{asset_id}/content", headers={**auth, "Range": "bytes=0-3"})
    await get(f"/v1/assets/{asset_id}/content",
              headers={**auth, "If-None-Match": content.headers["etag"]})
    await get(f"/v1/assets/{asset_id}/content", headers={**auth, "Range": "bytes=9999-"})
    await get(f"/v1/assets/{asset_id}/variants/thumb", headers=auth)
    await get(f"/v1/assets/{asset_id}/variants/web", headers=auth)
    content_url = assets["data"][0]["content_url"]
    await get(content_url)
    await get(content_url.replace("sig=", "sig=x"))

    # Collections, and the library: save (new, again, refused), list, read, content.
    coll = (await post("/v1/collections", json={"name": "c"}, headers=auth)).json()
    await post("/v1/collections", json={"name": "c"}, headers=auth)
    await get("/v1/collections?limit=1", headers=auth)
    await get("/v1/collections?x=1", headers=auth)
    await get(f"/v1/collections/{coll['id']}", headers=auth)
    await get(f"/v1/collections/{uuid.uuid4()}", headers=auth)
    await api.client.patch(f"/v1/collections/{coll['id']}", json={"description": "d"},
                           headers=auth)
    await post("/v1/collections", json={"name": "taken"}, headers=auth)
    await api.client.patch(f"/v1/collections/{coll['id']}", json={"name": "taken"},
                           headers=auth)
    await api.client.patch(f"/v1/collections/{uuid.uuid4()}", json={}, headers=auth)
    item = (await post("/v1/library", json={"asset_id": str(asset_id), "tags": ["a"],
                                            "collection_id": coll["id"]},
                       headers=auth)).json()
    await api.client.delete(f"/v1/collections/{coll['id']}", headers=auth)
    await api.client.delete(f"/v1/collections/{coll['id']}", headers=auth)
    await post("/v1/library", json={"asset_id": str(asset_id)}, headers=auth)
    await post("/v1/library", json={"asset_id": str(uuid.uuid4())}, headers=auth)
    await post("/v1/library", json={"asset_id": "nope"}, headers=auth)
    await get("/v1/library?q=lighthouse&tag=a&limit=1", headers=auth)
    await get("/v1/library?favorite=maybe", headers=auth)
    await get(f"/v1/library/{item['id']}", headers=auth)
    await get(f"/v1/library/{uuid.uuid4()}", headers=auth)
    await get(f"/v1/library/{item['id']}/content", headers=auth)
    await get(f"/v1/library/{uuid.uuid4()}/content", headers=auth)
    lib = f"/v1/library/{item['id']}"
    await api.client.patch(lib, json={"visibility": "public"}, headers=auth)
    await get("/v1/feed?limit=1")
    await get("/v1/feed?type=gif")
    await get(f"/v1/shared/{item['short_id']}")
    await get(f"/v1/shared/{item['short_id']}/content")
    await get("/v1/shared/AAAAAAAAAAA")
    await get("/v1/shared/AAAAAAAAAAA/content")
    await post(f"/v1/admin/library/{item['id']}/takedown", json={"reason": "r"}, headers=ADMIN)
    await post(f"/v1/admin/library/{uuid.uuid4()}/takedown", json={"reason": "r"},
               headers=ADMIN)
    await api.client.patch(lib, json={"title": "t", "collection_id": None}, headers=auth)
    await api.client.patch(lib, json={"title": 5}, headers=auth)
    await api.client.patch(f"/v1/library/{uuid.uuid4()}", json={}, headers=auth)
    await post(f"{lib}/restore", headers=auth)
    await api.client.delete(lib, headers=auth)
    await api.client.delete(f"/v1/library/{uuid.uuid4()}", headers=auth)
    await post(f"/v1/library/{uuid.uuid4()}/restore", headers=auth)
    await api.pool.execute("UPDATE library_usage SET quota_bytes = 0 WHERE user_id = $1",
                           user.id)
    await post(f"{lib}/restore", headers=auth)
    await api.pool.execute("DELETE FROM user_library WHERE id = $1", uuid.UUID(item["id"]))
    await post("/v1/library", json={"asset_id": str(asset_id)}, headers=auth)

    # Keys, admin users, credit corrections, job refunds and the audit log.
    made = (await post("/v1/me/keys", headers=auth)).json()
    await get("/v1/me/keys?limit=1", headers=auth)
    await get("/v1/me/keys?x=1", headers=auth)
    await api.client.delete(f"/v1/me/keys/{made['id']}", headers=auth)
    await api.client.delete(f"/v1/me/keys/{uuid.uuid4()}", headers=auth)
    theirs = (await post(f"/v1/admin/users/{other.id}/keys", headers=ADMIN)).json()
    await post(f"/v1/admin/users/{uuid.uuid4()}/keys", headers=ADMIN)
    await api.client.delete(f"/v1/admin/keys/{theirs['id']}", headers=ADMIN)
    await api.client.delete(f"/v1/admin/keys/{uuid.uuid4()}", headers=ADMIN)
    await get(f"/v1/admin/users?email={other.id}@example.com", headers=ADMIN)
    await get("/v1/admin/users?limit=1", headers=ADMIN)
    await get("/v1/admin/users?cursor=x", headers=ADMIN)
    await get(f"/v1/admin/users/{user.id}", headers=ADMIN)
    await get(f"/v1/admin/users/{uuid.uuid4()}", headers=ADMIN)
    await post(f"/v1/admin/users/{other.id}/credits", json={"amount": -1}, headers=ADMIN)
    await post(f"/v1/admin/users/{other.id}/credits", json={"amount": -10**6}, headers=ADMIN)
    spent = (await post("/v1/jobs", json=JOB, headers=auth)).json()
    await post(f"/v1/admin/jobs/{spent['id']}/refund", json={}, headers=ADMIN)
    await api.pool.execute(
        "UPDATE generation_jobs SET status = 'running', attempt = 1 WHERE id = $1",
        uuid.UUID(spent["id"]))
    await api.pool.execute("SELECT genq_finalize($1, 1, 'succeeded', 1, NULL, NULL, "
                           "'[]'::jsonb, 60)", uuid.UUID(spent["id"]))
    await post(f"/v1/admin/jobs/{spent['id']}/refund", json={"reason": "bad"}, headers=ADMIN)
    await post(f"/v1/admin/jobs/{spent['id']}/refund", json={"reason": "bad"}, headers=ADMIN)
    await post(f"/v1/admin/jobs/{uuid.uuid4()}/refund", json={}, headers=ADMIN)
    await post(f"/v1/admin/users/{other.id}/disable", headers=ADMIN)
    await get("/v1/me", headers=other.headers)
    await post(f"/v1/admin/users/{other.id}/enable", headers=ADMIN)
    await post(f"/v1/admin/users/{uuid.uuid4()}/disable", headers=ADMIN)
    await post(f"/v1/admin/users/{uuid.uuid4()}/enable", headers=ADMIN)
    await get("/v1/admin/audit?limit=2", headers=ADMIN)
    await get("/metrics", headers=ADMIN)
    await get("/metrics")
    await get("/v1/admin/audit?cursor=x", headers=ADMIN)
    return answers


async def test_every_route_is_documented_and_every_answer_matches_its_schema(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    routes = {
        (openapi_path(route.path), method.lower())
        for route in api.app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented

    answers = await _drive(api)
    seen: dict[tuple[str, str], set[int]] = {}
    for answer in answers:
        where = _operation(api, answer.method, answer.path)
        seen.setdefault(where, set()).add(answer.status)
        documented_answers = document["paths"][where[0]][where[1]]["responses"]
        assert str(answer.status) in documented_answers, (where, answer.status, answer.body)
        spec = documented_answers[str(answer.status)]
        for name, header in spec.get("headers", {}).items():
            if header.get("required"):
                assert name in answer.headers, (where, answer.status, name)
        json_schema = spec.get("content", {}).get("application/json", {}).get("schema")
        if json_schema is None:
            continue
        assert answer.content_type.startswith("application/json"), (where, answer.status)
        validator = Draft202012Validator(
            {**json_schema, "components": document["components"]},
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        body = httpx.Response(200, content=answer.body).json()
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(body)]
        assert errors == [], (where, answer.status, errors)

    # Every documented operation was driven, and the answers cover each kind of status.
    assert set(seen) == documented
    assert seen[("/v1/jobs", "post")] >= {202, 400, 401, 402, 409, 415, 422}
    assert seen[("/v1/jobs/{job_id}/cancel", "post")] == {200, 202, 409}
    assert seen[("/v1/admin/users/{user_id}/credits", "post")] == {200, 402, 404}
    assert seen[("/v1/admin/jobs/{job_id}/refund", "post")] == {200, 404, 409}
    assert seen[("/v1/me", "get")] == {200, 401, 403}
    assert seen[("/v1/assets/{asset_id}/content", "get")] == {200, 206, 304, 416}
    assert seen[("/v1/files/{key}", "get")] == {200, 403}
    assert seen[("/v1/library", "post")] == {200, 201, 403, 404, 422}
    assert seen[("/v1/library/{item_id}/restore", "post")] == {200, 403, 404}


async def test_the_job_response_reads_exactly_the_columns_of_its_one_query(api: Api) -> None:
    """Adding a field to the job response is one column of the ``job_responses`` view (which
    ``get_job`` and ``list_jobs`` select) and one field of :class:`Job`: ``Job.from_row`` reads
    every column the query gives but the owner (which scopes it), and nothing else."""
    user = await api.user(credits=10)
    job = (await api.client.post("/v1/jobs", json=JOB, headers=user.headers)).json()
    read: set[str] = set()

    class Recording(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            read.add(key)
            return super().__getitem__(key)

    for query, args in (("get_job", (uuid.UUID(job["id"]), user.id)),
                        ("list_jobs", (user.id, None, None, None, 1))):
        row = await api.pool.fetchrow(queries[query], *args)
        assert row is not None
        read.clear()
        shown = Job.from_row(Recording(row.items()))
        assert read == set(row.keys()) - {"user_id"}, query
        assert shown.model_dump(mode="json") == job
