"""Webhooks with real processes: jobs submitted to the app run on a real ``genq worker``, and a
real ``genq scheduler`` (whose delivery loop sends the outbox) calls receivers on 127.0.0.1
(allowed hosts) that verify every delivery with the ``standardwebhooks`` package, and counts
them in its ``/metrics``."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.db import Pool
from shared.embedded import free_port
from shared.settings import Settings
from tests.acceptance.recovery_support import GenqProcess, Processes
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.api_support import Api, User, running_app

JOB = {"model": "local/sketch", "prompt": "p", "num_outputs": 1,
       "params": {"width": 8, "height": 8}}


@pytest.fixture(name="api")
async def api_with_hooks(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    configured = settings.model_copy(update={"webhook_allowed_hosts": ["127.0.0.1"]})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


@pytest.fixture(name="receivers")
def receivers_fixture() -> Iterator[list[WebhookReceiver]]:
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "REPLICATE_"))}
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "GENQ_VARIANTS_ENABLED": "false",
        "GENQ_LOG_FORMAT": "json",
        "GENQ_LOG_LEVEL": "warning",
        "GENQ_DB_POOL_MIN_SIZE": "1",
    })
    env.update({f"GENQ_{k.upper()}": v for k, v in extra.items()})
    return env


def _stack(procs: Processes, settings: Settings, *, worker: dict[str, str] | None = None,
           scheduler: dict[str, str] | None = None) -> list[GenqProcess]:
    """A real worker and a real scheduler (the delivery loop) on the test's database."""
    return [procs.start(["worker"], _env(settings, **(worker or {})), "worker"),
            procs.start(["scheduler"], _env(settings, **(scheduler or {})), "scheduler")]


async def _submit(api: Api, user: User, n: int, **fields: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 50):
        answers = await asyncio.gather(*(
            api.client.post("/v1/jobs", json={**JOB, **fields}, headers=user.headers)
            for _ in range(min(50, n - start))))
        for r in answers:
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


async def _secret(api: Api, user: User) -> str:
    r = await api.client.get("/v1/webhooks/secret", headers=user.headers)
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def _until(check: Callable[[], Awaitable[bool]], what: str, procs: Processes,
                 timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        procs.assert_alive()
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}\n{procs.tails()}"
        await asyncio.sleep(0.2)


async def _states(pool: Pool, job_ids: list[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT state, count(*) AS n FROM webhook_deliveries WHERE job_id = ANY($1::uuid[]) "
        "GROUP BY state", [uuid.UUID(j) for j in job_ids])
    return {r["state"]: r["n"] for r in rows}


async def _job_statuses(pool: Pool, job_ids: list[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM generation_jobs WHERE id = ANY($1::uuid[]) "
        "GROUP BY status", [uuid.UUID(j) for j in job_ids])
    return {r["status"]: r["n"] for r in rows}


@pytest.mark.slow
async def test_500_jobs_each_deliver_one_verified_completed_event(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=500)
    receiver = WebhookReceiver([await _secret(api, user)]).start()
    receivers.append(receiver)
    _stack(procs, settings, worker={"max_jobs": "50"})
    job_ids = await _submit(api, user, 500, webhook_url=receiver.url)

    async def all_delivered() -> bool:
        return (await _states(api.pool, job_ids)).get("delivered", 0) == 500

    await _until(all_delivered, "500 deliveries", procs, 300)
    await asyncio.sleep(1.0)  # anything sent twice would show by now
    seen = receiver.seen()
    assert receiver.unverified == 0
    assert all(d.type == "job.completed" for d in seen)
    assert sorted(d.job_id for d in seen) == sorted(job_ids)  # one per job, none twice
    assert len({d.webhook_id for d in seen}) == 500
    assert {d.body["data"]["status"] for d in seen} == {"succeeded"}
    # Each carries the job as it ended: its output, and its credits captured.
    for d in seen:
        data = d.body["data"]
        assert len(data["outputs"]) == 1 and data["cost"]["captured"] == 1, data
    assert await _states(api.pool, job_ids) == {"delivered": 500}


@pytest.mark.slow
async def test_a_receiver_down_for_30_s_gets_every_event_when_back_with_the_same_ids(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=20)
    receiver = WebhookReceiver([await _secret(api, user)]).start()
    receivers.append(receiver)
    receiver.stop()
    down_at = time.monotonic()
    _stack(procs, settings)
    job_ids = await _submit(api, user, 20, webhook_url=receiver.url)

    async def all_failed_once() -> bool:
        n = await api.pool.fetchval(
            "SELECT count(DISTINCT d.id) FROM webhook_deliveries d "
            "JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.job_id = ANY($1::uuid[])",
            [uuid.UUID(j) for j in job_ids])
        return bool(n == 20)

    await _until(all_failed_once, "a failed attempt each", procs, 60)
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    assert receiver.seen() == []
    receiver.start()
    back_at = time.monotonic()

    async def all_delivered() -> bool:
        return (await _states(api.pool, job_ids)).get("delivered", 0) == 20

    await _until(all_delivered, "every delivery after the receiver came back", procs, 90)
    print(f"\nall 20 delivered {time.monotonic() - back_at:.1f} s after the receiver came "
          f"back (down {back_at - down_at:.1f} s)")
    seen = receiver.seen()
    assert receiver.unverified == 0
    assert sorted(d.job_id for d in seen) == sorted(job_ids)
    for job_id in job_ids:
        r = await api.client.get(f"/v1/jobs/{job_id}/webhooks", headers=user.headers)
        (delivery,) = r.json()["data"]
        attempts = delivery["attempts"]
        assert len(attempts) >= 3, attempts
        assert all(a["status_code"] is None and a["error"] for a in attempts[:-1]), attempts
        assert attempts[-1]["status_code"] == 200
        # The receiver got the webhook-id every attempt carried.
        assert [d.webhook_id for d in seen if d.job_id == job_id] == [delivery["id"]]


@pytest.mark.slow
async def test_a_receiver_answering_410_is_not_called_again(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=5)
    receiver = WebhookReceiver([await _secret(api, user)], status=410).start()
    receivers.append(receiver)
    # Each job runs 1 s: its job.started is answered 410 well before it ends.
    _stack(procs, settings, worker={"local_latency_s": "1"})
    job_ids = await _submit(api, user, 5, webhook_url=receiver.url,
                            webhook_events=["started", "output", "completed"])

    async def finished() -> bool:
        return (await _job_statuses(api.pool, job_ids)) == {"succeeded": 5}

    await _until(finished, "the jobs succeeded", procs, 60)
    await asyncio.sleep(2.0)  # time for any further event to be sent
    seen = receiver.seen()
    assert sorted((d.job_id, d.type) for d in seen) == sorted(
        (j, "job.started") for j in job_ids)
    assert await _states(api.pool, job_ids) == {"gone": 5}


@pytest.mark.slow
async def test_a_hanging_receiver_delays_neither_other_receivers_nor_jobs(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=60)
    secret = await _secret(api, user)
    hanging, healthy = WebhookReceiver([secret]), WebhookReceiver([secret])
    hanging.hang = True
    receivers.extend([hanging.start(), healthy.start()])
    # A POST may take a minute here, so nothing but the other receivers can free its places.
    _stack(procs, settings, scheduler={"webhook_timeout_s": "60", "webhook_per_receiver": "4"})
    stuck = await _submit(api, user, 10, webhook_url=hanging.url)

    async def hanging_full() -> bool:
        return len(hanging.seen()) >= 4

    await _until(hanging_full, "the hanging receiver holds its places", procs, 60)
    fine = await _submit(api, user, 50, webhook_url=healthy.url)

    async def healthy_done() -> bool:
        return (await _states(api.pool, fine)).get("delivered", 0) == 50

    await _until(healthy_done, "the other receiver's deliveries", procs, 50)
    # Every job ran; the hanging receiver holds only its own 4 places, no attempt of it has
    # ended yet, and its other 6 deliveries wait.
    assert await _job_statuses(api.pool, stuck + fine) == {"succeeded": 60}
    assert len(hanging.seen()) == 4
    assert await api.pool.fetchval(
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d "
        "ON d.id = a.delivery_id WHERE d.job_id = ANY($1::uuid[])",
        [uuid.UUID(j) for j in stuck]) == 0
    assert await _states(api.pool, stuck) == {"pending": 10}
    assert sorted(d.job_id for d in healthy.seen()) == sorted(fine)
    assert healthy.unverified == 0


async def test_the_scheduler_runs_the_delivery_loop(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=1)
    receiver = WebhookReceiver([await _secret(api, user)]).start()
    receivers.append(receiver)
    (job_id,) = await _submit(api, user, 1, webhook_url=receiver.url)
    r = await api.client.post(f"/v1/jobs/{job_id}/cancel", headers=user.headers)
    assert r.status_code == 200
    procs.start(["scheduler"], _env(settings), "scheduler")

    async def delivered() -> bool:
        return len(receiver.seen()) == 1

    await _until(delivered, "the canceled job's event", procs, 30)
    (seen,) = receiver.seen()
    assert (seen.job_id, seen.type, seen.verified_by) == (job_id, "job.completed", (0,))
    assert seen.body["data"]["status"] == "canceled"


async def test_every_event_of_a_job_run_by_the_worker_is_delivered_in_order(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=2)
    receiver = WebhookReceiver([await _secret(api, user)]).start()
    receivers.append(receiver)
    _stack(procs, settings, worker={"local_latency_s": "0.5"})
    (job_id,) = await _submit(api, user, 1, num_outputs=2, webhook_url=receiver.url,
                              webhook_events=["started", "output", "completed"])

    async def four() -> bool:
        return len(receiver.seen()) == 4

    await _until(four, "started, two outputs, completed", procs, 60)
    seen = receiver.seen()
    assert receiver.unverified == 0
    assert {d.job_id for d in seen} == {job_id}
    assert len({d.webhook_id for d in seen}) == 4
    started = [d for d in seen if d.type == "job.started"]
    outputs = sorted((d for d in seen if d.type == "job.output"),
                     key=lambda d: d.body["output_index"])
    completed = [d for d in seen if d.type == "job.completed"]
    assert len(started) == len(completed) == 1 and len(outputs) == 2
    # started is sent when the job starts, before the job ends and its other events exist.
    assert started[0].received_at < min(d.received_at for d in outputs + completed)
    assert started[0].body["data"]["status"] == "running"
    assert started[0].body["data"]["outputs"] == []
    assert [d.body["output_index"] for d in outputs] == [0, 1]
    for d in [*outputs, *completed]:
        data = d.body["data"]
        assert data["status"] == "succeeded"
        assert [o["index"] for o in data["outputs"]] == [0, 1]
        assert data["cost"] == {"price_per_output": 1, "reserved": 2, "captured": 2,
                                "refunded": 0}
    # The loop records an attempt once the receiver has answered: the last one may still be
    # on its way to the table when the receiver has seen it.
    async def all_delivered() -> bool:
        return await _states(api.pool, [job_id]) == {"delivered": 4}

    await _until(all_delivered, "every delivery recorded as delivered", procs, 10)
    r = await api.client.get(f"/v1/jobs/{job_id}/webhooks", headers=user.headers)
    listed = r.json()["data"]
    assert [d["type"] for d in listed] == ["job.started", "job.output", "job.output",
                                           "job.completed"]
    assert {d["state"] for d in listed} == {"delivered"}


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scheduler's /metrics, read with prometheus-client's own parser."""
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_schedulers_metrics_count_what_its_deliveries_did(
        api: Api, procs: Processes, receivers: list[WebhookReceiver], settings: Settings
) -> None:
    user = await api.user(credits=20)
    secret = await _secret(api, user)
    ok = WebhookReceiver([secret]).start()
    gone = WebhookReceiver([secret], status=410).start()
    receivers.extend([ok, gone])
    port = free_port()
    _stack(procs, settings, scheduler={"metrics_port": str(port)})
    n = 12
    delivered = await _submit(api, user, n, webhook_url=ok.url)
    (refused,) = await _submit(api, user, 1, webhook_url=gone.url)

    async def all_sent() -> bool:
        return (await _states(api.pool, delivered) == {"delivered": n}
                and await _states(api.pool, [refused]) == {"gone": 1})

    await _until(all_sent, "every delivery sent", procs, 60)
    url = f"http://127.0.0.1:{port}/metrics"

    async def backlog_measured_empty() -> bool:
        return _scrape(url)[("genq_webhook_deliveries_due", ())] == 0

    await _until(backlog_measured_empty, "the backlog measured empty", procs, 10)
    samples = _scrape(url)
    attempts = {labels: int(v) for (name, labels), v in samples.items()
                if name == "genq_webhook_attempts_total" and v}
    assert attempts == {(("event", "job.completed"), ("outcome", "delivered")): n,
                        (("event", "job.completed"), ("outcome", "gone")): 1}
    assert samples[("genq_webhook_attempt_seconds_count", (("outcome", "delivered"),))] == n
    assert samples[("genq_webhook_attempt_seconds_count", (("outcome", "gone"),))] == 1
    assert samples[("genq_webhook_delivery_lag_seconds_count",
                    (("event", "job.completed"),))] == n
    assert samples[("genq_webhook_oldest_due_age_seconds", ())] == 0
    # No label names a receiver, a user or a job.
    for (_, labels) in samples:
        for _, value in labels:
            assert not any(part in value for part in (
                "127.0.0.1", str(ok.port), str(gone.port), str(user.id), refused,
                *delivered)), labels
