"""Group commit (shared/batch.py): concurrent calls share flushes, each caller gets its own
result or its own error, and a failing flush fails only its own batch."""

from __future__ import annotations

import asyncio

import pytest

from shared.batch import Batcher


class Recorder:
    """A flush that doubles its items, remembers its batches and how many ran at once."""

    def __init__(self, fail_items: frozenset[int] = frozenset(), fail_batches: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.fail_items = fail_items
        self.fail_batches = fail_batches

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.batches.append(list(items))
            await asyncio.sleep(0.01)  # a round trip: calls arriving meanwhile wait for the next
            if len(self.batches) <= self.fail_batches:
                raise ConnectionError("the database went away")
            return [ValueError(f"bad {i}") if i in self.fail_items else i * 2 for i in items]
        finally:
            self.running -= 1


async def test_a_lone_call_is_flushed_alone_and_at_once() -> None:
    flush = Recorder()
    batcher: Batcher[int, int] = Batcher(flush, max_batch=10, max_flushes=2)
    assert await batcher(21) == 42
    assert flush.batches == [[21]]


async def test_concurrent_calls_share_flushes_within_the_limits() -> None:
    flush = Recorder()
    batcher: Batcher[int, int] = Batcher(flush, max_batch=16, max_flushes=2)
    results = await asyncio.gather(*(batcher(i) for i in range(200)))
    assert results == [i * 2 for i in range(200)]
    assert sorted(i for batch in flush.batches for i in batch) == list(range(200))
    assert len(flush.batches) < 40  # 200 one-item round trips without batching
    assert max(len(b) for b in flush.batches) == 16
    assert flush.most_running == 2


async def test_an_item_error_reaches_its_caller_only() -> None:
    flush = Recorder(fail_items=frozenset({3, 7}))
    batcher: Batcher[int, int] = Batcher(flush, max_batch=50, max_flushes=1)
    results = await asyncio.gather(*(batcher(i) for i in range(10)), return_exceptions=True)
    for i, result in enumerate(results):
        if i in (3, 7):
            assert isinstance(result, ValueError) and str(result) == f"bad {i}"
        else:
            assert result == i * 2


async def test_a_failed_flush_fails_its_batch_and_the_next_one_works() -> None:
    flush = Recorder(fail_batches=1)
    batcher: Batcher[int, int] = Batcher(flush, max_batch=50, max_flushes=1)
    first = asyncio.gather(*(batcher(i) for i in range(5)), return_exceptions=True)
    await asyncio.sleep(0)  # the first flush takes what is pending now
    later = asyncio.gather(*(batcher(i) for i in range(5, 10)), return_exceptions=True)
    failed, succeeded = await first, await later
    # The first call went out alone; everything that arrived during it failed or not with the
    # batch it went out in.
    assert len(flush.batches) >= 2
    first_batch = set(flush.batches[0])
    for i, result in enumerate([*failed, *succeeded]):
        if i in first_batch:
            assert isinstance(result, ConnectionError)
        else:
            assert result == i * 2


async def test_a_caller_that_goes_away_does_not_disturb_its_batch() -> None:
    flush = Recorder()
    batcher: Batcher[int, int] = Batcher(flush, max_batch=50, max_flushes=1)
    leaving = asyncio.create_task(batcher(1))
    staying = [asyncio.create_task(batcher(i)) for i in range(2, 6)]
    await asyncio.sleep(0)
    leaving.cancel()
    assert await asyncio.gather(*staying) == [4, 6, 8, 10]
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await batcher.drain()
    # The item still went out: what its batch wrote stays written.
    assert 1 in [i for batch in flush.batches for i in batch]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder(), max_batch=0, max_flushes=1)
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder(), max_batch=1, max_flushes=0)


class KeyedRecorder(Recorder):
    """A Recorder that also notes each key (``item // 100``) two flushes held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[int] = []
        self.shared_keys: set[int] = set()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        keys = {i // 100 for i in items}
        self.shared_keys |= keys & set(self.in_flight)
        self.in_flight.extend(keys)
        try:
            return await super().__call__(items)
        finally:
            for key in keys:
                self.in_flight.remove(key)


async def test_with_a_key_one_keys_items_never_go_out_in_two_flushes_at_once() -> None:
    flush = KeyedRecorder()
    batcher: Batcher[int, int] = Batcher(flush, max_batch=2, max_flushes=4,
                                         key=lambda i: i // 100)
    items = [100, 101, 102, 103, 104, 105, 200, 201]
    assert await asyncio.gather(*(batcher(i) for i in items)) == [i * 2 for i in items]
    assert flush.shared_keys == set()
    # Key 1's in arrival order, two at a time, one flush after another; key 2's beside the
    # first of them.
    assert flush.batches == [[100, 101], [200, 201], [102, 103], [104, 105]]
    assert flush.most_running == 2


async def test_without_a_key_one_keys_items_share_concurrent_flushes() -> None:
    flush = KeyedRecorder()
    batcher: Batcher[int, int] = Batcher(flush, max_batch=2, max_flushes=4)
    items = [100, 101, 102, 103, 104, 105, 200, 201]
    assert await asyncio.gather(*(batcher(i) for i in items)) == [i * 2 for i in items]
    assert flush.shared_keys == {1}
    assert flush.most_running == 4
