"""Websockets for the live pages. Groups (DESIGN.md, "Live view"): ``run-<id>`` carries turns,
tool invocations and stage changes; ``scenario-<id>`` path statuses; ``workspace-<id>`` the queue.

Pages render from the database, then apply what arrives here. Messages to the browser:
``{"type": "turn" | "tool", "seq", "html"}`` (appended in sequence order), ``{"type": "replace",
"id", "html"}`` (an element replaced whole), ``{"type": "latency", "ms"}``. The browser sends
``{"type": "resume", "turn_seq", "tool_seq"}`` on every (re)connect and on a gap, and gets every
row after those numbers from the database: nothing is lost on a flaky connection.
"""

from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.template.loader import render_to_string

from assure.models import Membership
from runs import selectors
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
    changes are sent regardless). A push that skips ahead (an earlier one was dropped: pushes are
    doorbells) and every state change bring what is missing from the database, so a lost push is
    healed by the next one.
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
        await self.catch_up(with_state=True)

    async def catch_up(self, *, with_state: bool) -> None:
        """The rows after this socket's cursors, from the database (and the run's state)."""
        turns, tools, state = await database_sync_to_async(self._since_cursors)(with_state)
        for turn in turns:
            await self.send_turn(turn)
        for tool in tools:
            await self.send_tool(tool)
        if state:
            await self.replace("run-header", state[0])
            await self.replace("run-summary", state[1])

    def _since_cursors(self, with_state: bool):
        turns = tools = []
        if self.turn_cursor is not None:  # before the page's first resume its position is unknown
            turns = list(Turn.objects.filter(run_id=self.run_id, seq__gt=self.turn_cursor).order_by("seq").values(
                "seq", "speaker", "text", "started_ms", "latency_ms", "is_error"))
            tools = list(ToolInvocation.objects.filter(run_id=self.run_id, seq__gt=self.tool_cursor).order_by("seq")
                         .values("seq", "name", "arguments", "result", "at_ms", "status"))
        return turns, tools, self._render_state() if with_state else None

    async def send_turn(self, turn: dict) -> None:
        self.turn_cursor = turn["seq"]
        await self.send_json({"type": "turn", "seq": turn["seq"], "html": render_to_string("runs/partials/turn.html", {"turn": turn})})
        if turn.get("latency_ms") is not None:
            await self.send_json({"type": "latency", "ms": turn["latency_ms"]})

    async def send_tool(self, tool: dict) -> None:
        self.tool_cursor = tool["seq"]
        await self.send_json({"type": "tool", "seq": tool["seq"], "html": render_to_string("runs/partials/tool.html", {"tool": tool})})

    def _render_state(self) -> tuple[str, str]:
        run = Run.objects.prefetch_related("criteria_results").get(pk=self.run_id)
        context = {"run": run, "timeline": selectors.timeline(run), "can_edit": self.can_edit}
        return (render_to_string("runs/partials/run_header.html", context),
                render_to_string("runs/partials/run_summary.html", context))

    async def run_turn(self, event):
        if self.turn_cursor is None or event["seq"] <= self.turn_cursor:
            return  # before the page's first resume (which reads it), or already sent
        if event["seq"] == self.turn_cursor + 1:
            await self.send_turn(event)
        else:
            await self.catch_up(with_state=False)

    async def run_tool(self, event):
        if self.tool_cursor is None or event["seq"] <= self.tool_cursor:
            return
        if event["seq"] == self.tool_cursor + 1:
            await self.send_tool(event)
        else:
            await self.catch_up(with_state=False)

    async def run_changed(self, event):
        await self.catch_up(with_state=True)


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
