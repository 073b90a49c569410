"""The worker's control-flow signals are not API errors: nothing maps them to an HTTP status or
writes their name as a job's error code."""

from __future__ import annotations

import pytest

from shared.errors import GenqError
from worker import generation
from worker.generation import JobBusy, JobRetry, LeaseLost


@pytest.mark.parametrize("signal", [JobBusy(1.5), JobRetry(2.0), LeaseLost("taken over")])
def test_signals_are_plain_worker_exceptions(signal: Exception) -> None:
    assert not isinstance(signal, GenqError)
    assert isinstance(signal, generation.WorkerSignal)
    assert not hasattr(signal, "code")
    assert not hasattr(signal, "status")


def test_signals_carry_what_the_arq_job_needs() -> None:
    assert JobBusy(1.5).retry_after_s == 1.5
    assert JobRetry(2.0).defer_s == 2.0
