"""Live pushes: Channels messages that follow a committed change.

The database is the source of truth; a doorbell that cannot be rung (broker or Redis briefly
away) is logged and dropped — the beat sweep and a page reload recover from it — and never
fails or delays the change that rang it.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from assure.doorbell import ring  # noqa: F401  (re-exported: runs code rings through here)

logger = logging.getLogger(__name__)


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


# A process with a long-lived event loop (a worker's conversation host) publishes from it: each
# ``async_to_sync`` from a fresh loop opens a new Redis connection (FLOORS.md), which made every
# transition of every run pay several milliseconds on the executor's database thread.
_event_loop = None


def publish_from_loop(loop) -> None:
    global _event_loop
    _event_loop = loop


# Hundreds of conversations publishing at once would each take a Redis connection from the
# layer's pool until it runs dry ("Too many connections"); a few at a time is as fast.
PUBLISH_CONCURRENCY = 8
_slots: dict[int, asyncio.Semaphore] = {}


async def group_send(groups: list[str], message: dict, *, timeout: float = 2.0) -> None:
    """Publish ``message`` to ``groups``; a failure is logged, never raised (the row is saved)."""
    layer = get_channel_layer()
    if layer is None:
        return
    loop_id = id(asyncio.get_running_loop())
    slots = _slots.get(loop_id) or _slots.setdefault(loop_id, asyncio.Semaphore(PUBLISH_CONCURRENCY))
    try:
        async with slots:
            for group in groups:
                await asyncio.wait_for(layer.group_send(group, message), timeout)
    except Exception as exc:
        logger.warning("could not publish %s to %s (%s)", message.get("type"), groups, exc)



def publish_run_changed(run_id) -> None:
    """Tell every page that shows this run that its status or stage changed."""
    groups = run_groups(run_id)
    message = {"type": "run.changed", "run": str(run_id)}
    loop = _event_loop
    if loop is not None and loop.is_running():
        asyncio.run_coroutine_threadsafe(group_send(groups, message), loop)
    else:
        async_to_sync(group_send)(groups, message)
