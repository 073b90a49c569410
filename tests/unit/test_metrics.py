"""The series genq exports, read back with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import Metrics
from worker.maintenance import TaskReport
from worker.scheduler import count_report


def _values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples if not s.name.endswith("_created")}


def test_a_scheduler_report_counts_its_items_and_the_credits_it_gave_back() -> None:
    metrics = Metrics()
    count_report(metrics, TaskReport("settle_stale_reservations",
                                     {"jobs_failed": 1, "refunded": 2, "credits_refunded": 9}))
    count_report(metrics, TaskReport("settle_stale_reservations", {}))
    values = _values(metrics)
    assert values[("genq_credits_refunded_total", ())] == 9
    assert values[("genq_maintenance_runs_total",
                   (("task", "settle_stale_reservations"),))] == 2
    items = {labels: v for (name, labels), v in values.items()
             if name == "genq_maintenance_items_total"}
    assert items == {
        (("task", "settle_stale_reservations"), ("what", "jobs_failed")): 1,
        (("task", "settle_stale_reservations"), ("what", "refunded")): 2,
    }


def test_each_process_has_its_own_registry() -> None:
    api, worker = Metrics(), Metrics()
    api.job_finished("local/sketch", "canceled", refunded=3)
    worker.settled(captured=5, refunded=1)
    assert _values(api)[("genq_credits_refunded_total", ())] == 3
    assert _values(worker)[("genq_credits_refunded_total", ())] == 1
    assert _values(worker)[("genq_credits_captured_total", ())] == 5
    assert ("genq_jobs_finished_total", ()) not in _values(worker)
    assert _values(api)[("genq_jobs_finished_total",
                         (("model", "local/sketch"), ("status", "canceled")))] == 1
