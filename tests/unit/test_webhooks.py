"""The webhook helpers: URL checks before any DNS, the retry schedule, and signatures that the
``standardwebhooks`` package verifies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.webhooks import (
    JITTER,
    MAX_ATTEMPTS,
    RETRY_DELAYS_S,
    new_secret,
    retry_delay,
    signature,
    url_problem,
)


@pytest.mark.parametrize(("url", "problem"), [
    ("https://example.com/hooks", None),
    ("http://example.com:8080/h?x=1", None),
    ("ftp://example.com/h", "must be an absolute http:// or https:// URL"),
    ("example.com/h", "must be an absolute http:// or https:// URL"),
    ("https://", "must be an absolute http:// or https:// URL"),
    ("https://u:p@example.com/h", "must not contain a user name or password"),
    ("https://example.com/h#frag", "must not contain a fragment"),
    ("https://example.com/" + "a" * 2030, "must be at most 2048 characters"),
])
def test_url_problem(url: str, problem: str | None) -> None:
    assert url_problem(url) == problem


def test_retries_start_within_seconds_and_last_about_a_day() -> None:
    assert len(RETRY_DELAYS_S) + 1 == MAX_ATTEMPTS
    assert RETRY_DELAYS_S[:4] == (1, 2, 4, 8)
    total_h = sum(RETRY_DELAYS_S) / 3600
    assert 24 <= total_h <= 30, total_h
    for attempts, base in enumerate(RETRY_DELAYS_S, start=1):
        delays = [retry_delay(attempts) for _ in range(200)]
        assert all(d is not None and base * (1 - JITTER) <= d <= base * (1 + JITTER)
                   for d in delays)
        assert len(set(delays)) > 100  # jittered, not one value
    assert retry_delay(MAX_ATTEMPTS) is None


def test_the_signature_verifies_with_each_secret_and_only_those() -> None:
    first, second, other = new_secret(), new_secret(), new_secret()
    assert first.startswith("whsec_") and len({first, second, other}) == 3
    now = datetime.now(UTC)
    body = '{"id":"msg_1","type":"job.completed"}'
    header = signature([second, first], "msg_1", now, body)
    assert len(header.split(" ")) == 2 and all(s.startswith("v1,") for s in header.split(" "))
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": header}
    for secret in (first, second):
        assert Webhook(secret).verify(body, headers) == {"id": "msg_1", "type": "job.completed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(body.replace("completed", "started"), headers)
