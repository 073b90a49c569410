"""Group commit at the intake: many submissions in one genq_submit_batch statement. A refused
item writes nothing and does not disturb the others; a batch that deadlocks is retried item by
item; concurrent mixed traffic through the API keeps every ledger invariant."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import asyncpg
from arq.connections import ArqRedis
from structlog.testing import capture_logs

from api.jobs.intake import _DEADLOCK_TRIES, IntakeBatches, SubmitItem, SubmitRefused
from api.jobs.models import JobCreate
from api.validation import request_hash
from shared.catalog import ModelRules, load_catalog
from shared.db import Pool
from shared.queue import create_arq_pool
from shared.settings import Settings
from tests.factories import assert_invariants, funded_user
from tests.integration.api_support import Api, api_fixture  # noqa: F401

RULES = {spec.key: ModelRules.from_spec(spec) for spec in load_catalog(None)}


def item(user: uuid.UUID, *, model: str = "local/sketch", outputs: int = 1,
         key: str | None = None, prompt: str = "a lighthouse") -> SubmitItem:
    """As the intake makes it: checked and priced with the built-in model's rules (an unknown
    model borrows local/sketch's, so that the database refuses it)."""
    job = JobCreate(model=model, prompt=prompt, num_outputs=outputs)
    return SubmitItem.checked(uuid.uuid4(), user, job, key, request_hash(job) if key else None,
                              RULES.get(model, RULES["local/sketch"]))


async def open_batches(settings: Settings, pool: Pool) -> tuple[IntakeBatches, ArqRedis]:
    assert settings.redis_url is not None
    redis = await create_arq_pool(settings.redis_url)
    return IntakeBatches(pool, redis, settings), redis


async def test_one_batch_answers_each_item_and_writes_only_the_accepted(
    settings: Settings, pool: Pool
) -> None:
    rich = await funded_user(pool, 100)
    poor = await funded_user(pool, 1)
    nobody = uuid.uuid4()
    batches, redis = await open_batches(settings, pool)
    try:
        first = item(rich, key="k1")
        results = await batches.submit_many([
            first,
            item(poor, outputs=1),                    # 1 credit: accepted
            item(poor, outputs=1),                    # balance now 0: refused
            item(rich, model="no/such-model"),        # unknown model
            item(rich, model="local/sketch", outputs=99),  # over max_outputs
            item(nobody),                             # no account
            item(rich, key="k1"),                     # same key, same body: replay
            item(rich, key="k1", prompt="other"),     # same key, other body: conflict
            item(rich, outputs=2),
        ])
    finally:
        await redis.aclose()

    accepted = [r for r in results if not isinstance(r, BaseException) and not r["replayed"]]
    assert len(accepted) == 3
    assert not isinstance(results[0], BaseException) and results[0]["job_id"] == first.job_id
    refused = {i: r for i, r in enumerate(results) if isinstance(r, SubmitRefused)}
    assert {i: r.constraint for i, r in refused.items() if i != 5} == {
        2: "credit_accounts_balance_nonnegative",
        3: "genq_submit_model_unknown",
        4: "genq_submit_too_many_outputs",
        7: "idempotency_keys_request_mismatch",
    }
    assert refused[5].state == "P0002"  # no credit account
    replay = results[6]
    assert not isinstance(replay, BaseException)
    assert replay["replayed"] and replay["job_id"] == first.job_id

    # Exactly the accepted items wrote rows: 3 jobs, 3 reservations, and the balances.
    assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 3
    assert await pool.fetchval("SELECT count(*) FROM credit_reservations") == 3
    rich_account = await assert_invariants(pool, rich)
    poor_account = await assert_invariants(pool, poor)
    assert (rich_account.balance, rich_account.reserved) == (97, 3)
    assert (poor_account.balance, poor_account.reserved) == (0, 1)


async def test_two_batches_sharing_a_key_and_an_account_do_not_deadlock(
    settings: Settings, pool: Pool
) -> None:
    user = await funded_user(pool, 100)
    batches, redis = await open_batches(settings, pool)
    # Hold the account so both batches queue on it: A = [(k1), (k2)] and B = [(k2), (no key)].
    # Each batch takes its keys' locks before any account, so B waits for A's k2 and A, once
    # the account is free, finishes; B then finds A's k2 record and replays it.
    holder = await pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM credit_accounts WHERE user_id = $1 FOR UPDATE", user)
    with capture_logs() as logs:
        try:
            a = asyncio.create_task(batches.submit_many([item(user, key="k1"),
                                                         item(user, key="k2")]))
            await _wait_for_lock_waiters(pool, 1)
            b = asyncio.create_task(batches.submit_many([item(user, key="k2"), item(user)]))
            await _wait_for_lock_waiters(pool, 2)
        finally:
            await tx.rollback()
            await pool.release(holder)
        results = [*(await a), *(await b)]
    await redis.aclose()

    assert [e for e in logs if e["event"] == "submit_batch_deadlock"] == []
    assert not any(isinstance(r, BaseException) for r in results), results
    jobs = [r["job_id"] for r in results if not isinstance(r, BaseException)]
    assert len(set(jobs)) == 3
    assert [r["replayed"] for r in results if not isinstance(r, BaseException)] == [
        False, False, True, False]
    assert jobs[2] == jobs[1]  # B's k2 is A's job
    assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 3
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (97, 3)


async def test_a_deadlocked_batch_is_retried_item_by_item(settings: Settings, pool: Pool) -> None:
    user = await funded_user(pool, 100)
    other = await funded_user(pool, 100)
    batches, redis = await open_batches(settings, pool)
    # Another transaction holds the account and then asks for the key lock the batch holds
    # while it waits for that account: PostgreSQL aborts the batch (it waited first), whose
    # items then go one by one and are all accepted.
    holder = await pool.acquire()
    tx = holder.transaction()
    await tx.start()
    # The holder checks for a deadlock only long after the batch does (1 s): the batch is the
    # one PostgreSQL aborts.
    await holder.execute("SET LOCAL deadlock_timeout = '20s'")
    await holder.execute("SELECT 1 FROM credit_accounts WHERE user_id = $1 FOR UPDATE", user)
    with capture_logs() as logs:
        try:
            a = asyncio.create_task(batches.submit_many([item(user, key="k1"), item(other)]))
            await _wait_for_lock_waiters(pool, 1)
            await holder.execute("SELECT pg_advisory_xact_lock(genq_submit_key_lock($1, $2))",
                                 user, "k1")
        finally:
            await tx.rollback()
            await pool.release(holder)
        results = await a
    await redis.aclose()

    assert [e["items"] for e in logs if e["event"] == "submit_batch_deadlock"] == [2]
    assert not any(isinstance(r, BaseException) for r in results), results
    assert [r["replayed"] for r in results if not isinstance(r, BaseException)] == [False, False]
    assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 2
    for u in (user, other):
        account = await assert_invariants(pool, u)
        assert (account.balance, account.reserved) == (99, 1)


async def test_an_item_that_keeps_deadlocking_is_tried_a_bounded_number_of_times(
    settings: Settings, pool: Pool
) -> None:
    user = await funded_user(pool, 100)
    # Every insert of the job with this prompt fails as a deadlock does (SQLSTATE 40P01); a
    # sequence (not rolled back with the statement) counts the tries.
    await pool.execute("""
        CREATE SEQUENCE deadlock_tries;
        CREATE FUNCTION always_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.prompt = 'always deadlocks' THEN
                PERFORM nextval('deadlock_tries');
                RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER always_deadlock BEFORE INSERT ON generation_jobs
            FOR EACH ROW EXECUTE FUNCTION always_deadlock();
    """)
    batches, redis = await open_batches(settings, pool)
    try:
        results = await batches.submit_many([item(user, prompt="always deadlocks"), item(user)])
    finally:
        await redis.aclose()

    assert isinstance(results[0], asyncpg.DeadlockDetectedError)
    assert not isinstance(results[1], BaseException) and not results[1]["replayed"]
    # The batch once, then the item alone _DEADLOCK_TRIES times: no more.
    assert await pool.fetchval("SELECT last_value FROM deadlock_tries") == 1 + _DEADLOCK_TRIES
    assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 1
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (99, 1)


async def _wait_for_lock_waiters(pool: Pool, n: int) -> None:
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        if waiting >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} statements ever waited for a lock")


async def test_concurrent_mixed_submissions_through_the_api(api: Api) -> None:
    users = [await api.user(credits=c) for c in (30, 30, 5)]
    requests = []
    for n in range(240):
        user = users[n % 3]
        headers = dict(user.headers)
        if n % 4 == 0:
            headers["Idempotency-Key"] = f"key-{n % 12}"  # repeats: replays and conflicts
        body = {"model": "local/sketch", "prompt": f"p{n % 2}", "num_outputs": 1}
        if n % 10 == 3:
            body["model"] = "no/such-model"
        requests.append((user, headers, body))

    responses = await asyncio.gather(*(
        api.client.post("/v1/jobs", json=body, headers=headers)
        for _, headers, body in requests
    ))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {202, 402, 409, 422}, statuses
    assert statuses[402] > 0  # the third user runs out of credits mid-burst
    assert any(r.headers.get("idempotent-replayed") for r in responses)
    assert statuses[422] == sum(1 for _, _, b in requests if b["model"] == "no/such-model")
    for r in responses:
        if r.status_code != 202:
            assert set(r.json()["error"]) >= {"code", "message"}

    for user in users:
        account = await assert_invariants(api.pool, user.id)
        jobs = await api.pool.fetchval(
            "SELECT count(*) FROM generation_jobs WHERE user_id = $1", user.id
        )
        granted = {users[0].id: 30, users[1].id: 30, users[2].id: 5}[user.id]
        assert account.balance + account.reserved == granted
        assert account.reserved == jobs  # one credit reserved per job, nothing else
    # Every accepted (not replayed) answer is its own job, and every job was answered.
    created = {r.json()["id"] for r in responses
               if r.status_code == 202 and "idempotent-replayed" not in r.headers}
    assert len(created) == await api.pool.fetchval("SELECT count(*) FROM generation_jobs")
    # A key names one job: all its 202 answers carry the same id.
    by_key: dict[tuple[uuid.UUID, str], set[str]] = {}
    for (user, headers, _), r in zip(requests, responses, strict=True):
        if "Idempotency-Key" in headers and r.status_code == 202:
            by_key.setdefault((user.id, headers["Idempotency-Key"]), set()).add(r.json()["id"])
    assert all(len(ids) == 1 for ids in by_key.values())
