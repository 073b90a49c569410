"""Small pure helpers: percentiles, ratios, and how numbers are shown."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0..100) of ``values``, linearly interpolated between ranks.

    Raises ValueError on an empty sequence or a percentile outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(genq: float | None, baseline: float | None) -> float | None:
    """genq / baseline, or None when either is missing or the baseline is zero."""
    if genq is None or baseline is None or baseline == 0:
        return None
    return genq / baseline


def fmt(value: float | None) -> str:
    """A number with about three significant digits; ``-`` for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
