"""Websockets for the live pages. Groups (DESIGN.md, "Live view"): ``run-<id>`` carries turns,
tool invocations and stage changes; ``scenario-<id>`` path statuses; ``workspace-<id>`` the queue.

Pages render from the database, then apply what arrives here. Messages to the browser:
``{"type": "turn" | "tool", "seq", "html"}`` (appended in sequence order; a target's turn also
has ``latency_ms``), ``{"type": "replace", "id", "html"}`` (an element replaced whole). The browser sends
``{"type": "resume", "turn_seq", "tool_seq"}`` on every (re)connect and on a gap, and gets every
row after those numbers from the database: nothing is lost on a flaky connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db.models import OuterRef, Subquery
from django.template.loader import render_to_string

from assure.models import Membership
from runs import live, selectors
from runs.models import Run, ToolInvocation, Turn

TERMINAL = {s.value for s in (Run.Status.COMPLETED, Run.Status.FAILED, Run.Status.CANCELLED)}


@database_sync_to_async
def _membership(user, workspace_id) -> Membership | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(user=user, workspace_id=workspace_id).first()


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Refuses anonymous users and anyone who is not a member of the object's workspace."""

    groups_to_join: list[str] = []

    async def connect(self):
        workspace_id = await self.workspace_id()
        self.membership = await _membership(self.scope.get("user"), workspace_id) if workspace_id else None
        if self.membership is None:
            await self.close(code=4403)
            return
        self.can_edit = self.membership.role != Membership.Role.VIEWER
        for group in self.groups_to_join:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def dispatch(self, message):
        # Channels' dispatch first closes stale database connections, a hop to a thread and back
        # before every message: for a run watched by 100 pages that is 100 hops per turn, all
        # through one thread. Every query here runs through ``database_sync_to_async``, which
        # closes stale connections itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code):
        for group in self.groups_to_join:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def workspace_id(self):
        raise NotImplementedError

    @classmethod
    async def decode_json(cls, text_data):
        # A malformed message from the browser is ignored: raising here would close the socket with 1011.
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            return {}
        return content if isinstance(content, dict) else {}

    async def replace(self, element_id: str, html: str) -> None:
        await self.send_json({"type": "replace", "id": element_id, "html": html})

    # Events a consumer does not need are ignored rather than failing the socket.
    async def run_turn(self, event):
        pass

    async def run_tool(self, event):
        pass

    async def run_changed(self, event):
        pass


def _seq(value) -> int | None:
    """A client's sequence number: absent means 0; a whole number the database can compare with, or None."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        return None
    return value


class RunConsumer(LiveConsumer):
    """Sends each turn and tool invocation once per socket, in order, without gaps.

    The socket's cursors are the last sequence numbers it has sent; they start at the page's
    first ``resume`` (rows pushed before it are left to the resume's read of the database; state
    changes are sent regardless). A push carries the row's frame, rendered once where the row was
    saved, and is forwarded as it is. A push that skips ahead (an earlier one was dropped: pushes
    are doorbells), one without its frame (too large to push), and every state change that shows
    rows this socket lacks bring what is missing from the database, so a lost push is healed by
    the next one.
    """

    turn_cursor: int | None = None
    tool_cursor: int | None = None

    async def workspace_id(self):
        self.run_id = str(self.scope["url_route"]["kwargs"]["pk"])
        self.groups_to_join = [f"run-{self.run_id}"]
        return await database_sync_to_async(
            lambda: Run.objects.filter(pk=self.run_id).values_list("workspace_id", flat=True).first()
        )()

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "resume":
            turn_seq, tool_seq = _seq(content.get("turn_seq")), _seq(content.get("tool_seq"))
            if turn_seq is not None and tool_seq is not None:  # anything else is ignored, the socket stays up
                await self.resume(turn_seq, tool_seq)

    async def resume(self, turn_seq: int, tool_seq: int) -> None:
        """Everything after the client's sequence numbers, then the run's current state."""
        self.turn_cursor, self.tool_cursor = turn_seq, tool_seq
        frames, state = await database_sync_to_async(self._since_cursors_and_state)()
        await self.send_rows(frames)
        await self.send_state(state)

    async def catch_up(self) -> None:
        """The rows after this socket's cursors, from the database."""
        await self.send_rows(await database_sync_to_async(self._since_cursors)())

    def _since_cursors_and_state(self):
        return self._since_cursors(), render_run_state(self.run_id, roles=(self.can_edit,))

    def _since_cursors(self) -> list[tuple[str, int, str]]:
        """(kind, seq, frame) of each row after the cursors, turns first, rendered here, off the loop."""
        if self.turn_cursor is None:  # before the page's first resume its position is unknown
            return []
        turns = Turn.objects.filter(run_id=self.run_id, seq__gt=self.turn_cursor).order_by("seq").values(
            "seq", "speaker", "text", "started_ms", "latency_ms", "is_error")
        tools = ToolInvocation.objects.filter(run_id=self.run_id, seq__gt=self.tool_cursor).order_by("seq").values(
            "seq", "name", "arguments", "result", "at_ms", "status")
        return ([("turn", turn["seq"], live.turn_frame(turn)) for turn in turns]
                + [("tool", tool["seq"], live.tool_frame(tool)) for tool in tools])

    async def send_rows(self, rows: list[tuple[str, int, str]]) -> None:
        for kind, seq, frame in rows:
            if kind == "turn":
                self.turn_cursor = seq
            else:
                self.tool_cursor = seq
            await self.send(text_data=frame)

    async def send_state(self, state: RunState) -> None:
        await self.send(text_data=state.headers[self.can_edit])
        await self.send(text_data=state.summary)

    async def run_turn(self, event):
        if self.turn_cursor is None or event["seq"] <= self.turn_cursor:
            return  # before the page's first resume (which reads it), or already sent
        if event["seq"] == self.turn_cursor + 1 and "frame" in event:
            self.turn_cursor = event["seq"]
            await self.send(text_data=event["frame"])
        else:
            await self.catch_up()

    async def run_tool(self, event):
        if self.tool_cursor is None or event["seq"] <= self.tool_cursor:
            return
        if event["seq"] == self.tool_cursor + 1 and "frame" in event:
            self.tool_cursor = event["seq"]
            await self.send(text_data=event["frame"])
        else:
            await self.catch_up()

    async def run_changed(self, event):
        state = await shared_run_state(self.run_id, event.get("change"))
        if self.turn_cursor is not None and (
                state.last_turn_seq > self.turn_cursor or state.last_tool_seq > self.tool_cursor):
            await self.catch_up()
        await self.send_state(state)


@dataclass(frozen=True)
class RunState:
    """The run page's header (by whether the viewer may edit) and summary, as frames to forward,
    and the last rows saved when they were read."""

    headers: dict[bool, str]
    summary: str
    last_turn_seq: int
    last_tool_seq: int


def render_run_state(run_id, *, roles=(True, False)) -> RunState:
    """The run's state for its page, rendered for each of ``roles`` (may the viewer edit?)."""
    run = (Run.objects.prefetch_related("criteria_results")
           .annotate(last_turn_seq=_last_seq(Turn), last_tool_seq=_last_seq(ToolInvocation)).get(pk=run_id))
    context = {"run": run, "timeline": selectors.timeline(run)}
    headers = {can_edit: _replace_frame("run-header", render_to_string(
        "runs/partials/run_header.html", {**context, "can_edit": can_edit})) for can_edit in roles}
    return RunState(headers=headers,
                    summary=_replace_frame("run-summary", render_to_string("runs/partials/run_summary.html", context)),
                    last_turn_seq=run.last_turn_seq or 0, last_tool_seq=run.last_tool_seq or 0)


def _last_seq(model) -> Subquery:
    return Subquery(model.objects.filter(run=OuterRef("pk")).order_by("-seq").values("seq")[:1])


def _replace_frame(element_id: str, html: str) -> str:
    return json.dumps({"type": "replace", "id": element_id, "html": html})


# A state change reaches every page of the run at once: the pages in this process render it once
# between them, each taking the header for its viewer's role. Kept a few seconds, for pages whose
# queue is behind; a page that comes later renders its own.
SHARED_STATE_SECONDS = 10.0
_shared_states: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}


async def shared_run_state(run_id: str, change: str | None) -> RunState:
    if change is None:  # a publisher that does not name its changes
        return await database_sync_to_async(render_run_state)(run_id)
    now = time.monotonic()
    key = (run_id, change)
    if key not in _shared_states:
        for stale in [old for old, (at, _) in _shared_states.items() if now - at > SHARED_STATE_SECONDS]:
            del _shared_states[stale]
        _shared_states[key] = (now, asyncio.ensure_future(database_sync_to_async(render_run_state)(run_id)))
    # Shielded: a page that closes while waiting must not cancel the render the others wait for.
    return await asyncio.shield(_shared_states[key][1])


class ScenarioConsumer(LiveConsumer):
    async def workspace_id(self):
        from scenarios.models import Scenario

        self.scenario_id = str(self.scope["url_route"]["kwargs"]["pk"])
        self.groups_to_join = [f"scenario-{self.scenario_id}"]
        return await database_sync_to_async(
            lambda: Scenario.objects.filter(pk=self.scenario_id).values_list("workspace_id", flat=True).first()
        )()

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "resume":  # a reconnect: everything may have changed meanwhile
            for element_id, html in await database_sync_to_async(self._render_all)():
                await self.replace(element_id, html)

    def _render_all(self) -> list[tuple[str, str]]:
        from runs.views import scenario_context
        from scenarios.models import Scenario

        context = scenario_context(Scenario.objects.get(pk=self.scenario_id))
        fragments = [(f"path-status-{row['path'].pk}", render_to_string("runs/partials/path_status.html", row))
                     for row in context["rows"]]
        fragments.append(("batch-progress", render_to_string("runs/partials/batch_progress.html", context)))
        return fragments

    async def run_changed(self, event):
        for element_id, html in await database_sync_to_async(self._render_for)(event["run"]):
            await self.replace(element_id, html)

    def _render_for(self, run_id) -> list[tuple[str, str]]:
        run = Run.objects.filter(pk=run_id).select_related("path", "batch").first()
        if run is None or run.path is None:
            return []
        latest = selectors.latest_runs_by_path([run.path]).get(run.path_id)
        fragments = [(f"path-status-{run.path_id}", render_to_string("runs/partials/path_status.html", {"path": run.path, "run": latest}))]
        batch = selectors.latest_batch(run.scenario) if run.scenario_id else None
        if batch is not None and batch.pk == run.batch_id:
            fragments.append(("batch-progress", render_to_string(
                "runs/partials/batch_progress.html", {"batch": batch, "progress": selectors.batch_progress(batch.pk)})))
        return fragments


class QueueConsumer(LiveConsumer):
    """The workspace's queue. Changes come in bursts (a batch finishing), so they are coalesced:
    one re-render per short window, whatever the number of changes in it."""

    COALESCE_SECONDS = 0.15

    async def workspace_id(self):
        user = self.scope.get("user")
        workspace_id = await database_sync_to_async(self._current_workspace_id)(user)
        self.workspace = workspace_id
        self.groups_to_join = [f"workspace-{workspace_id}"]
        self.pending_render: asyncio.Task | None = None
        return workspace_id

    def _current_workspace_id(self, user):
        from assure.tenancy import SESSION_KEY, user_workspaces

        workspaces = user_workspaces(user)
        chosen = self.scope.get("session", {}).get(SESSION_KEY)
        workspace = (workspaces.filter(pk=chosen).first() if chosen else None) or workspaces.order_by("name").first()
        return workspace.pk if workspace else None

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "resume":
            await self.render()

    async def run_changed(self, event):
        if self.pending_render is None or self.pending_render.done():
            self.pending_render = asyncio.ensure_future(self._render_soon())

    async def _render_soon(self):
        await asyncio.sleep(self.COALESCE_SECONDS)
        await self.render()

    async def render(self):
        html = await database_sync_to_async(self._render)()
        await self.replace("queue-tables", html)

    def _render(self) -> str:
        from assure.models import Workspace
        from runs.views import queue_context

        context = queue_context(Workspace.objects.get(pk=self.workspace))
        context["can_edit"] = self.can_edit
        return render_to_string("runs/partials/queue_tables.html", context)
