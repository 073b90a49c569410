"""Pure helpers of the API: cursors, limits, credentials, the key cache, body parsing and
validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from api import revocations
from api.auth import ApiKeyCache, bearer_token
from api.body import is_json_media_type, parse_json
from api.errors import InvalidJson, ValidationFailed
from api.jobs.models import JobCreate, check_job
from api.middleware import request_id_from
from api.pagination import (
    MAX_LIMIT,
    decode_id_cursor,
    decode_time_cursor,
    encode_id_cursor,
    encode_time_cursor,
    parse_limit,
)
from api.validation import params_problem, request_hash, text_problem


def test_time_cursor_round_trips() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = uuid.uuid4()
    cursor = encode_time_cursor(when, row_id)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_time_cursor(cursor) == (when, row_id)


@pytest.mark.parametrize("cursor", [
    "%%%", "x" * 500, "bm9wZQ", encode_id_cursor(5), "WyIyMDI2LTAxLTAxIiwieCJd",
    "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIl0",
    "é",
])
def test_bad_time_cursors_are_rejected(cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_time_cursor(cursor)


def test_id_cursor_round_trips_and_rejects_junk() -> None:
    assert decode_id_cursor(encode_id_cursor(42)) == 42
    for bad in (encode_time_cursor(datetime.now(UTC), uuid.uuid4()), "WzBd", "W3RydWVd",
                "WyIxIl0", "not base64!"):
        with pytest.raises(ValidationFailed):
            decode_id_cursor(bad)


def test_parse_limit() -> None:
    assert parse_limit("1") == 1
    assert parse_limit("007") == 7
    assert parse_limit("100") == 100
    assert parse_limit("101") == MAX_LIMIT
    assert parse_limit("99999999") == MAX_LIMIT
    assert parse_limit("9" * 5000) == MAX_LIMIT
    for bad in ("", "0", "00", "-1", "+1", "1.5", "abc", "1e3", " 5", "²", "①", "٣", "1²"):
        with pytest.raises(ValidationFailed):
            parse_limit(bad)


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in (None, "", "Bearer", "Bearer ", "Basic abc", "abc", "Bearer " + "x" * 600):
        assert bearer_token(bad) is None


def test_key_cache_expires_and_is_bounded() -> None:
    now = [0.0]
    cache = ApiKeyCache(ttl_s=10, max_entries=3, clock=lambda: now[0])
    user = uuid.uuid4()
    cache.put(b"a", user)
    assert cache.get(b"a") == user
    now[0] = 9.9
    assert cache.get(b"a") == user
    now[0] = 10.0
    assert cache.get(b"a") is None
    for key in (b"1", b"2", b"3", b"4"):
        cache.put(key, uuid.uuid4())
    assert len(cache) == 3
    assert cache.get(b"1") is None  # the oldest went first
    assert cache.get(b"4") is not None


def test_key_cache_with_zero_ttl_caches_nothing() -> None:
    cache = ApiKeyCache(ttl_s=0)
    cache.put(b"a", uuid.uuid4())
    assert cache.get(b"a") is None


def test_request_ids() -> None:
    assert request_id_from("abc-123.x:y") == "abc-123.x:y"
    for bad in (None, "", "has space", "x" * 129, "ünï", "a\nb"):
        made = request_id_from(bad)
        assert len(made) == 32 and made != bad


def test_json_media_type() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("Application/JSON; charset=utf-8")
    for bad in (None, "", "text/json", "application/jsonx", "application/x-json"):
        assert not is_json_media_type(bad)


@pytest.mark.parametrize("raw", [
    b"", b"  ", b"{", b"NaN", b'{"a": Infinity}', b"\xff", b"[" * 100_000, b"1" * 5000,
])
def test_parse_json_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidJson):
        parse_json(raw)


def test_parse_json_accepts() -> None:
    assert parse_json('{"a": ["é", 1e3, null]}'.encode()) == {"a": ["é", 1000.0, None]}


def test_text_problem() -> None:
    assert text_problem("fine ✓") is None
    assert text_problem("a\x00") is not None
    assert text_problem("\ud800") is not None


def test_params_problem() -> None:
    assert params_problem({"a": [1, {"b": "c"}]}, 100) is None
    assert params_problem({"a": float("inf")}, 100) is not None
    assert params_problem({"a": float("nan")}, 100) is not None
    assert params_problem({"\x00": 1}, 100) is not None
    assert params_problem({"a": "x" * 100}, 100) is not None
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    assert params_problem(deep, 10_000) is not None


def test_request_hash_ignores_key_order_and_defaults() -> None:
    a = JobCreate.model_validate({"model": "m/x", "prompt": "p", "params": {"x": 1, "y": 2}})
    b = JobCreate.model_validate(
        {"params": {"y": 2, "x": 1}, "prompt": "p", "model": "m/x", "num_outputs": 1}
    )
    c = JobCreate.model_validate({"model": "m/x", "prompt": "p", "params": {"x": 1, "y": 3}})
    assert request_hash(a) == request_hash(b)
    assert request_hash(a) != request_hash(c)


def test_check_job_lists_every_problem() -> None:
    job = JobCreate.model_validate(
        {"model": "m/x", "prompt": "x" * 11, "params": {"k": "v" * 50}}
    )
    with pytest.raises(ValidationFailed) as info:
        check_job(job, max_prompt_chars=10, max_params_bytes=20)
    assert [d["field"] for d in info.value.details] == ["prompt", "params"]


def test_key_cache_invalidations_drop_entries_and_stale_lookups() -> None:
    cache = ApiKeyCache(ttl_s=60)
    ada, bob = uuid.uuid4(), uuid.uuid4()
    cache.put(b"ada-1", ada)
    cache.put(b"ada-2", ada)
    cache.put(b"bob-1", bob)
    revocations.apply(cache, revocations.key_message(b"ada-1"))
    assert (cache.get(b"ada-1"), cache.get(b"ada-2")) == (None, ada)
    revocations.apply(cache, revocations.user_message(ada))
    assert (cache.get(b"ada-2"), cache.get(b"bob-1")) == (None, bob)
    # A lookup that began before an invalidation does not put what it read.
    epoch = cache.epoch
    revocations.apply(cache, revocations.key_message(b"bob-2"))
    cache.put(b"bob-2", bob, epoch)
    assert cache.get(b"bob-2") is None
    cache.put(b"bob-2", bob, cache.epoch)
    assert cache.get(b"bob-2") == bob
    # Anything it cannot read clears everything.
    revocations.apply(cache, "key:not-hex")
    assert len(cache) == 0


def test_a_key_cache_not_live_serves_and_keeps_nothing() -> None:
    cache = ApiKeyCache(ttl_s=60, live=False)
    user = uuid.uuid4()
    cache.put(b"a", user)
    assert cache.get(b"a") is None and len(cache) == 0
    cache.clear(live=True)
    cache.put(b"a", user)
    assert cache.get(b"a") == user
    cache.clear(live=False)
    assert cache.get(b"a") is None and len(cache) == 0
