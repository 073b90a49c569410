"""500 concurrent submits on one account against 500 submits spread over 500 accounts, through
one ``genq api`` process and the same load generator (500 connections, one request each, sent at
once). Every ledger operation locks its account row, so the hot account's reservations queue up
behind each other; this measures how much that costs. Each API key is used once beforehand so
both sides start with a warm key cache. The figure is submits/s, the median of the rounds.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench import loadgen, seed
from bench.env import BenchEnv
from bench.report import Row
from bench.scenarios.intake import BODY

SUBMITS = 500


def _plan(port: int, keys: list[str], rounds: int) -> loadgen.Plan:
    requests = [
        loadgen.http_request(
            "POST", "/v1/jobs", host=f"127.0.0.1:{port}", body=BODY,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ).decode("latin-1")
        for key in keys
    ]
    return loadgen.Plan(host="127.0.0.1", port=port, requests=requests, connections=SUBMITS,
                        mode="burst", rounds=rounds)


async def _burst(port: int, keys: list[str], rounds: int) -> dict[str, Any]:
    result = await loadgen.in_process(_plan(port, keys, rounds))
    if set(result["statuses"]) != {"202"}:
        raise RuntimeError(f"hot account: unexpected answers {result['statuses']}")
    return result


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """Hot, then spread, on one API process."""
    rounds = 1 if quick else 3
    pool = env.db()
    (hot,) = await seed.users(pool, 1, 10**9)
    spread = await seed.users(pool, SUBMITS, 1000)
    api, base = await env.genq_api(env.queue("hot-account"))
    port = int(base.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for user in [hot, *spread]:
            r = await client.get("/v1/credits", headers={"Authorization": f"Bearer {user.api_key}"})
            r.raise_for_status()
    hot_result = await _burst(port, [hot.api_key], rounds)
    spread_result = await _burst(port, [u.api_key for u in spread], rounds)
    env.stop(api)
    return [Row(
        "hot_account", f"hot account: {SUBMITS} concurrent submits, one account vs {SUBMITS}",
        hot_result["rate"], spread_result["rate"], "submits/s", limit=0.8,
        target=">= 0.8x spread",
        notes={"rounds": rounds, "hot_round_wall_s": hot_result["round_wall_s"],
               "spread_round_wall_s": spread_result["round_wall_s"],
               "hot_latency_ms": hot_result["latency_ms"],
               "spread_latency_ms": spread_result["latency_ms"]},
    )]
