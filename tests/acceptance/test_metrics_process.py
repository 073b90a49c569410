"""``/metrics`` of real processes after a demo-sized run: the API (admin token), the worker and
the scheduler (each on its own port, as ``genq up`` gives them) answer the Prometheus text
format, prometheus-client's own parser reads it, and the counters equal what happened: jobs by
status, credits reserved, captured and refunded as the ledger holds them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genq.stack import Stack
from shared.embedded import free_port
from shared.settings import Settings

ADMIN_TOKEN = "metrics-admin-token-0123456789abcdefgh"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _total(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lbl, v in _samples(text)
               if n == name and all(lbl.get(k) == want for k, want in labels.items()))


def _by(text: str, name: str, label: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for n, lbl, v in _samples(text):
        if n == name:
            counts[lbl[label]] += int(v)
    return counts


async def _ledger(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT kind, sum(amount)::bigint AS amount, "
                                "sum(reserved_delta)::bigint AS held FROM credit_ledger "
                                "GROUP BY kind")
        jobs = await conn.fetch("SELECT status, count(*) FROM generation_jobs GROUP BY status")
    finally:
        await conn.close()
    sums = {r["kind"]: (r["amount"], r["held"]) for r in rows}
    return {
        "reserved": -sums.get("reserve", (0, 0))[0],
        "captured": -sums.get("capture", (0, 0))[1],
        "refunded": sums.get("refund", (0, 0))[0],
        **{f"jobs_{r['status']}": r["count"] for r in jobs},
    }


@pytest.mark.timeout(240)
async def test_metrics_of_the_api_and_worker_add_up_to_what_happened(settings: Settings) -> None:
    stack = Stack(
        settings.model_copy(update={"metrics_port": 0}), host="127.0.0.1", port=free_port(),
        extra_env={"GENQ_ADMIN_TOKEN": ADMIN_TOKEN, "GENQ_QUEUE_NAME": settings.queue_name,
                   "GENQ_LOCAL_LATENCY_S": "0.3", "GENQ_LOG_FORMAT": "json"},
    )
    stack.start()
    try:
        stack.wait_ready()
        urls = stack.metrics_urls()
        assert set(urls) == {"api", "worker", "scheduler"}
        assert len({url.rsplit(":", 1)[1] for url in urls.values()}) == 3
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as api:
            user = (await api.post("/v1/admin/users", json={"email": "m@example.com"},
                                   headers=ADMIN)).json()
            await api.post(f"/v1/admin/users/{user['id']}/credits", json={"amount": 100},
                           headers=ADMIN)
            auth = {"Authorization": f"Bearer {user['api_key']}"}
            jobs = []
            for i, (model, n) in enumerate([("local/sketch", 2), ("local/sketch", 1),
                                            ("local/poster", 1), ("local/sketch", 3),
                                            ("local/clip", 1), ("local/sketch", 2)]):
                body = {"model": model, "prompt": f"p{i}", "num_outputs": n, "params": {}}
                r = await api.post("/v1/jobs", json=body, headers=auth)
                assert r.status_code == 202, r.text
                jobs.append(r.json()["id"])
            replay = await api.post("/v1/jobs", json={"model": "local/sketch", "prompt": "r",
                                                      "num_outputs": 1, "params": {}},
                                    headers={**auth, "Idempotency-Key": "once"})
            again = await api.post("/v1/jobs", json={"model": "local/sketch", "prompt": "r",
                                                     "num_outputs": 1, "params": {}},
                                   headers={**auth, "Idempotency-Key": "once"})
            assert again.headers["idempotent-replayed"] == "true"
            jobs.append(replay.json()["id"])
            canceled = await api.post(f"/v1/jobs/{jobs[-2]}/cancel", headers=auth)
            assert canceled.status_code in (200, 202)
            refused = await api.post("/v1/jobs", json={"model": "local/sketch", "prompt": "x",
                                                       "num_outputs": 1000, "params": {}},
                                     headers=auth)
            assert refused.status_code == 422
            deadline = time.monotonic() + 60
            while True:
                states = [(await api.get(f"/v1/jobs/{j}", headers=auth)).json()["status"]
                          for j in jobs]
                if all(s in ("succeeded", "failed", "canceled") for s in states):
                    break
                assert time.monotonic() < deadline, states
                time.sleep(0.2)
            assert (await api.get("/metrics")).status_code == 401
            ledger = await _ledger(str(settings.database_url))

            # The worker adds what its final writes settled moments after each job ended.
            deadline = time.monotonic() + 10
            while True:
                api_text = (await api.get("/metrics", headers=ADMIN)).text
                worker_text = httpx.get(urls["worker"], timeout=5).text
                counted = {
                    "reserved": _total(api_text, "genq_credits_reserved_total"),
                    "captured": _total(worker_text, "genq_credits_captured_total"),
                    "refunded": _total(api_text, "genq_credits_refunded_total")
                    + _total(worker_text, "genq_credits_refunded_total"),
                }
                if counted == {k: ledger[k] for k in counted} or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        scheduler_text = httpx.get(urls["scheduler"], timeout=5).text
    finally:
        stack.stop()

    assert counted == {k: ledger[k] for k in counted}
    assert ledger["captured"] > 0
    finished = _by(api_text, "genq_jobs_finished_total", "status") + _by(
        worker_text, "genq_jobs_finished_total", "status")
    assert {s: n for s, n in finished.items() if n} == {
        k.removeprefix("jobs_"): v for k, v in ledger.items() if k.startswith("jobs_")}
    assert sum(finished.values()) == len(jobs) == 7
    submitted = _by(api_text, "genq_jobs_submitted_total", "model")
    assert submitted == {"local/sketch": 5, "local/poster": 1, "local/clip": 1}
    assert _total(api_text, "genq_http_requests_total", method="POST", route="/v1/jobs",
                  status="202") == 8
    assert _total(api_text, "genq_http_requests_total", method="POST", route="/v1/jobs",
                  status="422") == 1
    assert _total(api_text, "genq_jobs_queued") == 0
    # Queue wait and run time: one observation per job the worker ran to its end.
    ran = sum(n for s, n in _by(worker_text, "genq_jobs_finished_total", "status").items())
    assert _total(worker_text, "genq_job_run_seconds_count") == ran
    assert _total(worker_text, "genq_provider_requests_total", provider="local",
                  outcome="succeeded") >= ledger.get("jobs_succeeded", 0)
    assert _total(worker_text, "genq_job_queue_wait_seconds_count") >= ran - 1
    assert "genq_maintenance_runs_total" in scheduler_text
    # No label carries a user or job id.
    for text in (api_text, worker_text, scheduler_text):
        for _, labels, _ in _samples(text):
            assert not any(user["id"] in v or any(j in v for j in jobs)
                           for v in labels.values()), labels
