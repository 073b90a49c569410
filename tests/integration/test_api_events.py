"""Live job events (GET /v1/events, GET /v1/jobs/{id}/events) over a real HTTP connection, and
the queue position of a queued job.

The job changes here are the statements the intake, the worker and the scheduler run (the
submit over HTTP, ``claim_jobs``, ``count_output_staged``, ``finalize_job``), so the events are
the ones their triggers write; tests/acceptance/test_events_process.py runs a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from shared.db import Pool
from shared.embedded import Services
from shared.settings import Settings
from sql import queries
from tests.integration.api_support import User, new_user
from tests.sse_support import Event, Served, open_stream, served_app
from worker import maintenance

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 2,
       "params": {"width": 16, "height": 16}}
HEARTBEAT_S = 0.2


@pytest.fixture(name="served")
async def served_fixture(settings: Settings) -> AsyncIterator[Served]:
    async with served_app(settings.model_copy(update={"events_heartbeat_s": HEARTBEAT_S})) as s:
        yield s


@pytest.fixture(name="client")
async def client_fixture(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as client:
        yield client


async def _submit(client: httpx.AsyncClient, user: User, **overrides: Any) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json={**JOB, **overrides}, headers=user.headers)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    return job


async def _run(pool: Pool, job_id: str, status: str = "succeeded") -> None:
    """What a worker writes for a job: the claim, each staged output, the final write."""
    job = uuid.UUID(job_id)
    claimed = await pool.fetch(queries["claim_jobs"], [job], "test-worker", 60.0)
    assert len(claimed) == 1
    attempt = claimed[0]["attempt"]
    for _ in range(claimed[0]["num_outputs"]):
        assert await pool.fetchval(queries["count_output_staged"], job, attempt) is not None
    made = claimed[0]["num_outputs"] if status == "succeeded" else 0
    error = (None, None) if status == "succeeded" else ("model_failed", "no")
    written = await pool.fetchval(queries["finalize_job"], job, attempt, status, made, *error,
                                  [], 3600.0)
    assert written == status


def _types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


async def test_a_job_stream_shows_each_change_in_order_then_ends(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    user = await new_user(client, 100)
    job = await _submit(client, user)
    async with open_stream(client, f"/v1/jobs/{job['id']}/events", user.headers) as stream:
        [queued] = await stream.take(1)
        assert queued.type == "job.queued"
        assert queued.data["status"] == "queued"
        assert queued.data["queue"]["position"] == 0
        await _run(pool, job["id"])
        rest = await stream.take(4)
        assert await stream.next() is None  # the stream ends after the terminal event
    assert _types(rest) == ["job.started", "job.output", "job.output", "job.succeeded"]
    assert [e.data["outputs_staged"] for e in rest[1:3]] == [1, 2]
    assert rest[0].data["status"] == "running" and rest[0].data["queue"] is None
    # The terminal event's data is the job as GET /v1/jobs/{id} shows it.
    now = (await client.get(f"/v1/jobs/{job['id']}", headers=user.headers)).json()
    assert rest[-1].data == now
    ids = [queued.id, *(e.id for e in rest)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_the_users_stream_shows_every_job_and_never_another_users(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    ada, bob = await new_user(client, 100), await new_user(client, 100)
    async with open_stream(client, "/v1/events", ada.headers) as stream:
        jobs = [await _submit(client, ada) for _ in range(3)]
        theirs = await _submit(client, bob)
        await _run(pool, theirs["id"])
        await _run(pool, jobs[1]["id"], "failed")
        cancel = await client.post(f"/v1/jobs/{jobs[2]['id']}/cancel", headers=ada.headers)
        assert cancel.status_code == 200
        events = await stream.take(8)
    assert all(e.data["id"] != theirs["id"] for e in events)
    assert [(e.data["id"], e.type) for e in events] == [
        (jobs[0]["id"], "job.queued"), (jobs[1]["id"], "job.queued"),
        (jobs[2]["id"], "job.queued"), (jobs[1]["id"], "job.started"),
        (jobs[1]["id"], "job.output"), (jobs[1]["id"], "job.output"),
        (jobs[1]["id"], "job.failed"), (jobs[2]["id"], "job.canceled")]
    assert events[6].data["error"] == {"code": "model_failed", "message": "no"}
    ids = [e.id for e in events]
    assert ids == sorted(ids)


async def test_another_users_job_stream_is_404_and_bad_input_is_422(
    client: httpx.AsyncClient,
) -> None:
    ada, bob = await new_user(client, 100), await new_user(client, 100)
    job = await _submit(client, ada)
    for path in (f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{uuid.uuid4()}/events",
                 "/v1/jobs/nope/events"):
        r = await client.get(path, headers=bob.headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "job_not_found"
    for headers, path in (({"Last-Event-ID": "12a"}, "/v1/events"),
                          ({"Last-Event-ID": "-1"}, f"/v1/jobs/{job['id']}/events"),
                          ({}, "/v1/events?since=1")):
        r = await client.get(path, headers={**ada.headers, **headers})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
    assert (await client.get("/v1/events")).status_code == 401


async def test_last_event_id_resumes_with_exactly_the_missed_events(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    user = await new_user(client, 100)
    async with open_stream(client, "/v1/events", user.headers) as stream:
        first = await _submit(client, user)
        [seen] = await stream.take(1)
    # Disconnected: these happen while nobody listens.
    await _run(pool, first["id"])
    second = await _submit(client, user)
    await _run(pool, second["id"], "failed")
    async with open_stream(client, "/v1/events", user.headers, last_event_id=seen.id) as again:
        missed = await again.take(9)
        third = await _submit(client, user)
        [live] = await again.take(1)
    assert seen.type == "job.queued"
    assert [(e.data["id"], e.type) for e in missed] == [
        (first["id"], "job.started"), (first["id"], "job.output"), (first["id"], "job.output"),
        (first["id"], "job.succeeded"), (second["id"], "job.queued"),
        (second["id"], "job.started"), (second["id"], "job.output"),
        (second["id"], "job.output"), (second["id"], "job.failed")]
    stored = await pool.fetch("SELECT id FROM job_events WHERE user_id = $1 AND id > $2 "
                              "ORDER BY id", user.id, seen.id)
    assert [e.id for e in missed] + [live.id] == [r["id"] for r in stored]
    assert (live.data["id"], live.type) == (third["id"], "job.queued")


_WAITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = $1 AND objid = $2 AND objsubid = $3
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def _until_waiting(pool: Pool, key: tuple[int, int, int],
                         task: asyncio.Task[Any] | None = None) -> None:
    """Until a transaction waits for the advisory lock ``key`` (or ``task`` is done)."""
    async with asyncio.timeout(10):
        while not await pool.fetchval(_WAITING, *key):
            if task is not None and task.done():
                return
            await asyncio.sleep(0.02)


async def test_a_reader_never_skips_an_event_of_a_transaction_still_committing(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    """The outbox trap: a transaction that wrote its event with a lower id must not commit after
    one with a higher id was read, or the reader skips it. One transaction is held in its commit
    after writing its event (a trigger that fires after genq's waits for a lock the test
    holds); another one commits meanwhile, without waiting for it; an open stream shows
    neither until the first has committed, then both in order. A rolled-back change shows
    nothing and holds nothing back."""
    user = await new_user(client, 100)
    early, late, undone = [await _submit(client, user) for _ in range(3)]
    await pool.execute("""
        CREATE FUNCTION test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$""")
    await pool.execute(f"""
        CREATE CONSTRAINT TRIGGER zz_hold_commit AFTER UPDATE ON generation_jobs
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (NEW.id = '{uuid.UUID(early["id"])}') EXECUTE FUNCTION test_hold_commit()""")
    head = await pool.fetchval("SELECT max(id) FROM job_events")
    start = ("UPDATE generation_jobs SET status = 'running', started_at = now() "
             "WHERE id = $1")
    async with open_stream(client, "/v1/events", user.headers, last_event_id=head) as stream:
        async with pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock(4242)")
            first = asyncio.create_task(pool.execute(start, uuid.UUID(early["id"])))
            await _until_waiting(pool, (0, 4242, 1))  # its event written, not committed
            await pool.execute(start, uuid.UUID(late["id"]))  # commits, not waiting for it
            async with pool.acquire() as conn:
                undo = conn.transaction()
                await undo.start()
                await conn.execute(start, uuid.UUID(undone["id"]))
                await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # its event written
                await undo.rollback()
            # The later transaction's event is in the table, and no reader is shown it.
            visible = await pool.fetch("SELECT job_id FROM job_events WHERE id > $1", head)
            assert [r["job_id"] for r in visible] == [uuid.UUID(late["id"])]
            await asyncio.sleep(1.0)  # the hub reads the table many times meanwhile
            resumed = await pool.fetch(queries["list_user_events"], user.id, head, None, 10)
            assert resumed == []
            await holder.execute("SELECT pg_advisory_unlock(4242)")
            await first
        # Had the hub read the later event first, the earlier one (a lower id) would be dropped.
        events = await stream.take(2)
    assert [(e.data["id"], e.type) for e in events] == [
        (early["id"], "job.started"), (late["id"], "job.started")]
    assert events[0].id < events[1].id
    after = await pool.fetch("SELECT job_id FROM job_events WHERE id > $1 ORDER BY id", head)
    assert [r["job_id"] for r in after] == [uuid.UUID(early["id"]), uuid.UUID(late["id"])]


async def test_a_jobs_events_keep_its_order_when_its_later_change_has_the_older_transaction(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    """A transaction takes its id before it locks the job's row, so a job's later change can
    come from the transaction with the lower id: here one takes its id, another counts the
    first output and commits, then the first counts the second."""
    user = await new_user(client, 100)
    job = await _submit(client, user)
    job_id = uuid.UUID(job["id"])
    [claimed] = await pool.fetch(queries["claim_jobs"], [job_id], "test-worker", 60.0)
    async with pool.acquire() as older:
        tx = older.transaction()
        await tx.start()
        first = await older.fetchval("SELECT pg_current_xact_id()::text::bigint")
        assert await pool.fetchval(queries["count_output_staged"], job_id,
                                   claimed["attempt"]) == 1
        assert await older.fetchval(queries["count_output_staged"], job_id,
                                    claimed["attempt"]) == 2
        await tx.commit()
    async with open_stream(client, f"/v1/jobs/{job['id']}/events", user.headers) as stream:
        events = await stream.take(4)
    assert [(e.type, e.data["outputs_staged"]) for e in events] == [
        ("job.queued", 0), ("job.started", 0), ("job.output", 1), ("job.output", 2)]
    assert [e.id for e in events] == sorted(e.id for e in events)
    # The second output's transaction had the older id: its event was put after the first's.
    assert events[3].id >> 20 != first


async def test_a_transaction_open_in_another_database_holds_no_event_back(
    client: httpx.AsyncClient, pool: Pool, services: Services
) -> None:
    """Only the transactions of genq's own database can write its events, so one left open
    elsewhere on the same server (it has a transaction id) does not hold the streams back."""
    user = await new_user(client, 100)
    elsewhere = await asyncpg.connect(services.database_url)
    try:
        await elsewhere.execute("BEGIN")
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # takes a transaction id
        async with open_stream(client, "/v1/events", user.headers) as stream:
            job = await _submit(client, user)
            await _run(pool, job["id"])
            events = await stream.take(5)
        assert [(e.data["id"], e.type) for e in events] == [
            (job["id"], t) for t in ("job.queued", "job.started", "job.output", "job.output",
                                     "job.succeeded")]
    finally:
        await elsewhere.close()


async def test_a_heartbeat_comment_keeps_an_idle_stream_open(
    client: httpx.AsyncClient,
) -> None:
    user = await new_user(client, 100)
    async with open_stream(client, "/v1/events", user.headers) as stream:
        with pytest.raises(TimeoutError):
            await stream.next(timeout=5 * HEARTBEAT_S)
    assert any(c.startswith("ping") for c in stream.comments), stream.comments


async def test_closed_clients_leave_no_subscription_or_task_behind(
    served: Served, client: httpx.AsyncClient, pool: Pool
) -> None:
    hub = served.app.state.genq.events
    user = await new_user(client, 100)
    job = await _submit(client, user)
    tasks_before = asyncio.all_tasks()
    clients = [httpx.AsyncClient(base_url=served.base_url) for _ in range(20)]
    streams = []
    try:
        for i, c in enumerate(clients):
            path = "/v1/events" if i % 2 else f"/v1/jobs/{job['id']}/events"
            cm = open_stream(c, path, user.headers, last_event_id=0)
            streams.append((cm, await cm.__aenter__()))
        for _, s in streams:
            [event] = await s.take(1)
            assert event.type == "job.queued"
        assert hub.subscriptions == 20
    finally:
        for cm, _ in streams:
            await cm.__aexit__(None, None, None)
        for c in clients:
            await c.aclose()
    def left() -> list[asyncio.Task[Any]]:
        # sse-starlette keeps one shutdown watcher per event loop, started with the first
        # stream the loop serves: not the stream's, and never more than one.
        return [t for t in asyncio.all_tasks() - tasks_before
                if getattr(t.get_coro(), "__qualname__", "") != "_shutdown_watcher"]

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while hub.subscriptions or left():
                await asyncio.sleep(0.05)
    assert hub.subscriptions == 0
    assert left() == []


async def test_queue_position_goes_down_as_jobs_ahead_start(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    user = await new_user(client, 100)
    jobs = [await _submit(client, user, num_outputs=1) for _ in range(5)]
    assert [j["queue"]["position"] for j in jobs] == [0, 1, 2, 3, 4]
    assert all(j["queue"]["eta_s"] is None for j in jobs)  # the queue's speed is not known yet
    await maintenance.measure_queue(pool)
    for job in jobs[:2]:
        await _run(pool, job["id"])
    await maintenance.measure_queue(pool)

    async def place(job: dict[str, Any]) -> Any:
        r = await client.get(f"/v1/jobs/{job['id']}", headers=user.headers)
        return r.json()["queue"]

    assert await place(jobs[0]) is None and await place(jobs[1]) is None
    now = [await place(j) for j in jobs[2:]]
    assert [p["position"] for p in now] == [0, 1, 2]
    # Two jobs left the head of the queue since the last sample: the ETA grows with position.
    etas = [p["eta_s"] for p in now]
    assert all(e is not None and e > 0 for e in etas) and etas == sorted(etas)
    listed = (await client.get("/v1/jobs?status=queued", headers=user.headers)).json()
    assert sorted(j["queue"]["position"] for j in listed["data"]) == [0, 1, 2]


async def test_old_events_are_purged_and_young_ones_kept(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    user = await new_user(client, 100)
    old, young = await _submit(client, user), await _submit(client, user)
    await pool.execute("UPDATE job_events SET created_at = now() - interval '2 hours' "
                       "WHERE job_id = $1", uuid.UUID(old["id"]))
    report = await maintenance.purge_job_events(pool, 3600, 1)
    assert report.counts["deleted"] == 1
    left = await pool.fetch("SELECT job_id FROM job_events WHERE user_id = $1", user.id)
    assert [r["job_id"] for r in left] == [uuid.UUID(young["id"])]


async def test_the_stream_of_a_finished_job_sends_what_is_kept_and_ends(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    user = await new_user(client, 100)
    job = await _submit(client, user)
    await _run(pool, job["id"], "failed")
    path = f"/v1/jobs/{job['id']}/events"
    async with open_stream(client, path, user.headers) as stream:
        events = await stream.take(5)
        assert await stream.next() is None
    assert _types(events)[-1] == "job.failed"
    # Resumed after its final event: nothing more, and the stream ends at once.
    async with open_stream(client, path, user.headers, last_event_id=events[-1].id) as stream:
        assert await stream.next(timeout=5) is None
    # Its events past the retention: an empty stream that ends.
    await pool.execute("DELETE FROM job_events WHERE job_id = $1", uuid.UUID(job["id"]))
    async with open_stream(client, path, user.headers) as stream:
        assert await stream.next(timeout=5) is None


async def test_a_burst_of_events_arrives_whole_and_in_order(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    """2,500 jobs queued in one transaction (as an operator's SQL could): every event reaches
    the open stream, in order, each with its queue position."""
    user = await new_user(client, 100)
    async with open_stream(client, "/v1/events", user.headers) as stream:
        await pool.execute(
            "INSERT INTO generation_jobs (user_id, model, provider, prompt, num_outputs, "
            "price_per_output) SELECT $1, 'local/sketch', 'local', 'burst ' || i, 1, 0 "
            "FROM generate_series(1, 2500) AS i", user.id)
        events = await stream.take(2500, timeout=120)
    stored = await pool.fetch("SELECT id, job_id FROM job_events WHERE user_id = $1 ORDER BY id",
                              user.id)
    assert [(e.id, e.data["id"]) for e in events] == [
        (r["id"], str(r["job_id"])) for r in stored]
    assert {e.type for e in events} == {"job.queued"}
    assert [e.data["queue"]["position"] for e in events] == list(range(2500))
