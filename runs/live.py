"""Live pushes: Channels messages that follow a committed change.

The database is the source of truth; a doorbell that cannot be rung (broker or Redis briefly
away) is logged and dropped — the beat sweep and a page reload recover from it — and never
fails or delays the change that rang it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.template.loader import render_to_string

from assure.doorbell import ring  # noqa: F401  (re-exported: runs code rings through here)

logger = logging.getLogger(__name__)


# A run's groups never change (its workspace and scenario are set when it is queued), and a run
# changes stage several times: remembered, they cost one query per run, not one per transition.
_known_groups: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
KNOWN_GROUPS_LIMIT = 20_000


def run_groups(run_ids) -> dict[str, list[str]]:
    """{run id: the groups of the pages that show it}, in at most one query."""
    from runs.models import Run

    wanted = [str(run_id) for run_id in run_ids]
    groups = {run_id: _known_groups[run_id] for run_id in wanted if run_id in _known_groups}
    missing = [run_id for run_id in wanted if run_id not in groups]
    if missing:
        rows = Run.objects.filter(pk__in=missing).order_by().values_list("pk", "workspace_id", "scenario_id")
        for run_id, workspace_id, scenario_id in rows:
            groups[str(run_id)] = _known_groups[str(run_id)] = [f"run-{run_id}", f"workspace-{workspace_id}"] + (
                [f"scenario-{scenario_id}"] if scenario_id else [])
        while len(_known_groups) > KNOWN_GROUPS_LIMIT:
            _known_groups.popitem(last=False)
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



async def _send_all(messages: list[tuple[list[str], dict]]) -> None:
    for groups, message in messages:
        await group_send(groups, message)


def publish_run_changed(*run_ids) -> None:
    """Tell every page that shows these runs that their status or stage changed.

    Each change carries a token of its own: the run pages of one daphne process that receive it
    render the run's new state once between them (``runs.consumers``), not once each. From a
    process without a long-lived loop (a web request), all messages go out in one
    ``async_to_sync`` call, so one Redis connection serves a whole batch.
    """
    messages = [(groups, {"type": "run.changed", "run": run_id, "change": uuid.uuid4().hex})
                for run_id, groups in run_groups(run_ids).items()]
    if not messages:
        return
    loop = _event_loop
    if loop is not None and loop.is_running():
        asyncio.run_coroutine_threadsafe(_send_all(messages), loop)
    else:
        async_to_sync(_send_all)(messages)


# Transcript pushes: the browser's frame is rendered and encoded once, where the row was saved, and
# every run page's socket forwards it as it is. A run watched by 100 pages used to render each
# turn 100 times on daphne's event loop.

# Every turn's frame fits (20,000 characters, each escaped to at most 12), so this bounds only a
# huge tool invocation: its push goes without the frame, and each page reads the row from the
# database instead. The Redis channel layer has no size limit of its own; its queues hold 100
# messages a channel.
MAX_FRAME_CHARS = 256 * 1024


def turn_frame(turn: dict) -> str:
    """The run page's frame for one turn (``seq``, ``speaker``, ``text``, ``started_ms``,
    ``latency_ms``, ``is_error``): its transcript line, and its latency for the page's gauge."""
    frame = {"type": "turn", "seq": turn["seq"], "html": render_to_string("runs/partials/turn.html", {"turn": turn})}
    if turn.get("latency_ms") is not None:
        frame["latency_ms"] = turn["latency_ms"]
    return json.dumps(frame)


def tool_frame(tool: dict) -> str:
    """The run page's frame for one tool invocation (``seq``, ``name``, ``arguments``, ``result``,
    ``at_ms``, ``status``)."""
    return json.dumps({"type": "tool", "seq": tool["seq"],
                       "html": render_to_string("runs/partials/tool.html", {"tool": tool})})


def turn_message(run_id, turn: dict) -> dict:
    """The ``run.turn`` message of a saved turn, for the run's group."""
    return _row_message("run.turn", run_id, turn["seq"], turn_frame(turn))


def tool_message(run_id, tool: dict) -> dict:
    """The ``run.tool`` message of a saved tool invocation, for the run's group."""
    return _row_message("run.tool", run_id, tool["seq"], tool_frame(tool))


def _row_message(kind: str, run_id, seq: int, frame: str) -> dict:
    message = {"type": kind, "run": str(run_id), "seq": seq}
    if len(frame) <= MAX_FRAME_CHARS:
        message["frame"] = frame
    return message
