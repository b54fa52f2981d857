"""The doorbells of the run machine, in one place: the Celery messages and live pushes that follow
a committed change. Services call these from ``transaction.on_commit``; a doorbell that cannot be
rung is logged and dropped (the beat sweep recovers), never failing the change that rang it.
"""

from __future__ import annotations

from assure.doorbell import ring
from runs import tasks
from runs.live import publish_run_changed  # noqa: F401  (rung from here by services)

# A few runs per message: one Celery round trip each was what staggered a batch's start, while
# small chunks still spread a batch over every worker process.
EXECUTE_CHUNK = 8


def execute_runs(run_ids: list[str]) -> None:
    for start in range(0, len(run_ids), EXECUTE_CHUNK):
        ring(tasks.execute_runs, list(run_ids[start:start + EXECUTE_CHUNK]))
    publish_run_changed(*run_ids)


def offer_runs(run_ids: list[str]) -> None:
    """Runs a full worker process could not take, for another process (``tasks.execute_runs``)."""
    ring(tasks.execute_runs, list(run_ids), True)


def admit_runs(workspace_id) -> None:
    ring(tasks.admit_runs, str(workspace_id))


def notify_run_finished(run_id) -> None:
    ring(tasks.notify_run_finished, str(run_id))


def notify_batch_finished(batch_id) -> None:
    ring(tasks.notify_batch_finished, str(batch_id))


def post_batch_to_slack(batch_id) -> None:
    ring(tasks.post_batch_to_slack, str(batch_id))


def stop_run(run_id) -> None:
    ring(tasks.stop_run, str(run_id))
