"""The benchmark's pure helpers: percentiles, ratios, targets, the raw HTTP request."""

from __future__ import annotations

import pytest

from bench.loadgen import http_request
from bench.report import Row, table
from bench.stats import fmt, percentile, ratio


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_ratio_and_format() -> None:
    assert ratio(3, 4) == 0.75
    assert ratio(1, 0) is None
    assert ratio(None, 1) is None
    assert [fmt(v) for v in (None, 0, 0.1234, 2.345, 23.45, 2345.6)] == [
        "-", "0", "0.123", "2.35", "23.4", "2,346"]


def test_targets_on_ratio_and_on_value() -> None:
    assert Row("s", "f", 60, 100, "x", limit=0.6).met is True
    assert Row("s", "f", 59, 100, "x", limit=0.6).met is False
    assert Row("s", "f", 3.9, 2, "s", better="lower", limit=4, on="genq").met is True
    assert Row("s", "f", 4.1, 2, "s", better="lower", limit=4, on="genq").met is False
    assert Row("s", "f", 1, None, "x").met is None
    assert "0.60x" in table([Row("s", "fig", 60, 100, "x", limit=0.6, target="t")])


def test_http_request_bytes() -> None:
    raw = http_request("POST", "/v1/jobs", host="h:1", headers={"A": "b"}, body=b"{}")
    assert raw == b"POST /v1/jobs HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"
