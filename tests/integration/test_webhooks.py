"""Webhooks through the real app and the real delivery loop (``worker.webhooks.Deliverer``)
against a receiver on 127.0.0.1 that verifies every delivery with ``standardwebhooks``: what
submit accepts and refuses, the outbox a job's changes write, the signatures, retries, 410,
the check of the address at delivery, and the secret's rotation."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.db import Pool
from shared.metrics import Metrics
from shared.settings import Settings
from shared.webhooks import MAX_ATTEMPTS
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.api_support import Api, User, running_app
from worker.webhooks import Deliverer

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "params": {"width": 8, "height": 8}}


@pytest.fixture(name="hooks_settings")
def hooks_settings_fixture(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allowed_hosts": ["127.0.0.1"]})


@pytest.fixture(name="api")
async def api_with_hooks(hooks_settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    async with running_app(hooks_settings) as (app, client):
        yield Api(app, client, hooks_settings, pool)


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@contextlib.asynccontextmanager
async def delivering(pool: Pool, settings: Settings,
                     metrics: Metrics | None = None) -> AsyncIterator[Deliverer]:
    """The delivery loop running in this process until the block ends."""
    deliverer = Deliverer(pool, settings, metrics)
    task = asyncio.create_task(deliverer.run())
    try:
        yield deliverer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


async def secret_of(api: Api, user: User) -> str:
    r = await api.client.get("/v1/webhooks/secret", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    secret = r.json()["secret"]
    assert isinstance(secret, str) and secret.startswith("whsec_")
    return secret


async def submit(api: Api, user: User, **fields: object) -> dict[str, Any]:
    r = await api.client.post("/v1/jobs", json={**JOB, **fields}, headers=user.headers)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def deliveries(api: Api, user: User, job_id: object) -> list[dict[str, Any]]:
    r = await api.client.get(f"/v1/jobs/{job_id}/webhooks", headers=user.headers)
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


async def start_job(pool: Pool, job_id: object) -> None:
    """What a worker's claim does to the job row (started_at set, running)."""
    await pool.execute(
        "UPDATE generation_jobs SET status = 'running', started_at = now(), attempt = 1, "
        "lease_owner = 'test', lease_expires_at = now() + interval '1 hour' WHERE id = $1",
        uuid.UUID(str(job_id)))


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hook",                 # private
    "http://192.168.1.20:8080/hook",        # private
    "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "http://127.0.0.2/hook",                # loopback, not in the allowed hosts
    "http://[::1]/hook",                    # loopback
    "http://[fe80::1]/hook",                # link-local
    "http://224.0.0.1/hook",                # multicast
    "http://localhost/hook",                # a name resolving to loopback
    "ftp://example.com/hook",               # scheme
    "https://user:pw@example.com/hook",     # credentials
    "https://example.com/" + "a" * 2048,    # length
    "/relative/hook",
])
async def test_submit_refuses_a_webhook_url_genq_must_not_call(api: Api, url: str) -> None:
    user = await api.user(credits=10)
    r = await api.client.post("/v1/jobs", json={**JOB, "webhook_url": url}, headers=user.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == ["webhook_url"]
    # Nothing was written: no job, no hold.
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0
    assert await api.balance(user) == (10, 0)


async def test_webhook_events_are_checked(api: Api) -> None:
    user = await api.user(credits=10)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"webhook_events": ["completed"]}, "webhook_events"),  # no URL
        ({"webhook_url": "https://1.1.1.1/h", "webhook_events": []}, "webhook_events"),
        ({"webhook_url": "https://1.1.1.1/h", "webhook_events": ["done"]}, "webhook_events"),
        ({"webhook_url": "https://1.1.1.1/h", "webhook_events": ["output", "output"]},
         "webhook_events"),
    ]
    for body, field in cases:
        r = await api.client.post("/v1/jobs", json={**JOB, **body}, headers=user.headers)
        assert r.status_code == 422, (body, r.text)
        assert field in {d["field"].split(".")[0] for d in r.json()["error"]["details"]}, r.text
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


async def test_the_job_shows_its_webhook_and_only_jobs_with_one_store_it(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    hooked = await submit(api, user, webhook_url=receiver.url)
    every = await submit(api, user, webhook_url=receiver.url,
                         webhook_events=["started", "output", "completed"])
    plain = await submit(api, user)
    assert (hooked["webhook_url"], hooked["webhook_events"]) == (receiver.url, ["completed"])
    assert every["webhook_events"] == ["started", "output", "completed"]
    assert (plain["webhook_url"], plain["webhook_events"]) == (None, None)
    listed = (await api.client.get("/v1/jobs", headers=user.headers)).json()["data"]
    assert {j["id"]: j["webhook_url"] for j in listed} == {
        hooked["id"]: receiver.url, every["id"]: receiver.url, plain["id"]: None}
    rows = await api.pool.fetch("SELECT job_id FROM job_webhooks")
    assert {str(r["job_id"]) for r in rows} == {hooked["id"], every["id"]}
    flags = await api.pool.fetch("SELECT id, has_webhook FROM generation_jobs")
    assert {str(r["id"]): r["has_webhook"] for r in flags} == {
        hooked["id"]: True, every["id"]: True, plain["id"]: False}


async def test_the_webhook_is_part_of_the_idempotency_fingerprint(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    keyed = {**user.headers, "Idempotency-Key": "hook-1"}
    body = {**JOB, "webhook_url": receiver.url}
    first = await api.client.post("/v1/jobs", json=body, headers=keyed)
    again = await api.client.post("/v1/jobs", json=body, headers=keyed)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["webhook_url"] == receiver.url
    for changed in ({**body, "webhook_url": receiver.url + "/other"},
                    {**body, "webhook_events": ["started"]},
                    dict(JOB)):
        r = await api.client.post("/v1/jobs", json=changed, headers=keyed)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_key_reused"
    assert await api.pool.fetchval("SELECT count(*) FROM job_webhooks") == 1
    assert await api.balance(user) == (9, 1)


async def test_a_cancel_writes_one_completed_event_and_a_job_without_webhook_none(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    hooked = await submit(api, user, webhook_url=receiver.url,
                          webhook_events=["started", "output", "completed"])
    plain = await submit(api, user)
    for job in (hooked, plain):
        r = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        assert r.status_code == 200, r.text
    rows = await api.pool.fetch(
        "SELECT job_id, event_type, snapshot FROM webhook_deliveries ORDER BY created_at")
    # A queued job that is canceled never started: one job.completed, the job as canceled.
    assert [(str(r["job_id"]), r["event_type"]) for r in rows] == [
        (hooked["id"], "job.completed")]
    snapshot = rows[0]["snapshot"]
    assert (snapshot["status"], snapshot["refunded"]) == ("canceled", 1)
    assert await deliveries(api, user, plain["id"]) == []
    other = await api.user()
    r = await api.client.get(f"/v1/jobs/{hooked['id']}/webhooks", headers=other.headers)
    assert r.status_code == 404


async def test_a_delivery_is_signed_and_its_attempt_listed(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    receiver.secrets = [await secret_of(api, user)]
    job = await submit(api, user, webhook_url=receiver.url)
    await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    async with delivering(api.pool, api.settings):
        await eventually(lambda: _delivered(api, user, job["id"]), "delivered")
    (seen,) = receiver.seen()
    assert seen.verified_by == (0,)
    assert (seen.type, seen.job_id) == ("job.completed", job["id"])
    assert set(seen.body) == {"id", "type", "created_at", "data"}
    assert seen.body["id"] == seen.webhook_id
    data = seen.body["data"]
    assert (data["status"], data["cost"]["refunded"], data["webhook_url"]) == (
        "canceled", 1, receiver.url)
    (delivery,) = await deliveries(api, user, job["id"])
    assert (delivery["id"], delivery["type"], delivery["state"]) == (
        seen.webhook_id, "job.completed", "delivered")
    (attempt,) = delivery["attempts"]
    assert (attempt["status_code"], attempt["error"]) == (200, None)
    assert delivery["next_attempt_at"] is None


async def _delivered(api: Api, user: User, job_id: object, n: int = 1) -> bool:
    found = await deliveries(api, user, job_id)
    return len(found) == n and all(d["state"] == "delivered" for d in found)


async def test_a_failed_delivery_is_retried_with_the_same_webhook_id(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    receiver.secrets = [await secret_of(api, user)]
    receiver.status = 503
    job = await submit(api, user, webhook_url=receiver.url)
    await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    async with delivering(api.pool, api.settings):
        await eventually(lambda: _called(receiver, 3), "three attempts")
        receiver.status = 200
        await eventually(lambda: _delivered(api, user, job["id"]), "delivered")
    seen = receiver.seen()
    assert len({d.webhook_id for d in seen}) == 1
    assert all(d.verified_by == (0,) for d in seen)
    (delivery,) = await deliveries(api, user, job["id"])
    codes = [a["status_code"] for a in delivery["attempts"]]
    assert codes[:3] == [503, 503, 503] and codes[-1] == 200, codes
    assert delivery["attempts"][0]["error"] == "HTTP 503"
    times = [datetime.fromisoformat(a["attempted_at"]) for a in delivery["attempts"]]
    # Backed off: the second wait is longer than the first (1 s, then 2 s, with 20 % jitter).
    assert times[2] - times[1] > times[1] - times[0] > timedelta(seconds=0.7)


async def _called(receiver: WebhookReceiver, n: int) -> bool:
    return len(receiver.seen()) >= n


async def test_a_receiver_answering_410_is_not_called_again(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    receiver.secrets = [await secret_of(api, user)]
    receiver.status = 410
    job = await submit(api, user, webhook_url=receiver.url,
                       webhook_events=["started", "output", "completed"])
    async with delivering(api.pool, api.settings):
        await start_job(api.pool, job["id"])
        await eventually(lambda: _states(api, user, job["id"], ["gone"]), "gone")
        # The job goes on and ends: no event of it is sent any more.
        await api.pool.execute(
            "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1",
            uuid.UUID(str(job["id"])))
        await api.pool.execute(
            "SELECT genq_finalize($1, 1, 'failed', 0, 'x', 'x', '[]'::jsonb, 60)",
            uuid.UUID(str(job["id"])))
        await asyncio.sleep(1.5)
    assert [d.type for d in receiver.seen()] == ["job.started"]
    (gone,) = await deliveries(api, user, job["id"])
    assert gone["attempts"][0]["status_code"] == 410
    assert await api.pool.fetchval(
        "SELECT disabled_at IS NOT NULL FROM job_webhooks WHERE job_id = $1",
        uuid.UUID(str(job["id"])))


async def _states(api: Api, user: User, job_id: object, states: list[str]) -> bool:
    return [d["state"] for d in await deliveries(api, user, job_id)] == states


async def test_a_host_resolving_to_a_private_address_at_delivery_is_not_called(
        api: Api, pool: Pool, receiver: WebhookReceiver) -> None:
    # At submit "localhost" was allowed (as if its DNS answer was public then); the loop's
    # settings do not allow it, and "localhost" resolves to loopback now.
    url = f"http://localhost:{receiver.port}/hooks/genq"
    user = await api.user(credits=10)
    submitting = api.settings.model_copy(update={"webhook_allowed_hosts": ["localhost"]})
    async with running_app(submitting) as (_, client):
        r = await client.post("/v1/jobs", json={**JOB, "webhook_url": url}, headers=user.headers)
        assert r.status_code == 202, r.text
        job = r.json()
    await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    async with delivering(pool, api.settings):
        await eventually(lambda: _attempted(api, user, job["id"], 2), "two attempts")
    assert receiver.seen() == []
    (delivery,) = await deliveries(api, user, job["id"])
    assert delivery["state"] == "pending" and delivery["next_attempt_at"] is not None
    for attempt in delivery["attempts"]:
        assert attempt["status_code"] is None
        assert "non-public address" in attempt["error"], attempt


async def _attempted(api: Api, user: User, job_id: object, n: int) -> bool:
    found = await deliveries(api, user, job_id)
    return bool(found) and len(found[0]["attempts"]) >= n


async def test_after_a_rotation_deliveries_verify_with_either_secret(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    old = await secret_of(api, user)
    r = await api.client.post("/v1/webhooks/secret/rotate", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    new = r.json()["secret"]
    assert new != old and new == await secret_of(api, user)
    expires = datetime.fromisoformat(r.json()["previous_expires_at"])
    created = datetime.fromisoformat(r.json()["created_at"])
    assert timedelta(hours=23, minutes=59) < expires - created <= timedelta(hours=24, seconds=5)
    receiver.secrets = [old, new]
    jobs = [await submit(api, user, webhook_url=receiver.url) for _ in range(3)]
    for job in jobs:
        await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    async with delivering(api.pool, api.settings):
        await eventually(lambda: _called(receiver, 3), "three deliveries")
    seen = receiver.seen()
    assert sorted(d.job_id for d in seen) == sorted(str(j["id"]) for j in jobs)
    # Each one verifies with the old secret alone and with the new one alone.
    assert all(d.verified_by == (0, 1) for d in seen), seen


async def test_once_the_overlap_ends_only_the_new_secret_signs(
        hooks_settings: Settings, pool: Pool, receiver: WebhookReceiver) -> None:
    short = hooks_settings.model_copy(update={"webhook_secret_overlap_s": 1})
    async with running_app(short) as (app, client):
        api = Api(app, client, short, pool)
        user = await api.user(credits=10)
        old = await secret_of(api, user)
        new = (await client.post("/v1/webhooks/secret/rotate", headers=user.headers)).json()
        await asyncio.sleep(1.2)
        assert (await client.get("/v1/webhooks/secret", headers=user.headers)).json()[
            "previous_expires_at"] is None
        receiver.secrets = [old, new["secret"]]
        job = await submit(api, user, webhook_url=receiver.url)
        await client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        async with delivering(pool, short):
            await eventually(lambda: _called(receiver, 1), "one delivery")
    assert [d.verified_by for d in receiver.seen()] == [(1,)]


async def test_concurrent_rotations_leave_one_current_secret(api: Api) -> None:
    user = await api.user()
    await secret_of(api, user)
    answers = await asyncio.gather(*(
        api.client.post("/v1/webhooks/secret/rotate", headers=user.headers) for _ in range(8)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    current = await api.pool.fetch(
        "SELECT secret FROM webhook_secrets WHERE user_id = $1 AND expires_at IS NULL", user.id)
    assert len(current) == 1
    assert current[0]["secret"] == await secret_of(api, user)
    assert await api.pool.fetchval(
        "SELECT count(*) FROM webhook_secrets WHERE user_id = $1", user.id) == 9


async def test_a_receiver_never_has_more_than_its_places_in_flight(
        api: Api, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    receiver.secrets = [await secret_of(api, user)]
    receiver.hang = True
    three = api.settings.model_copy(update={"webhook_per_receiver": 3})
    jobs = [await submit(api, user, webhook_url=receiver.url) for _ in range(6)]
    async with delivering(api.pool, three):
        # One delivery in flight first, then more arrive while it hangs: they get the two
        # places left, no more.
        await api.client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user.headers)
        await eventually(lambda: _called(receiver, 1), "the first POST")
        for job in jobs[1:]:
            await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        await eventually(lambda: _called(receiver, 3), "three POSTs")
        await asyncio.sleep(1.5)  # several polls of the loop
        assert len(receiver.seen()) == 3


def _attempts_counted(metrics: Metrics) -> dict[tuple[str, str], int]:
    """``genq_webhook_attempts_total`` by (event, outcome), as the text format shows it."""
    return {(s.labels["event"], s.labels["outcome"]): int(s.value)
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples if s.name == "genq_webhook_attempts_total"}


def _gauge(metrics: Metrics, name: str) -> float:
    (value,) = [s.value for family in text_string_to_metric_families(
        metrics.exposition().decode()) for s in family.samples if s.name == name]
    return value


async def test_the_loop_counts_each_attempt_by_event_and_outcome(
        api: Api, pool: Pool, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    secret = await secret_of(api, user)
    receiver.secrets = [secret]
    receiver.status = 503
    gone = WebhookReceiver([secret], status=410).start()
    try:
        retried = await submit(api, user, webhook_url=receiver.url)
        ended = await submit(api, user, webhook_url=gone.url,
                             webhook_events=["started", "completed"])
        last = await submit(api, user, webhook_url=receiver.url)
        # A host allowed at submit that the loop refuses (it resolves to loopback).
        submitting = api.settings.model_copy(update={"webhook_allowed_hosts": ["localhost"]})
        async with running_app(submitting) as (_, client):
            r = await client.post("/v1/jobs", json={
                **JOB, "webhook_url": f"http://localhost:{receiver.port}/hooks/genq"},
                headers=user.headers)
            assert r.status_code == 202, r.text
            blocked = r.json()
        for job in (retried, last, blocked):
            await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        # The last one has used every attempt but one: its next failure gives up.
        await pool.execute("UPDATE webhook_deliveries SET attempts = $2 WHERE job_id = $1",
                           uuid.UUID(last["id"]), MAX_ATTEMPTS - 1)
        metrics = Metrics()
        async with delivering(pool, api.settings, metrics):
            await start_job(pool, ended["id"])
            await eventually(lambda: _states(api, user, ended["id"], ["gone"]), "gone")
            await eventually(lambda: _states(api, user, last["id"], ["failed"]), "given up")
            await eventually(lambda: _called(receiver, 3), "two failures of the first job")
            await eventually(lambda: _attempted(api, user, blocked["id"], 2), "two refusals")
            receiver.status = 200
            await eventually(lambda: _delivered(api, user, retried["id"]), "delivered")
            await asyncio.sleep(0.3)
        counted = _attempts_counted(metrics)
    finally:
        gone.stop()
    # Every event type and outcome is there from the start; these moved.
    assert set(counted) == {(f"job.{e}", o) for e in ("started", "output", "completed")
                            for o in ("delivered", "retrying", "blocked", "gone", "given_up")}
    tries = {name: [a["status_code"] for a in (await deliveries(api, user, job["id"]))[0][
        "attempts"]] for name, job in
        {"retried": retried, "last": last, "blocked": blocked, "ended": ended}.items()}
    assert tries["ended"] == [410] and tries["last"] == [503]
    assert tries["retried"][-1] == 200 and set(tries["retried"][:-1]) == {503}
    assert set(tries["blocked"]) == {None}
    assert {k: v for k, v in counted.items() if v} == {
        ("job.started", "gone"): 1,
        ("job.completed", "given_up"): 1,
        ("job.completed", "retrying"): len(tries["retried"]) - 1,
        ("job.completed", "delivered"): 1,
        ("job.completed", "blocked"): len(tries["blocked"]),
    }
    # One POST time per attempt, one delivery lag per delivery.
    text = metrics.exposition().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("genq_webhook_attempt_seconds_count", (("outcome", "retrying"),))] == len(
        tries["retried"]) - 1
    assert samples[("genq_webhook_attempt_seconds_count", (("outcome", "gone"),))] == 1
    assert samples[("genq_webhook_delivery_lag_seconds_count",
                    (("event", "job.completed"),))] == 1
    # The delivery waited out at least its first retries (1 s, then 2 s, less jitter).
    assert samples[("genq_webhook_delivery_lag_seconds_sum",
                    (("event", "job.completed"),))] > 2.0
    # No label names a receiver, a user or a job.
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                assert not any(part in value for part in (
                    "127.0.0.1", "localhost", str(receiver.port), str(gone.port), str(user.id),
                    retried["id"], ended["id"], last["id"], blocked["id"])), sample


async def test_the_backlog_is_the_due_deliveries_not_yet_taken(
        api: Api, pool: Pool, receiver: WebhookReceiver) -> None:
    user = await api.user(credits=10)
    receiver.secrets = [await secret_of(api, user)]
    jobs = [await submit(api, user, webhook_url=receiver.url) for _ in range(4)]
    for job in jobs:
        await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    ids = [uuid.UUID(job["id"]) for job in jobs]
    # Due for a minute, due now, due now, and not due for an hour.
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now() - interval "
                       "'60 seconds' WHERE job_id = $1", ids[0])
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now() + interval "
                       "'1 hour' WHERE job_id = $1", ids[3])
    metrics = Metrics()
    deliverer = Deliverer(pool, api.settings, metrics)
    try:
        await deliverer.measure_backlog()
    finally:
        await deliverer.aclose()
    assert _gauge(metrics, "genq_webhook_deliveries_due") == 3
    assert 60 <= _gauge(metrics, "genq_webhook_oldest_due_age_seconds") < 120
    # The running loop sends the due ones and measures again: nothing due, the hour-later one
    # still pending.
    async with delivering(pool, api.settings, metrics):

        async def drained() -> bool:
            return (_gauge(metrics, "genq_webhook_deliveries_due") == 0
                    and _gauge(metrics, "genq_webhook_oldest_due_age_seconds") == 0)

        await eventually(drained, "the backlog measured empty")
    assert sorted(d.job_id for d in receiver.seen()) == sorted(j["id"] for j in jobs[:3])
    assert [d["state"] for d in await deliveries(api, user, jobs[3]["id"])] == ["pending"]
