"""A provider call canceled at the moment it completes is canceled, not finished: on Python
3.11, ``asyncio.wait_for`` returns the result and drops such a cancel, which left a job running
after its cancel, or a stopping worker's poller task alive forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.settings import Settings
from worker.providers.calls import call_provider

ROOT = Path(__file__).resolve().parents[2]


async def test_a_cancel_that_arrives_as_the_call_completes_is_not_lost(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def op() -> str:
        started.set()
        return await answer

    call = asyncio.create_task(call_provider(
        "test", "get", settings, op, errors=(), is_transient=lambda exc: False,
        describe=repr))
    await started.wait()
    # In one step of the loop: the provider answers and the caller is canceled.
    answer.set_result("done")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def test_no_code_waits_with_asyncio_wait_for() -> None:
    """The same hazard anywhere else: asyncio.timeout() is what the code uses."""
    found = [f"{path.relative_to(ROOT)}:{n}"
             for folder in ("api", "worker", "shared")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "wait_for(" in line and not line.lstrip().startswith("#")]
    assert found == []
