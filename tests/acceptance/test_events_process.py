"""Live events across processes: a client connected to a `genq api` process sees every change
a separate `genq worker` process makes to 200 jobs, in order, none missing; a client that
disconnects and comes back with Last-Event-ID gets exactly what it missed; another user's
events never appear."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.db import Pool
from shared.embedded import free_port
from shared.settings import Settings
from tests.acceptance.recovery_support import Processes, process_env
from tests.integration.api_support import User, new_user
from tests.sse_support import Event, open_stream

ADMIN_TOKEN = "events-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JOBS = 200
OTHER_JOBS = 20
TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}


def _job(i: int) -> dict[str, Any]:
    # One or two outputs: a job.output event for each.
    return {"model": "local/sketch", "prompt": f"lighthouse {i}", "num_outputs": 1 + i % 2,
            "params": {"width": 16, "height": 16}}


async def _submit(client: httpx.AsyncClient, user: User, n: int) -> dict[str, int]:
    """n jobs, 50 at a time; their ids with their num_outputs."""
    jobs: dict[str, int] = {}
    headers = user.headers
    for start in range(0, n, 50):
        answers = await asyncio.gather(*(
            client.post("/v1/jobs", json=_job(i), headers=headers)
            for i in range(start, min(n, start + 50))))
        for r in answers:
            assert r.status_code == 202, r.text
            jobs[r.json()["id"]] = r.json()["num_outputs"]
    return jobs


def _expected(num_outputs: int) -> list[str]:
    return ["job.queued", "job.started", *["job.output"] * num_outputs, "job.succeeded"]


@pytest.mark.slow
async def test_a_client_of_one_api_process_sees_every_event_of_a_worker_process(
    settings: Settings, pool: Pool, procs: Processes, tmp_path: Path
) -> None:
    port = free_port()
    assert settings.database_url is not None and settings.redis_url is not None
    env = process_env(database_url=settings.database_url, redis_url=settings.redis_url,
                      data_dir=str(tmp_path / "data"), queue_name=settings.queue_name,
                      admin_token=ADMIN_TOKEN, log_format="json", log_level="warning",
                      max_jobs="20", local_latency_s="0.02", variants_enabled="false",
                      db_pool_min_size="1")
    procs.start(["api", "--host", "127.0.0.1", "--port", str(port)], env, "api")
    procs.start(["worker"], env, "worker")
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client, \
            httpx.AsyncClient(base_url=base) as other_client:
        deadline = time.monotonic() + 60
        while True:
            procs.assert_alive()
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, procs.tails()
            await asyncio.sleep(0.2)
        ada = await new_user(client, JOBS * 2, admin=ADMIN)
        bob = await new_user(client, OTHER_JOBS * 2, admin=ADMIN)
        headers = ada.headers
        total = sum(len(_expected(1 + i % 2)) for i in range(JOBS))

        async with open_stream(client, "/v1/events", headers) as whole:
            # A second client of the same user leaves after 100 events and comes back.
            async with open_stream(other_client, "/v1/events", headers) as leaving:
                jobs, theirs = await asyncio.gather(_submit(client, ada, JOBS),
                                                    _submit(client, bob, OTHER_JOBS))
                before = await leaving.take(100, timeout=120)
            seen = await whole.take(total, timeout=300)
            async with open_stream(other_client, "/v1/events", headers,
                                   last_event_id=before[-1].id) as back:
                after = await back.take(total - len(before), timeout=60)
                # Nothing more: every job has ended.
                with pytest.raises(TimeoutError):
                    await back.next(timeout=1)
        procs.assert_alive()

    # Every event of every job, in order, none missing and none of bob's.
    by_job: dict[str, list[Event]] = defaultdict(list)
    for event in seen:
        by_job[event.data["id"]].append(event)
    assert set(by_job) == set(jobs)
    assert not set(by_job) & set(theirs)
    for job_id, events in by_job.items():
        assert [e.type for e in events] == _expected(jobs[job_id]), job_id
        assert [e.data["outputs_staged"] for e in events if e.type == "job.output"] == \
            list(range(1, jobs[job_id] + 1))
        assert events[-1].data["status"] == "succeeded"
        assert len(events[-1].data["outputs"]) == jobs[job_id]
    ids = [e.id for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stored = await pool.fetch("SELECT id FROM job_events WHERE user_id = $1 ORDER BY id",
                              ada.id)
    assert ids == [r["id"] for r in stored]
    # The client that left got exactly what it missed: together, the same events.
    assert [(e.id, e.type) for e in before + after] == [(e.id, e.type) for e in seen]
