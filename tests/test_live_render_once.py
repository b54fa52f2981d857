"""A run watched by many pages costs daphne one render per change, not one per page: a saved row
is rendered where it was saved and its frame forwarded as it is; a state change is rendered once
for all the pages of a process. A slow publish never holds up the conversation."""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import IntegrityError
from django.db.backends.utils import CursorWrapper
from django.template.loader import render_to_string
from django.test.signals import template_rendered
from django.utils import timezone

from runs import known, live
from runs.models import ToolInvocation, Turn
from runs.recorder import MAX_TURN_CHARS, DbRecorder, capped_text
from runs.routing import websocket_urlpatterns
from tests import factories as f
from tests.support import DaphneServer, chromium, signed_in_page

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def running_run(workspace):
    return f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)),
                        status="running", stage="live", started_at=timezone.now())


@pytest.fixture
def queries(monkeypatch):
    """Every SQL statement run meanwhile, from any thread: consumers query from threads of their own."""
    statements = []
    execute = CursorWrapper.execute

    def counted(self, sql, params=None):
        statements.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counted)
    return statements


@pytest.fixture
def renders():
    """The names of the templates rendered meanwhile, from any thread."""
    names = []

    def note(sender, template, context, **kwargs):
        names.append(template.name)

    template_rendered.connect(note)
    yield names
    template_rendered.disconnect(note)


async def open_page(run, user, *, turn_seq=0, tool_seq=0):
    """A run page's socket after its first resume has been answered."""
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/runs/{run.pk}/")
    comm.scope["user"] = user
    assert (await comm.connect(timeout=10))[0]
    await comm.send_json_to({"type": "resume", "turn_seq": turn_seq, "tool_seq": tool_seq})
    await until_summary(comm)
    return comm


async def until_summary(comm) -> list[dict]:
    received = []
    while True:
        received.append(await comm.receive_json_from(timeout=10))
        if received[-1]["type"] == "replace" and received[-1]["id"] == "run-summary":
            return received


async def group_listener(run):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(f"run-{run.pk}", channel)
    return layer, channel


def test_a_saved_turn_is_pushed_with_the_frame_its_page_shows(running_run):
    async def scenario():
        layer, channel = await group_listener(running_run)
        await DbRecorder(running_run.pk).turn(speaker="target", text='<b>"Tuesday"</b> at 10', started_ms=5,
                                              ended_ms=5, latency_ms=42)
        return await asyncio.wait_for(layer.receive(channel), 5)

    message = async_to_sync(scenario)()
    saved = Turn.objects.get(run=running_run)
    assert message["type"] == "run.turn" and message["seq"] == 1
    assert json.loads(message["frame"]) == {
        "type": "turn", "seq": 1, "latency_ms": 42,
        "html": render_to_string("runs/partials/turn.html", {"turn": saved}),  # as the run page renders the row
    }


def test_the_run_page_forwards_a_pushed_frame_as_it_is_without_the_database(running_run, member, queries, renders):
    f.TurnFactory(run=running_run, seq=1, speaker="caller", text="Hello", started_ms=0)
    # Not what turn 2 would render to, and no turn 2 in the database: only the push can supply it.
    frame = json.dumps({"type": "turn", "seq": 2, "html": '<li id="turn-2" data-seq="2">forwarded as it is</li>'})

    async def scenario():
        page = await open_page(running_run, member, turn_seq=0)
        queries.clear()
        renders.clear()
        await get_channel_layer().group_send(f"run-{running_run.pk}", {
            "type": "run.turn", "run": str(running_run.pk), "seq": 2, "frame": frame})
        forwarded = await page.receive_from(timeout=5)
        await page.disconnect()
        return forwarded

    assert async_to_sync(scenario)() == frame
    assert queries == [] and renders == []


def test_a_push_is_forwarded_while_the_database_thread_is_busy(running_run, member):
    frame = json.dumps({"type": "turn", "seq": 1, "html": '<li id="turn-1" data-seq="1">pushed</li>'})

    async def scenario():
        page = await open_page(running_run, member)
        # Another page's slow query holds the thread the consumers' database calls share.
        slow_query = asyncio.ensure_future(database_sync_to_async(time.sleep)(3))
        await asyncio.sleep(0.1)
        await get_channel_layer().group_send(f"run-{running_run.pk}", {
            "type": "run.turn", "run": str(running_run.pk), "seq": 1, "frame": frame})
        forwarded = await page.receive_from(timeout=1.5)
        await slow_query
        await page.disconnect()
        return forwarded

    assert async_to_sync(scenario)() == frame


def test_a_hundred_pages_of_a_run_share_one_render_of_a_state_change(workspace, running_run, queries, renders):
    editor = f.MembershipFactory(workspace=workspace, role="member").user
    viewer = f.MembershipFactory(workspace=workspace, role="viewer").user
    f.TurnFactory(run=running_run, seq=1, speaker="caller", text="Hello", started_ms=0)

    async def scenario():
        pages = [await open_page(running_run, editor if i % 2 else viewer, turn_seq=1) for i in range(100)]
        queries.clear()
        renders.clear()
        await sync_to_async(live.publish_run_changed)(str(running_run.pk))  # as a service does on commit
        received = [await until_summary(page) for page in pages]
        for page in pages:
            assert await page.receive_nothing(timeout=0.01)
            await page.disconnect()
        return received

    received = async_to_sync(scenario)()
    headers = [next(m["html"] for m in messages if m.get("id") == "run-header") for messages in received]
    # Each page gets the header for its viewer's role: only editors may cancel.
    assert ['data-action="cancel"' in header for header in headers] == [bool(i % 2) for i in range(100)]
    assert all([m["type"] for m in messages] == ["replace", "replace"] for messages in received)
    # One render of each, the header once per role; a handful of queries for all 100 pages.
    assert renders.count("runs/partials/run_header.html") == 2
    assert renders.count("runs/partials/run_summary.html") == 1
    assert len(queries) <= 8, queries


def test_a_state_change_brings_a_page_the_rows_it_lacks_from_the_database(running_run, member):
    async def scenario():
        page = await open_page(running_run, member)
        # Turn 1's push was lost; the run's next state change shows the page it lacks it.
        await sync_to_async(f.TurnFactory)(run=running_run, seq=1, speaker="caller", text="lost push", started_ms=0)
        await sync_to_async(live.publish_run_changed)(str(running_run.pk))
        received = await until_summary(page)
        await page.disconnect()
        return received

    received = async_to_sync(scenario)()
    assert [(m["type"], m.get("seq")) for m in received] == [("turn", 1), ("replace", None), ("replace", None)]
    assert "lost push" in received[0]["html"]


def test_pushes_stay_bounded_and_a_row_too_large_to_push_is_read_from_the_database(running_run, member):
    # The largest turn, in the characters that escape the longest, still goes with its frame.
    for worst in ('"', "\U0001F600"):
        turn = {"seq": 1, "speaker": "target", "text": capped_text(worst * (MAX_TURN_CHARS + 1)), "started_ms": 0,
                "latency_ms": 7, "is_error": False}
        assert "frame" in live.turn_message(running_run.pk, turn)
    # A tool's result is not capped like a turn: past the bound its push is a bare doorbell.
    tool = {"seq": 1, "name": "lookup", "arguments": {}, "result": {"rows": "x" * live.MAX_FRAME_CHARS},
            "at_ms": 10, "status": "ok"}
    message = live.tool_message(running_run.pk, tool)
    assert "frame" not in message and len(json.dumps(message)) < 200

    async def scenario():
        page = await open_page(running_run, member)
        await sync_to_async(ToolInvocation.objects.create)(run=running_run, **tool)
        await get_channel_layer().group_send(f"run-{running_run.pk}", message)
        read = await page.receive_json_from(timeout=5)
        await page.disconnect()
        return read

    read = async_to_sync(scenario)()
    assert read["type"] == "tool" and read["seq"] == 1 and "xxxxxxxx" in read["html"]


def test_a_slow_publish_does_not_hold_up_the_conversation_and_pushes_keep_their_order(running_run, monkeypatch):
    async def scenario():
        layer, channel = await group_listener(running_run)
        redis_slow = asyncio.Event()
        publish = live.send_batch

        async def held_up(batch, **kwargs):
            await redis_slow.wait()
            await publish(batch, **kwargs)

        monkeypatch.setattr(live, "send_batch", held_up)
        recorder = DbRecorder(running_run.pk)
        # Each row is saved and the conversation goes on while its push waits.
        await asyncio.wait_for(recorder.turn(speaker="caller", text="Hi", started_ms=0, ended_ms=0), 1)
        await asyncio.wait_for(recorder.tool(name="press_digit", arguments={"digits": "1"}, result=None, at_ms=5), 1)
        await asyncio.wait_for(recorder.turn(speaker="target", text="Hello", started_ms=9, ended_ms=9,
                                             latency_ms=9), 1)
        saved = await sync_to_async(lambda: (Turn.objects.filter(run=running_run).count(),
                                             ToolInvocation.objects.filter(run=running_run).count()))()
        redis_slow.set()
        pushed = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(3)]
        return saved, [(m["type"], m["seq"]) for m in pushed]

    saved, pushed = async_to_sync(scenario)()
    assert saved == (2, 1)
    assert pushed == [("run.turn", 1), ("run.tool", 1), ("run.turn", 2)]


def test_the_run_page_shows_a_pushed_turn_and_its_latency(workspace, running_run, test_redis_url):
    user = f.MembershipFactory(workspace=workspace, role="viewer").user
    f.TurnFactory(run=running_run, seq=1, speaker="caller", text="Hello", started_ms=0)
    reply = {"seq": 2, "speaker": "target", "text": "Tuesday at 10", "started_ms": 90, "latency_ms": 321,
             "is_error": False}
    web = DaphneServer(redis_url=test_redis_url)
    try:
        with chromium() as browser:
            page = signed_in_page(browser, base_url=web.url, username=user.username,
                                  password="correct horse battery staple")
            page.goto(f"/runs/{running_run.pk}/")
            page.wait_for_selector("[data-live][data-state=live]", state="attached")
            # Saved, then pushed, as the recorder does; from a thread of its own (Playwright keeps an
            # event loop in this one).
            Turn.objects.create(run=running_run, **reply)
            with ThreadPoolExecutor(1) as publisher:
                publisher.submit(async_to_sync(get_channel_layer().group_send), f"run-{running_run.pk}",
                                 live.turn_message(running_run.pk, reply)).result()
            page.wait_for_selector("#turn-2")
            assert page.locator("#live-latency").inner_text() == "321 ms"
            page.context.close()
    finally:
        web.stop()


def test_a_runs_groups_are_read_once_for_all_its_state_changes(running_run, queries):
    known._known.clear()
    first = live.run_groups([running_run.pk])
    read = len(queries)
    again = live.run_groups([running_run.pk, str(running_run.pk)])

    assert read == 1
    assert len(queries) == read  # every later change of the run is published without a query
    assert first == again == {str(running_run.pk): [
        f"run-{running_run.pk}", f"workspace-{running_run.workspace_id}", f"scenario-{running_run.scenario_id}"]}


def test_a_row_nobody_watches_is_saved_and_never_rendered(running_run, renders):
    async def scenario():
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="caller", text="Nobody is watching", started_ms=0, ended_ms=0)
        sending = live.publisher().sending  # its push, under way: done before anyone joins
        if sending is not None:
            await sending
        layer, channel = await group_listener(running_run)
        await recorder.turn(speaker="target", text="Somebody is", started_ms=5, ended_ms=5, latency_ms=5)
        return await asyncio.wait_for(layer.receive(channel), 5)

    pushed = async_to_sync(scenario)()

    assert pushed["seq"] == 2 and "Somebody is" in json.loads(pushed["frame"])["html"]
    assert renders.count("runs/partials/turn.html") == 1
    assert list(Turn.objects.filter(run=running_run).order_by("seq").values_list("text", flat=True)) == [
        "Nobody is watching", "Somebody is"]


def test_a_reply_recorded_without_waiting_commits_with_the_callers_next_line_and_pushes_first(running_run):
    async def scenario():
        layer, channel = await group_listener(running_run)
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="target", text="Reply", started_ms=0, ended_ms=0, latency_ms=3, wait=False)
        await recorder.turn(speaker="caller", text="Next line", started_ms=5, ended_ms=5)
        saved = await sync_to_async(lambda: list(
            Turn.objects.filter(run=running_run).order_by("seq").values_list("speaker", flat=True)))()
        pushed = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
        return saved, [m["seq"] for m in pushed]

    saved, pushed = async_to_sync(scenario)()

    assert saved == ["target", "caller"]  # both committed by the time the caller's line could be sent
    assert pushed == [1, 2]


def test_a_reply_that_could_not_be_saved_fails_the_conversation_at_its_next_line(running_run):
    Turn.objects.create(run=running_run, seq=1, speaker="target", text="already there", started_ms=0, ended_ms=0)

    async def scenario():
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="target", text="Reply", started_ms=0, ended_ms=0, wait=False)  # seq 1 again
        await recorder.turn(speaker="caller", text="Next line", started_ms=5, ended_ms=5)

    with pytest.raises(IntegrityError):
        async_to_sync(scenario)()


def test_the_transcript_a_recorder_hands_to_finalizing_is_what_the_database_holds(running_run):
    from runs import services

    async def scenario():
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="caller", text="Hello", started_ms=0, ended_ms=0)
        await recorder.turn(speaker="target", text="x" * (MAX_TURN_CHARS + 5), started_ms=4, ended_ms=9,
                            latency_ms=4, wait=False)
        await recorder.tool(name="press_digit", arguments={"digits": "1"}, result=None, at_ms=10)
        await sync_to_async(services.run_cancel)(run_id=running_run.pk)
        await recorder.turn(speaker="caller", text="After the cancel", started_ms=12, ended_ms=12)  # never lands
        return recorder.transcript()

    turns, tools = async_to_sync(scenario)()

    assert turns == list(Turn.objects.filter(run=running_run).order_by("seq").values(
        "seq", "speaker", "text", "latency_ms", "started_ms", "is_error"))
    assert [t["text"] for t in turns] == ["Hello", capped_text("x" * (MAX_TURN_CHARS + 5))]
    assert tools == list(ToolInvocation.objects.filter(run=running_run).values("seq", "name", "arguments"))
    assert tools == [{"seq": 1, "name": "press_digit", "arguments": {"digits": "1"}}]


@pytest.mark.parametrize("memory_chars", [200_000, 10])  # kept by the recorder, or read back
def test_finalizing_evaluates_every_row_the_database_holds_and_no_row_lands_after_it(running_run, monkeypatch,
                                                                                      memory_chars):
    from runs import execution, recorder as recorder_module, services
    from runs.engine import Outcome

    monkeypatch.setattr(recorder_module, "TRANSCRIPT_MEMORY_CHARS", memory_chars)
    snapshot = services.snapshot_of(running_run.path)
    snapshot["scenario"]["criteria"], snapshot["path"]["criteria"] = [], [
        {"name": "Interrupted", "kind": "tool_called", "tool": "interrupted"}]
    prepared = execution.PreparedRun(run_id=str(running_run.pk), snapshot=snapshot, persona="", llm={})

    async def scenario():
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="caller", text="Hello", started_ms=0, ended_ms=0)
        await recorder.turn(speaker="target", text="Hi, how can I help?", started_ms=3, ended_ms=3, latency_ms=3,
                            wait=False)
        await recorder.settled()  # as converse does before it returns
        # A call's interruption, heard as the call hangs up: recorded in the background while the
        # run finalizes. It lands before finalizing begins, or never; either way it is evaluated iff saved.
        late = asyncio.ensure_future(recorder.tool(name="interrupted", arguments={"utterance_until_interrupt": ""},
                                                   result=None, at_ms=5))
        await execution.finalize(prepared, Outcome(ended_by="caller", recorder=recorder))
        await asyncio.gather(late, return_exceptions=True)
        after = await recorder_module.writer().save(Turn, running_run.pk, {
            "seq": 9, "speaker": "caller", "text": "After finalizing began", "started_ms": 9, "ended_ms": 9,
            "latency_ms": None, "is_error": False})
        return after

    assert async_to_sync(scenario)() is False
    running_run.refresh_from_db()
    assert (running_run.status, running_run.stage) == ("completed", "done")
    assert running_run.metrics["turns"] == Turn.objects.filter(run=running_run).count() == 2
    interrupted_saved = ToolInvocation.objects.filter(run=running_run, name="interrupted").exists()
    assert running_run.criteria_results.get(name="Interrupted").outcome == ("passed" if interrupted_saved else "failed")


def test_a_run_that_began_to_finalize_gains_no_row(running_run):
    from runs import services

    services.run_finalize(run_id=running_run.pk)

    async def scenario():
        recorder = DbRecorder(running_run.pk)
        await recorder.turn(speaker="target", text="Too late", started_ms=0, ended_ms=0)
        return recorder.transcript()

    assert async_to_sync(scenario)() == ([], [])
    assert not Turn.objects.filter(run=running_run).exists()
