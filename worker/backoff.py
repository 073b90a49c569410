"""Exponential backoff with jitter, shared by provider calls and downloads."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, base_s: float, max_s: float, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): "equal jitter".

    Half of the capped exponential step is fixed, half is random, so retries from many jobs
    that failed together spread out without ever retrying at once.
    """
    step = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None if absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(0.0, seconds)
