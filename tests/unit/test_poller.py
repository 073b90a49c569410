"""The worker's shared poller (worker/providers/poller.py), driven by a poll function that
answers from a table: who gets woken, when polling stops, how many polls are in flight."""

from __future__ import annotations

import asyncio

import pytest

from worker.providers.poller import MIN_RUNS, Poller


class Remote:
    """Predictions that end after a number of polls; counts polls and the most at once."""

    def __init__(self, polls_to_end: dict[str, int], fail: set[str] | None = None) -> None:
        self.left = dict(polls_to_end)
        self.fail = fail or set()
        self.polls: dict[str, int] = {}
        self.now = 0
        self.most = 0

    async def poll(self, key: str) -> str:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.001)
            self.polls[key] = self.polls.get(key, 0) + 1
            if key in self.fail:
                raise RuntimeError(f"no {key}")
            self.left[key] -= 1
            return "succeeded" if self.left[key] <= 0 else "processing"
        finally:
            self.now -= 1


def poller(remote: Remote, concurrency: int = 2) -> Poller[str]:
    return Poller(remote.poll, lambda answer: answer == "succeeded", interval_s=0.001,
                  max_interval_s=0.002, concurrency=concurrency)


async def test_every_waiter_wakes_with_its_own_end_and_polls_stay_bounded() -> None:
    remote = Remote({f"p{i}": 1 + i % 4 for i in range(50)})
    p = poller(remote, concurrency=3)
    try:
        answers = await asyncio.gather(*(p.wait(f"p{i}") for i in range(50)))
    finally:
        await p.aclose()
    assert answers == ["succeeded"] * 50
    # Polled exactly until it ended, never after, and never more than 3 polls at once.
    assert remote.polls == {f"p{i}": 1 + i % 4 for i in range(50)}
    assert 1 < remote.most <= 3


async def test_two_jobs_on_one_prediction_share_its_polls() -> None:
    remote = Remote({"p": 3})
    p = poller(remote)
    try:
        assert list(await asyncio.gather(p.wait("p"), p.wait("p"))) == ["succeeded"] * 2
    finally:
        await p.aclose()
    assert remote.polls == {"p": 3}


async def test_a_failed_poll_reaches_its_waiters_only() -> None:
    remote = Remote({"bad": 5, "good": 2}, fail={"bad"})
    p = poller(remote)
    try:
        bad, good = await asyncio.gather(p.wait("bad"), p.wait("good"), return_exceptions=True)
    finally:
        await p.aclose()
    assert isinstance(bad, RuntimeError) and str(bad) == "no bad"
    assert good == "succeeded"
    assert remote.polls == {"bad": 1, "good": 2}


async def test_a_waiter_that_stops_waiting_is_polled_no_more() -> None:
    remote = Remote({"slow": 10**9, "quick": 3})
    p = poller(remote)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await p.wait("slow")
        # By the third poll of another, a poll of "slow" that was under way has ended.
        assert await p.wait("quick") == "succeeded"
        polled = remote.polls.get("slow", 0)
        assert polled > 0
        await asyncio.sleep(0.02)
    finally:
        await p.aclose()
    assert remote.polls["slow"] == polled


class Timed:
    """Predictions that end 50 ms after they were made; counts the polls of each."""

    RUN_S = 0.05

    def __init__(self) -> None:
        self.made: dict[str, float] = {}
        self.polls: dict[str, int] = {}

    def make(self, key: str) -> str:
        self.made[key] = asyncio.get_running_loop().time()
        return key

    async def poll(self, key: str) -> str:
        self.polls[key] = self.polls.get(key, 0) + 1
        ran = asyncio.get_running_loop().time() - self.made[key]
        return "succeeded" if ran >= self.RUN_S else "processing"


async def test_the_first_poll_follows_the_models_recent_run_times() -> None:
    remote = Timed()
    p = Poller(remote.poll, lambda answer: answer == "succeeded", interval_s=0.01,
               max_interval_s=0.01, concurrency=4)
    try:
        await asyncio.gather(*(p.wait(remote.make(f"p{i}"), group="m")
                               for i in range(MIN_RUNS)))
        await p.wait(remote.make("next"), group="m")
        await p.wait(remote.make("other"), group="another model")
    finally:
        await p.aclose()
    # 10 ms apart, the first ones needed 5 polls or more to see 50 ms pass; the next one of
    # the model was first polled near 50 ms (90% of it), so at most twice. Another model
    # has no run times yet: polled as the first ones were.
    assert all(remote.polls[f"p{i}"] >= 5 for i in range(MIN_RUNS))
    assert remote.polls["next"] <= 2
    assert remote.polls["other"] >= 5


async def test_an_answer_that_cannot_be_read_fails_its_waiter_and_polling_goes_on() -> None:
    remote = Remote({"odd": 1, "fine": 2})

    def done(answer: str) -> bool:
        if remote.polls.get("odd"):
            remote.polls["odd"] = 0  # only the first answer of "odd" cannot be read
            raise ValueError("unreadable answer")
        return answer == "succeeded"

    p = Poller(remote.poll, done, interval_s=0.001, max_interval_s=0.002, concurrency=1)
    try:
        odd = await asyncio.gather(p.wait("odd", first_poll_s=0.0), return_exceptions=True)
        assert isinstance(odd[0], ValueError)
        assert await p.wait("fine") == "succeeded"
    finally:
        await p.aclose()
