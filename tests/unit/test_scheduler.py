"""The scheduler's cron table."""

from __future__ import annotations

import pytest

from shared.settings import load_settings
from worker.scheduler import TASKS, cron_jobs


@pytest.mark.parametrize(
    ("interval", "field", "ticks"),
    [(5, "second", set(range(0, 60, 5))), (60, "minute", set(range(60))),
     (300, "minute", {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}), (3600, "minute", {0})],
)
def test_ticks_are_evenly_spaced(interval: int, field: str, ticks: set[int]) -> None:
    jobs = cron_jobs(load_settings(sweep_interval_s=interval, _env_file=None))
    assert len(jobs) == len(TASKS)
    sweep = [j for j in jobs
             if not j.name.endswith(("sweep-orphan-files", "enqueue-new-jobs", "measure-queue"))]
    assert len(sweep) == len(TASKS) - 3
    assert all(getattr(j, field) == ticks for j in sweep)


@pytest.mark.parametrize(("interval", "ticks"), [(2, set(range(0, 60, 2))), (1, set(range(60))),
                                                 (15, {0, 15, 30, 45})])
def test_never_enqueued_jobs_are_swept_every_few_seconds(interval: int, ticks: set[int]) -> None:
    settings = load_settings(enqueue_sweep_interval_s=interval, _env_file=None)
    [job] = [j for j in cron_jobs(settings) if j.name.endswith(":enqueue-new-jobs")]
    assert job.second == ticks
    [speed] = [j for j in cron_jobs(settings) if j.name.endswith(":measure-queue")]
    assert speed.second == ticks
    assert load_settings(_env_file=None).enqueue_sweep_interval_s == 2


def test_cron_ids_carry_the_queue_name() -> None:
    jobs = cron_jobs(load_settings(queue_name="tenant-a:queue", _env_file=None))
    assert all(j.name.startswith("tenant-a:queue:") for j in jobs)
