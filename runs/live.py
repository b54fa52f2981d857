"""Doorbells: Celery messages and Channels pushes that follow a committed change.

The database is the source of truth; a doorbell that cannot be rung (broker or Redis briefly
away) is logged and dropped — the beat sweep and a page reload recover from it — and never
fails or delays the change that rang it.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def ring(task, *args) -> None:
    """Queue ``task`` without waiting on an unreachable broker."""
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # any broker error: the sweep covers it
        logger.warning("could not queue %s%s (%s); the periodic sweep will pick it up", task.name, args, exc)


def run_groups(run_id) -> list[str]:
    from runs.models import Run

    row = Run.objects.filter(pk=run_id).values_list("workspace_id", "scenario_id").first()
    if row is None:
        return []
    workspace_id, scenario_id = row
    groups = [f"run-{run_id}", f"workspace-{workspace_id}"]
    if scenario_id:
        groups.append(f"scenario-{scenario_id}")
    return groups


def publish_run_changed(run_id) -> None:
    """Tell every page that shows this run that its status or stage changed."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "run.changed", "run": str(run_id)}
    try:
        for group in run_groups(run_id):
            async_to_sync(layer.group_send)(group, message)
    except Exception as exc:
        logger.warning("could not publish a change of run %s (%s)", run_id, exc)
