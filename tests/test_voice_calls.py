"""Voice runs end to end: the real twilio SDK placing calls on the loopback telephony, which opens
the ConversationRelay websocket to the product's real daphne; a real Celery worker with beat.

Most tests put a ``ScriptedFarEnd`` behind a number of their own (``far_end_target``): a voice
target of a loopback kind, so the product calls it through the loopback telephony, and the test
keeps the far end to read what it heard. The emulator's witness of each call (``stack.call(sid)``)
is what the far end's side of the line saw.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time

import pytest

from runs.models import Run
from scenarios.models import Target, loopback_number
from telephony.loopback.calls import Destination
from telephony.loopback.far_ends import Hangup, Press, Say, ScriptedFarEnd, Wait
from telephony.models import Call, PhoneNumber
from tests import factories as f
from tests.fakes import FakeOpenAI
from tests.support import FakeTarget, wait_for
from tests.voice_support import VoiceStack

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ("completed", "failed", "cancelled")
DEMO_NUMBER = "+15550100"
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_redis_url, tmp_path_factory):
    from django.conf import settings

    # Recordings the worker downloads land here, where this process reads them.
    media = tmp_path_factory.mktemp("media")
    previous, settings.MEDIA_ROOT = settings.MEDIA_ROOT, str(media)
    with django_db_blocker.unblock():
        voice = VoiceStack(redis_url=test_redis_url, tmp_path=tmp_path_factory.mktemp("voice"),
                           worker_env={"MEDIA_ROOT": str(media)}, web_env={"MEDIA_ROOT": str(media)})
    yield voice
    voice.stop()
    settings.MEDIA_ROOT = previous


def ended(run_id, timeout=60) -> Run:
    return wait_for(lambda: (r := Run.objects.get(pk=run_id)).status in TERMINAL and r, timeout,
                    message=f"run {run_id} to end")


def voice_target(workspace, number: str, **fields) -> Target:
    """A voice target of a loopback kind (so the product calls it through the loopback telephony)."""
    return f.TargetFactory(workspace=workspace, channel="voice", kind=Target.Kind.DEMO, url="", request_template={},
                           response_path="", phone_number=number, **fields)


def far_end_target(stack, workspace, far_end) -> Target:
    """A voice target on a number of its own, answered by ``far_end`` (this very object, so the test
    can read what it heard)."""
    number = f"+1555030{next(_numbers):04d}"
    stack.answer(number, lambda: far_end)
    return voice_target(workspace, number)


def voice_scenario(workspace, *, script, direction="outbound", target=None, criteria=(), narrative=None,
                   inbound_window_seconds=300, **agent_fields):
    target = target or voice_target(workspace, DEMO_NUMBER)
    agent = f.AgentFactory(workspace=workspace, **agent_fields)
    scenario = f.ScenarioFactory(workspace=workspace, channel="voice", direction=direction, agent=agent, target=target,
                                 criteria=[], inbound_window_seconds=inbound_window_seconds)
    extra = {"narrative": narrative} if narrative is not None else {}
    return f.PathFactory(scenario=scenario, script=script, criteria=list(criteria), **extra)


def run_path(api, path) -> str:
    response = api.post(f"/api/v1/paths/{path.pk}/run/")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def run_detail(api, run_id) -> dict:
    response = api.get(f"/api/v1/runs/{run_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def events(witness: dict) -> list[str]:
    return [entry["event"] for entry in witness["timeline"]]


def conversation(witness: dict) -> list[tuple[str, str]]:
    """What crossed the websocket in words and keys, in order: our utterances (``text`` tokens up to
    the last one), our key presses and the target's final prompts."""
    said, tokens = [], []
    for entry in witness["timeline"]:
        if entry["event"] == "in:text":
            tokens.append(entry["token"])
            if entry["last"]:
                said.append(("we said", "".join(tokens).strip()))
                tokens = []
        elif entry["event"] == "in:sendDigits":
            said.append(("we pressed", entry["digits"]))
        elif entry["event"] == "out:prompt" and entry["last"]:
            said.append(("target said", entry["text"]))
    return said


# Outbound ----------------------------------------------------------------------------------------

def test_an_outbound_call_to_the_demo_receptionist_completes_with_the_caller_speaking_first(stack, api, workspace):
    path = voice_scenario(workspace, script=[
        {"say": "Hi, is this Brightsmile Dental?"}, {"expect": "(?i)press 1"}, {"press": "1"},
        {"expect": "(?i)what day"}, {"say": "Monday."}, {"expect": "(?i)10 ?am"}, {"end_call": True},
    ])
    run = ended(run_path(api, path))
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail
    # The provider's word that the call is over may land just after the run completes.
    call = wait_for(lambda: Call.objects.filter(run=run, status="completed").first(), 10, message="the call's end")
    assert call.hung_up_by == "caller"
    witness = stack.call(call.sid)
    frames = [e["event"] for e in witness["timeline"] if e["event"].startswith(("in:", "out:prompt"))]
    assert frames[0] == "in:text", frames  # our caller spoke before the target said anything
    turns = list(run.turns.order_by("seq").values_list("speaker", "text", "latency_ms"))
    assert turns[0][:2] == ("caller", "Hi, is this Brightsmile Dental?")
    assert all(latency is not None for speaker, _, latency in turns if speaker == "target")


def test_key_presses_cross_the_call_both_ways(stack, api, workspace):
    far_end = ScriptedFarEnd(replies=[[Say("For billing, press 1.")]], on_digits=[[Press("5")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[
        {"say": "Hi, I have a billing question."}, {"expect": "(?i)press 1"}, {"press": "1"},
        {"expect": r"\[pressed 5\]"}, {"end_call": True},
    ])
    run_id = run_path(api, path)
    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

    assert far_end.heard_digits == ["1"]  # our press reached the far end as keys, not words
    detail = run_detail(api, run_id)
    presses = [tool["arguments"] for tool in detail["tool_invocations"] if tool["name"] == "press_digit"]
    assert presses == [{"digits": "1"}]
    target_turns = [turn["text"] for turn in detail["turns"] if turn["speaker"] == "target"]
    assert target_turns == ["For billing, press 1.", "[pressed 5]"]
    witness = stack.call(Call.objects.get(run_id=run_id).sid)
    assert conversation(witness) == [("we said", "Hi, I have a billing question."),
                                     ("target said", "For billing, press 1."), ("we pressed", "1")]
    assert [e["digit"] for e in witness["timeline"] if e["event"] == "out:dtmf"] == ["5"]


def test_end_call_ends_the_session_from_our_side(stack, api, workspace):
    far_end = ScriptedFarEnd(replies=[[Say("Hello, how can I help?")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[
        {"say": "Hi there."}, {"expect": "(?i)how can i help"}, {"end_call": True},
    ], criteria=[{"name": "we hang up", "kind": "ended_by", "speaker": "caller"}])
    run_id = run_path(api, path)
    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

    criteria = {c["name"]: c["outcome"] for c in run_detail(api, run_id)["criteria"]}
    assert criteria["we hang up"] == "passed", criteria
    call = wait_for(lambda: Call.objects.filter(run_id=run_id, status="completed").first(), 10, message="the call's end")
    assert call.hung_up_by == "caller"
    witness = wait_for(lambda: (w := stack.call(call.sid))["status"] == "completed" and w, 10,
                       message="the emulator's call to end")
    assert witness["session"]["status"] == "completed", witness["session"]  # ended by our `end` frame
    assert "in:end" in events(witness) and "target_hangup" not in events(witness)


def test_a_target_that_hangs_up_ends_the_run_as_ended_by_the_target(stack, api, workspace):
    far_end = ScriptedFarEnd(replies=[[Say("Goodbye"), Hangup()]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[
        {"say": "Hi, can I book a table?"}, {"expect": "(?i)goodbye"}, {"say": "Hello? Are you still there?"},
        {"end_call": True},
    ], criteria=[{"name": "they hang up", "kind": "ended_by", "speaker": "target"}])
    run_id = run_path(api, path)
    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

    detail = run_detail(api, run_id)
    assert {c["name"]: c["outcome"] for c in detail["criteria"]}["they hang up"] == "passed", detail["criteria"]
    assert "end_call" not in [tool["name"] for tool in detail["tool_invocations"]]
    assert not any(turn["is_error"] for turn in detail["turns"]), detail["turns"]  # the hang-up was heard at once
    call = Call.objects.get(run_id=run_id)
    assert call.hung_up_by == "target"
    witness = stack.call(call.sid)
    assert witness["session"]["status"] == "ended" and "target_hangup" in events(witness), witness["session"]
    assert "in:end" not in events(witness)


def test_a_target_that_talks_over_our_caller_is_recorded_as_an_interruption(stack, api, workspace):
    sentence = "I would like to move my appointment from Monday to Friday afternoon"
    assert len(sentence.split()) == 12
    far_end = ScriptedFarEnd(barge_in_after_words=3, replies=[[Say("Sorry, let me stop you there.")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[
        {"say": sentence}, {"expect": "(?i)stop you there"}, {"end_call": True},
    ])
    run_id = run_path(api, path)
    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

    assert far_end.heard == ["I would like"]  # it started its reply three words in
    detail = run_detail(api, run_id)
    interruptions = [tool["arguments"] for tool in detail["tool_invocations"] if tool["name"] == "interrupted"]
    assert len(interruptions) == 1, detail["tool_invocations"]
    heard_words = interruptions[0]["utterance_until_interrupt"].split()
    assert 3 <= len(heard_words) < 12 and sentence.split()[:len(heard_words)] == heard_words, interruptions
    target_turns = [turn for turn in detail["turns"] if turn["speaker"] == "target"]
    assert [turn["text"] for turn in target_turns] == ["Sorry, let me stop you there."]
    assert target_turns[0]["latency_ms"] is not None


def test_target_latency_is_measured_per_turn_from_the_end_of_our_speech(stack, api, workspace):
    # Waits are scaled by the emulator's speech scale (0.02): about 500 ms, then about 20 ms. The
    # slow reply comes first, so a latency that grew with the call could not pass.
    far_end = ScriptedFarEnd(replies=[[Wait(25.0), Say("Let me check. Yes, we are.")], [Wait(1.0), Say("Closed.")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[
        {"say": "Are you open today?"}, {"expect": "(?i)we are"}, {"say": "And on Sunday?"}, {"expect": "(?i)closed"},
        {"end_call": True},
    ])
    run_id = run_path(api, path)
    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

    target_turns = [turn for turn in run_detail(api, run_id)["turns"] if turn["speaker"] == "target"]
    assert [turn["text"] for turn in target_turns] == ["Let me check. Yes, we are.", "Closed."]
    slow, quick = (turn["latency_ms"] for turn in target_turns)
    assert slow is not None and quick is not None
    assert slow >= 450, (slow, quick)  # the far end thought for 500 ms before its first word
    assert slow - quick >= 300, (slow, quick)


# Inbound -----------------------------------------------------------------------------------------

def test_an_inbound_run_arms_a_number_and_takes_the_targets_call(stack, api, workspace):
    number = f.PhoneNumberFactory(workspace=workspace, direction="inbound", provider="loopback")
    path = voice_scenario(workspace, direction="inbound", target=voice_target(workspace, DEMO_NUMBER,
                                                                              dial_in_delay_seconds=1), script=[
        {"say": "Hi, is this Brightsmile Dental?"}, {"expect": "(?i)press 1"}, {"press": "1"},
        {"expect": "(?i)what day"}, {"end_call": True},
    ])
    run_id = run_path(api, path)

    # The run goes live waiting for the target's call, its call armed on the number it reserved.
    call = wait_for(lambda: Run.objects.filter(pk=run_id, status="running", stage="live").exists()
                    and Call.objects.filter(run_id=run_id, status="armed").first(), 15, message="the run armed")
    assert (call.direction, call.to_number) == ("inbound", number.number)
    number.refresh_from_db()
    assert str(number.reserved_by_id) == run_id

    run = ended(run_id)
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail
    call = wait_for(lambda: Call.objects.filter(pk=call.pk, status="completed").first(), 10,
                    message="the call's end recorded")
    assert (call.from_number, call.hung_up_by) == (DEMO_NUMBER, "caller")
    witness = stack.call(call.sid)
    assert (witness["direction"], witness["to"]) == ("inbound", number.number)
    # We picked up, so we speak first.
    assert conversation(witness)[0] == ("we said", "Hi, is this Brightsmile Dental?"), conversation(witness)
    # Recorded from the moment we answered (<Start><Recording>), not from a request racing the call's end.
    events = [entry["event"] for entry in witness["timeline"]]
    assert events.index("recording:started") == events.index("twiml:relay") + 1, events
    wait_for(lambda: PhoneNumber.objects.filter(pk=number.pk, reserved_by__isnull=True).exists(), 10,
             message="the number to be released")
    if shutil.which("espeak-ng") or os.environ.get("CI"):
        # An incoming call is recorded too (started once it connected), and its audio stored.
        call = wait_for(lambda: Call.objects.filter(pk=call.pk).exclude(recording="").first(), 60,
                        message="the inbound call's recording to be stored")
        with call.recording.open("rb") as audio:
            assert audio.read(4) == b"RIFF"


def test_an_inbound_run_whose_target_never_calls_times_out_and_frees_its_number(stack, api, workspace):
    path = voice_scenario(workspace, direction="inbound", inbound_window_seconds=10,
                          target=voice_target(workspace, DEMO_NUMBER, dial_in_delay_seconds=3600),
                          script=[{"say": "Hello?"}, {"end_call": True}])
    run_id = run_path(api, path)
    call = wait_for(lambda: Call.objects.filter(run_id=run_id, status="armed").first(), 15, message="the call armed")
    number = PhoneNumber.objects.get(number=call.to_number, provider="loopback")
    assert str(number.reserved_by_id) == run_id  # none existed, so loopback made one for the run

    run = ended(run_id, timeout=30)
    assert (run.status, run.failure_reason) == ("failed", "inbound_timeout"), run.failure_detail
    assert "10s window" in run.failure_detail
    assert 9.5 <= (run.ended_at - run.started_at).total_seconds() < 15
    wait_for(lambda: PhoneNumber.objects.filter(pk=number.pk, reserved_by__isnull=True).exists(), 10,
             message="the number to be released")

    # The target calling after all, too late: the number declines it, and the run stays as it ended.
    sid = stack.dial_in(to=number.number, from_=DEMO_NUMBER)
    witness = wait_for(lambda: (w := stack.call(sid))["status"] == "completed" and w, 10, message="the late call")
    assert "ws:open" not in events(witness), events(witness)
    assert [e["text"] for e in witness["timeline"] if e["event"] == "caller_said"] == [
        "This number is not expecting a call right now. Goodbye."]
    assert Call.objects.filter(run_id=run_id, sid__isnull=True).exists()
    run.refresh_from_db()
    assert (run.status, run.failure_reason) == ("failed", "inbound_timeout")


# Failures ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("outcome, sip, words", [
    ("busy", 486, "line was busy"),
    ("no-answer", 487, "Nobody answered"),
    ("failed", 503, "could not be connected"),
])
def test_an_unreachable_target_fails_the_run_in_twilios_words(stack, api, workspace, outcome, sip, words):
    chat = f.TargetFactory(workspace=workspace)
    rehearsal = f.TargetFactory(workspace=workspace, channel="voice", kind=Target.Kind.REHEARSAL, rehearse_with=chat,
                                url="", request_template={}, response_path="")
    rehearsal.phone_number = loopback_number(rehearsal)
    rehearsal.save(update_fields=["phone_number"])
    stack.destinations[rehearsal.phone_number] = Destination(outcome, sip_response_code=sip)
    path = voice_scenario(workspace, target=rehearsal, script=[{"say": "Hello?"}, {"end_call": True}])

    run = ended(run_path(api, path))
    assert (run.status, run.failure_reason) == ("failed", "target_unreachable"), run.failure_detail
    assert words in run.failure_detail and f"SIP {sip}" in run.failure_detail, run.failure_detail
    assert Call.objects.get(run=run).status == outcome
    assert not run.turns.exists()


def test_a_voice_the_provider_refuses_fails_as_caller_voice_unavailable(stack, api, workspace):
    far_end = ScriptedFarEnd(replies=[[Say("Hello.")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), voice_provider="Amazon",
                          voice="NotAVoice", script=[{"say": "Hi there."}, {"end_call": True}])
    run = ended(run_path(api, path))
    assert (run.status, run.failure_reason) == ("failed", "caller_voice_unavailable"), run.failure_detail
    assert "Pick a different voice" in run.failure_detail and "64106" in run.failure_detail, run.failure_detail
    assert far_end.heard == []  # nothing was ever spoken
    call = wait_for(lambda: Call.objects.filter(run=run, error_code="64106").first(), 10,
                    message="the session's error on the call")
    assert stack.call(call.sid)["session"]["status"] == "failed"


def test_a_call_past_the_agents_cap_fails_and_is_hung_up(stack, api, workspace):
    far_end = ScriptedFarEnd(replies=[[Say("Hello, how can I help?")]])
    path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), max_duration_seconds=10, script=[
        {"say": "Hi."}, {"expect": "(?i)help"}, {"pause_ms": 15000}, {"end_call": True},
    ])
    run = ended(run_path(api, path), timeout=40)
    assert (run.status, run.failure_reason) == ("failed", "duration_cap_no_progress"), run.failure_detail
    assert "10s cap" in run.failure_detail
    call = Call.objects.get(run=run)
    witness = wait_for(lambda: (w := stack.call(call.sid))["status"] == "completed" and w, 10,
                       message="the emulator's call to end")
    assert 9_500 <= witness["ended_ms"] - witness["answered_ms"] <= 13_000, witness  # hung up at the cap
    assert "end_call" not in list(run.tool_invocations.values_list("name", flat=True))
    call = wait_for(lambda: Call.objects.filter(pk=call.pk, ended_at__isnull=False).first(), 10,
                    message="the call's end recorded")
    assert call.hung_up_by == "platform"  # AssureAgent hung up at the cap, not our caller


# Rehearsal through the API, and the LLM caller on a call ---------------------------------------

def test_a_chat_bot_rehearsed_by_phone_through_the_api_alone(stack, api):
    bot = FakeTarget(lambda message, count: (200, {"reply": f"Reply {count}: you said {message}"}))
    try:
        def create(kind, body):
            response = api.post(f"/api/v1/{kind}/", body, content_type="application/json")
            assert response.status_code == 201, response.content
            return response.json()

        chat = create("targets", {"name": "Booking bot", "channel": "chat", "kind": "http_json", "url": bot.url,
                                  "request_template": {"text": "{{message}}", "session": "{{session_id}}"},
                                  "response_path": "$.reply"})
        voice = create("targets", {"name": "Booking bot by phone", "channel": "voice", "kind": "rehearsal",
                                   "rehearse_with": chat["id"]})
        assert voice["phone_number"].startswith("+155501"), voice
        agent = create("agents", {"name": "Rehearsal caller", "instructions": "A customer booking a table."})
        scenario = create("scenarios", {"name": "Book by phone", "channel": "voice", "agent": agent["id"],
                                        "target": voice["id"], "criteria": []})
        path = create("paths", {"scenario": scenario["id"], "name": "Table for two", "script": [
            {"say": "Hi, a table for two please."}, {"expect": "(?i)you said hi"}, {"say": "Friday at seven."},
            {"expect": "(?i)friday"}, {"end_call": True},
        ]})

        response = api.post(f"/api/v1/paths/{path['id']}/run/")
        assert response.status_code == 201, response.content
        run_id = response.json()["id"]
        run = wait_for(lambda: (r := run_detail(api, run_id))["status"] in TERMINAL and r, 60, message="the run")
        assert (run["status"], run["verdict"]) == ("completed", "passed"), run["failure_detail"]
        target_turns = [turn for turn in run["turns"] if turn["speaker"] == "target"]
        assert [turn["text"] for turn in target_turns] == [
            "Reply 1: you said Hi, a table for two please.", "Reply 2: you said Friday at seven."]
        assert all(turn["latency_ms"] is not None for turn in target_turns)
        assert [request["body"]["text"] for request in bot.requests] == ["Hi, a table for two please.",
                                                                          "Friday at seven."]
    finally:
        bot.close()


def test_the_llm_caller_speaks_first_presses_keys_and_hangs_up(stack, api, workspace):
    first_words = "Hi, I'd like to book a cleaning."
    moves = [first_words,
             {"content": None, "tool_calls": [{"name": "press_digit", "arguments": {"digits": "1"}}]},
             {"content": None, "tool_calls": [{"name": "end_call", "arguments": {"reason": "booked"}}]}]
    llm = FakeOpenAI(lambda messages: moves[min(sum(m["role"] == "assistant" for m in messages), len(moves) - 1)])
    try:
        far_end = ScriptedFarEnd(replies=[[Say("Welcome to Brightsmile. For appointments, press 1.")]],
                                 on_digits=[[Say("Appointments. Which day suits you?")]])
        path = voice_scenario(workspace, target=far_end_target(stack, workspace, far_end), script=[],
                              narrative="A patient who wants a cleaning next week.",
                              llm_base_url=llm.base_url, llm_model="fake-caller",
                              criteria=[{"name": "pressed 1", "kind": "tool_called", "tool": "press_digit",
                                         "arguments": {"digits": "1"}}])
        run_id = run_path(api, path)
        run = ended(run_id)
        assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail

        call = Call.objects.get(run_id=run_id)
        assert call.hung_up_by == "caller"
        assert conversation(stack.call(call.sid)) == [
            ("we said", first_words),  # before the target said anything
            ("target said", "Welcome to Brightsmile. For appointments, press 1."),
            ("we pressed", "1"),
            ("target said", "Appointments. Which day suits you?"),
        ]
        assert far_end.heard == [first_words] and far_end.heard_digits == ["1"]
        detail = run_detail(api, run_id)
        assert [tool["name"] for tool in detail["tool_invocations"]] == ["press_digit", "end_call"]
        assert [turn["text"] for turn in detail["turns"]] == [
            first_words, "Welcome to Brightsmile. For appointments, press 1.", "Appointments. Which day suits you?"]
        assert len(llm.requests) == 3 and llm.requests[0]["body"]["model"] == "fake-caller"
    finally:
        llm.close()
