"""Websockets of the live pages: who may connect, and resume-by-sequence-number."""

import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from runs import live
from runs.routing import websocket_urlpatterns
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(path, user=None):
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    if user is not None:
        comm.scope["user"] = user
    return comm


async def connect(comm):
    connected, code = await comm.connect(timeout=5)
    return connected, code


def running_run(workspace, turns=5, tools=1):
    run = f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)))
    run.status, run.stage = "running", "live"
    run.save()
    for seq in range(1, turns + 1):
        f.TurnFactory(run=run, seq=seq, speaker="caller" if seq % 2 else "target", text=f"turn {seq}",
                      started_ms=seq * 100, latency_ms=None if seq % 2 else 40 + seq)
    for seq in range(1, tools + 1):
        f.ToolInvocationFactory(run=run, seq=seq, name="press_digit", arguments={"digits": "1"}, at_ms=seq * 150)
    return run


def test_resume_sends_exactly_the_missing_turns_then_live_ones(workspace, member):
    run = running_run(workspace)

    async def scenario():
        comm = communicator(f"/ws/runs/{run.pk}/", member)
        assert (await connect(comm))[0]
        await comm.send_json_to({"type": "resume", "turn_seq": 2, "tool_seq": 1})
        received = []
        while True:
            message = await comm.receive_json_from(timeout=5)
            received.append(message)
            if message["type"] == "replace" and message["id"] == "run-summary":
                break
        turns = [m["seq"] for m in received if m["type"] == "turn"]
        tools = [m["seq"] for m in received if m["type"] == "tool"]
        replaced = [m["id"] for m in received if m["type"] == "replace"]
        assert turns == [3, 4, 5] and tools == [] and replaced == ["run-header", "run-summary"]
        assert 'data-seq="3"' in next(m["html"] for m in received if m.get("seq") == 3)
        assert [m.get("latency_ms") for m in received if m["type"] == "turn"] == [None, 44, None]
        # A turn saved while connected arrives pushed, once.
        await get_channel_layer().group_send(f"run-{run.pk}", live.turn_message(run.pk, {
            "seq": 6, "speaker": "target", "text": "pushed", "started_ms": 600, "latency_ms": 12, "is_error": False}))
        pushed = await comm.receive_json_from(timeout=5)
        assert pushed["type"] == "turn" and pushed["seq"] == 6 and "pushed" in pushed["html"]
        assert pushed["latency_ms"] == 12
        await comm.disconnect()

    async_to_sync(scenario)()


def test_each_turn_reaches_the_socket_once_and_a_dropped_push_is_healed_by_the_next(workspace, member):
    run = running_run(workspace, turns=2, tools=0)

    def push(seq):
        return get_channel_layer().group_send(f"run-{run.pk}", live.turn_message(run.pk, {
            "seq": seq, "speaker": "target", "text": f"turn {seq}", "started_ms": seq * 100, "latency_ms": None,
            "is_error": False}))

    async def turns_until_summary(comm):
        seqs = []
        while True:
            message = await comm.receive_json_from(timeout=5)
            if message["type"] == "turn":
                seqs.append(message["seq"])
            if message["type"] == "replace" and message["id"] == "run-summary":
                return seqs

    async def scenario():
        comm = communicator(f"/ws/runs/{run.pk}/", member)
        assert (await connect(comm))[0]
        await push(2)  # before the page's resume: the resume's read of the database covers it
        await comm.send_json_to({"type": "resume", "turn_seq": 0, "tool_seq": 0})
        assert await turns_until_summary(comm) == [1, 2]
        await push(2)  # the push of a turn the resume already sent
        # Turn 3's push is lost; turns 3 and 4 are saved; 4's push brings 3 from the database.
        await database_sync_to_async(lambda: [f.TurnFactory(run=run, seq=seq, speaker="caller", text=f"turn {seq}",
                                                            started_ms=seq * 100) for seq in (3, 4)])()
        await push(4)
        assert [(await comm.receive_json_from(timeout=5))["seq"] for _ in range(2)] == [3, 4]
        # Turn 5's push is lost too; the run's next state change brings it.
        await database_sync_to_async(lambda: f.TurnFactory(run=run, seq=5, speaker="target", text="turn 5",
                                                           started_ms=500))()
        await get_channel_layer().group_send(f"run-{run.pk}", {"type": "run.changed", "run": str(run.pk)})
        assert await turns_until_summary(comm) == [5]
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_unauthenticated_and_other_workspace_connections_are_refused(workspace, other_workspace, member):
    from django.contrib.auth.models import AnonymousUser

    theirs = running_run(other_workspace, turns=1, tools=0)
    their_scenario = theirs.scenario

    async def scenario():
        for path, user in [
            (f"/ws/runs/{theirs.pk}/", AnonymousUser()),
            (f"/ws/runs/{theirs.pk}/", member),
            (f"/ws/scenarios/{their_scenario.pk}/", member),
            ("/ws/runs/00000000-0000-0000-0000-000000000000/", member),
        ]:
            comm = communicator(path, user)
            connected, code = await connect(comm)
            assert not connected and code == 4403, path
            await comm.disconnect()
        comm = communicator("/ws/queue/", AnonymousUser())
        assert not (await connect(comm))[0]
        await comm.disconnect()

    async_to_sync(scenario)()


def test_the_full_asgi_stack_refuses_a_browser_without_a_session_or_from_another_origin(workspace, member):
    from assure.asgi import application

    run = running_run(workspace, turns=1, tools=0)

    async def scenario():
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")])
        connected, code = await comm.connect(timeout=5)
        assert not connected and code == 4403
        await comm.disconnect()
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers=[(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1")])
        connected, _ = await comm.connect(timeout=5)
        assert not connected
        await comm.disconnect()

    async_to_sync(scenario)()


def test_scenario_socket_pushes_the_changed_path_status_and_batch_progress(workspace, member):
    from runs import services

    workspace.queue_paused = True  # the run stays queued: no worker runs in this test
    workspace.save()
    scenario = f.ScenarioFactory(workspace=workspace)
    path = f.PathFactory(scenario=scenario)
    batch, (run,) = services.scenario_run_all(scenario=scenario)

    async def check():
        comm = communicator(f"/ws/scenarios/{scenario.pk}/", member)
        assert (await connect(comm))[0]
        await get_channel_layer().group_send(f"scenario-{scenario.pk}", {"type": "run.changed", "run": str(run.pk)})
        first = await comm.receive_json_from(timeout=5)
        second = await comm.receive_json_from(timeout=5)
        assert first["id"] == f"path-status-{path.pk}" and 'data-status="pending"' in first["html"]
        assert second["id"] == "batch-progress" and "1 queued" in second["html"]
        await comm.disconnect()

    async_to_sync(check)()


def test_queue_socket_renders_the_queue_once_for_a_burst_of_changes(workspace, member):
    run = running_run(workspace, turns=0, tools=0)

    async def check():
        comm = communicator("/ws/queue/", member)
        comm.scope["session"] = {}
        assert (await connect(comm))[0]
        for _ in range(5):
            await get_channel_layer().group_send(f"workspace-{workspace.pk}", {"type": "run.changed", "run": str(run.pk)})
        message = await comm.receive_json_from(timeout=5)
        assert message["id"] == "queue-tables" and f"run-row-{run.pk}" in message["html"]
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()

    async_to_sync(check)()
