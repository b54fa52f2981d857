"""Voice runs when calls go wrong: refused and unanswered numbers, callbacks that arrive twice, late,
forged or never, a start delivered twice, cancels, a web process dying mid-call, recordings.

Two telephonies stand in for Twilio's cloud. ``FakeTwilio`` (tests/fake_twilio.py) answers the real
twilio SDK's REST requests and never calls back: these tests play Twilio's callbacks themselves,
signed, to the URLs the product gave Twilio. Calls that must really connect (a live call to cancel
or to lose, a recording) go through the loopback telephony, which speaks ConversationRelay to the
product's daphne. A real Celery worker with beat sweeps every second and declares a run lost after
4 s without heartbeats (tests/support.py); daphne, which holds the calls, heartbeats every second.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import shutil
import threading
import uuid
import wave

import aiohttp
import pytest
from django.db import connection
from django.utils import timezone

from runs.execution import execute
from runs.models import Run, Turn
from runs.recorder import db
from runs.services import path_run, run_cancel
from scenarios.models import Path, Target
from telephony.models import Call
from tests import factories as f
from tests.fake_twilio import UNSIGNED, FakeTwilio, PlacedCall
from tests.support import wait_for
from tests.voice_support import VoiceStack

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ("completed", "failed", "cancelled")
RING_SECONDS = 5  # the product's minimum
ANSWER_GRACE_SECONDS = 3
DEMO_NUMBER = "+15550100"  # the loopback demo receptionist
# Our caller says hello, hears the receptionist, then holds the line for a minute: a live call.
LIVE_CALL_SCRIPT = [{"say": "Hi, is this Brightsmile Dental?"}, {"pause_ms": 60_000}, {"end_call": True}]
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def twilio():
    fake = FakeTwilio()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_redis_url, tmp_path_factory, twilio, media_root):
    env = {"TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
           "TWILIO_API_URL": twilio.url, "CALL_RING_SECONDS": str(RING_SECONDS),
           "CALL_ANSWER_GRACE_SECONDS": str(ANSWER_GRACE_SECONDS), "MEDIA_ROOT": str(media_root)}
    with django_db_blocker.unblock():
        voice = VoiceStack(redis_url=test_redis_url, tmp_path=tmp_path_factory.mktemp("voice"), worker_env=env,
                           web_env={**env, "RUN_HEARTBEAT_SECONDS": "1"}, public_base_url=True)
    yield voice
    voice.stop()


@pytest.fixture
def twilio_here(settings, stack, twilio):
    """This test process configured like the stack's, for starts it executes itself."""
    settings.TWILIO_ACCOUNT_SID = twilio.account_sid
    settings.TWILIO_AUTH_TOKEN = twilio.auth_token
    settings.TWILIO_API_URL = twilio.url
    settings.PUBLIC_BASE_URL = stack.web.url
    settings.CALL_RING_SECONDS = RING_SECONDS
    settings.CALL_ANSWER_GRACE_SECONDS = ANSWER_GRACE_SECONDS


# Helpers ---------------------------------------------------------------------------------------

def new_number(prefix: str = "+1628555") -> str:
    return f"{prefix}{next(_numbers):04d}"


def voice_path(workspace, *, target, script) -> Path:
    agent = f.AgentFactory(workspace=workspace)
    scenario = f.ScenarioFactory(workspace=workspace, channel="voice", direction="outbound", agent=agent,
                                 target=target, criteria=[])
    return f.PathFactory(scenario=scenario, script=script)


def phone_path(workspace, *, to: str) -> Path:
    """A path that calls ``to`` over Twilio, from an outbound Twilio number of the workspace."""
    f.PhoneNumberFactory(workspace=workspace, provider="twilio", direction="outbound", number=new_number("+1628666"))
    target = f.TargetFactory(workspace=workspace, channel="voice", kind=Target.Kind.PHONE, url="",
                             request_template={}, response_path="", phone_number=to)
    return voice_path(workspace, target=target, script=[{"say": "Hello, is this the clinic?"}, {"end_call": True}])


def demo_path(workspace, *, script) -> Path:
    """A path that calls the loopback telephony's demo receptionist."""
    target = f.TargetFactory(workspace=workspace, channel="voice", kind=Target.Kind.DEMO, url="",
                             request_template={}, response_path="", phone_number=DEMO_NUMBER)
    return voice_path(workspace, target=target, script=script)


def start(api, path) -> str:
    response = api.post(f"/api/v1/paths/{path.pk}/run/")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def ended(run_id, timeout: float = 30) -> Run:
    return wait_for(lambda: (r := Run.objects.get(pk=run_id)).status in TERMINAL and r, timeout,
                    message=f"run {run_id} to end")


def placed_call(twilio: FakeTwilio, run_id, to: str) -> PlacedCall:
    """The call the product placed at Twilio for ``run_id``, once the run's call row knows its sid."""
    row = wait_for(lambda: Call.objects.filter(run_id=run_id, sid__isnull=False).exclude(status="placing").first(),
                   message=f"the call of run {run_id} to be placed")
    (placed,) = twilio.placed(to)
    assert placed.sid == row.sid
    return placed


def live_call(run_id) -> Call:
    """The run's call once our caller has heard the target: the conversation is live."""
    wait_for(lambda: Turn.objects.filter(run_id=run_id, speaker="target").exists(),
             message=f"run {run_id}'s call to go live")
    return Call.objects.get(run_id=run_id)


def admitted_run(workspace, path) -> Run:
    """A run admitted (running / materializing) whose start this test delivers itself: with the
    queue paused neither admission nor the sweep hands it to the stack's worker."""
    workspace.queue_paused = True
    workspace.save(update_fields=["queue_paused"])
    run = path_run(path=path)
    now = timezone.now()
    assert Run.objects.filter(pk=run.pk, status=Run.Status.PENDING).update(
        status=Run.Status.RUNNING, stage=Run.Stage.MATERIALIZING, admitted_at=now, heartbeat_at=now) == 1
    return Run.objects.get(pk=run.pk)


def execute_here(*starts: tuple[str, str]) -> None:
    """Deliver each (run id, executor name) start at once to this process's event loop, as a
    worker's conversation loop runs them."""

    async def deliver():
        try:
            await asyncio.gather(*(execute(str(run_id), worker=name, http=None) for run_id, name in starts))
        finally:
            await _close_database_threads()

    asyncio.run(deliver())


async def _close_database_threads(threads: int = 8) -> None:
    """The ORM's connections on the product's database threads (``runs.recorder.db``) would outlive
    the test, and PostgreSQL will not drop a test database still in use. A barrier parks each close
    on its own thread (the pool has 1 thread on SQLite, 8 on PostgreSQL), so every thread closes its own."""
    barrier = threading.Barrier(threads)

    def close() -> None:
        try:
            barrier.wait(timeout=0.2)
        except threading.BrokenBarrierError:
            pass  # fewer threads than calls: the pool runs the rest on the threads it has
        connection.close()

    await asyncio.gather(*(db(close) for _ in range(threads)))


async def relay_handshake(url: str, signature: str | None, *, setup: dict | None = None) -> tuple:
    """Open the ConversationRelay websocket as Twilio does. A refusal is ("refused", HTTP status)
    or ("closed", close code). An accepted socket sends ``setup``, answers each of our caller's
    utterances, and returns ("accepted", the frames the product sent until it ended the session),
    or ("silent", frames so far) if the product stops talking."""
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers) as ws:
                if setup is None:
                    try:
                        await ws.receive(timeout=2)  # a refusal after the handshake closes at once
                    except asyncio.TimeoutError:
                        return ("accepted", ())
                    return ("closed", ws.close_code)
                await ws.send_json(setup)
                frames = []
                while True:
                    try:
                        message = await ws.receive(timeout=15)
                    except asyncio.TimeoutError:
                        return ("silent", frames)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        return ("accepted", frames)
                    frame = json.loads(message.data)
                    frames.append(frame)
                    if frame["type"] == "text" and frame.get("last"):
                        # The target answers our caller, as Twilio's speech recognition reports it.
                        await ws.send_json({"type": "prompt", "voicePrompt": "Yes, this is the clinic.", "last": True})
                    elif frame["type"] == "end":
                        return ("accepted", frames)
        except aiohttp.WSServerHandshakeError as refused:
            return ("refused", refused.status)


# Twilio's answers and callbacks ------------------------------------------------------------------

def test_a_number_twilio_refuses_fails_the_run_as_unreachable_in_twilio_s_words(stack, twilio, api, workspace):
    to = new_number()
    twilio.refuse(to, code=21211, message=f"The 'To' number {to} is not a valid phone number.")
    run = ended(start(api, phone_path(workspace, to=to)))
    assert (run.status, run.failure_reason) == ("failed", "target_unreachable")
    assert f"The 'To' number {to} is not a valid phone number" in run.failure_detail
    assert "Check the target's phone number" in run.failure_detail
    call = Call.objects.get(run=run)
    assert (call.status, call.error_code) == ("failed", "21211")
    assert len(twilio.requests_to(to)) == 1


@pytest.mark.parametrize("final, sip, words", [
    ("busy", "486", "The target's line was busy (SIP 486)"),
    ("no-answer", "487", "Nobody answered the call (SIP 487)"),
])
def test_a_busy_or_unanswered_line_reported_by_callback_fails_the_run_as_unreachable(
        stack, twilio, api, workspace, final, sip, words):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    progress = [("initiated", 0, {}), ("ringing", 1, {}), (final, 2, {"SipResponseCode": sip, "CallDuration": "0"})]
    for status, sequence, extra in progress:
        answer = twilio.call_back(call.status_callback, twilio.status_fields(call, status, sequence, **extra))
        assert answer.status_code == 204, answer.text
    # The callback's answer follows the committed change: no waiting.
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.failure_reason) == ("failed", "target_unreachable")
    assert words in run.failure_detail and "Check the target's phone number" in run.failure_detail
    assert Call.objects.get(run_id=run_id).status == final


def test_duplicated_and_out_of_order_callbacks_are_recorded_once_in_sequence(stack, twilio, api, workspace):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    for status, sequence in [("in-progress", 2), ("ringing", 1), ("ringing", 1), ("initiated", 0)]:
        answer = twilio.call_back(call.status_callback, twilio.status_fields(call, status, sequence))
        assert answer.status_code == 204, answer.text
    row = Call.objects.get(run_id=run_id)
    # Twilio's "initiated" is the call still queued at its end, as the call resource shows it.
    assert [(entry["status"], entry["sequence"]) for entry in row.history] == [
        ("queued", 0), ("ringing", 1), ("in-progress", 2)]
    assert row.status == "in-progress" and row.answered_at is not None
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stage, run.failure_reason) == ("running", "live", "")
    run_cancel(run_id=run_id)


def test_forged_webhooks_and_relay_handshakes_are_refused_and_change_nothing(stack, twilio, api, workspace):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    busy = twilio.status_fields(call, "busy", 3, SipResponseCode="486")
    session_failed = {**twilio.status_fields(call, "in-progress", 2), "SessionId": "VX" + uuid.uuid4().hex,
                      "SessionStatus": "failed", "ErrorCode": "64106"}
    recording = {"AccountSid": twilio.account_sid, "CallSid": call.sid, "RecordingSid": "RE" + uuid.uuid4().hex,
                 "RecordingUrl": f"{twilio.url}/2010-04-01/Accounts/{twilio.account_sid}/Recordings/RE1",
                 "RecordingStatus": "completed", "RecordingDuration": "3", "RecordingChannels": "2"}
    incoming = {"AccountSid": twilio.account_sid, "CallSid": "CA" + uuid.uuid4().hex, "From": to,
                "To": new_number("+1628666"), "CallStatus": "ringing", "Direction": "inbound"}
    voice_url = f"{stack.web.url}/telephony/twilio/voice/"
    someone_else = "not-the-account-auth-token"
    forgeries = [
        (call.status_callback, busy, UNSIGNED),
        (call.status_callback, busy, twilio.signature_for(call.status_callback, busy, token=someone_else)),
        (call.status_callback, busy, twilio.signature_for(call.status_callback, {**busy, "CallStatus": "ringing"})),
        (call.connect_action, session_failed, UNSIGNED),
        (call.connect_action, session_failed, twilio.signature_for(call.connect_action, session_failed,
                                                                   token=someone_else)),
        (call.recording_status_callback, recording, twilio.signature_for(call.recording_status_callback, recording,
                                                                          token=someone_else)),
        (voice_url, incoming, UNSIGNED),
        (voice_url, incoming, twilio.signature_for(voice_url, incoming, token=someone_else)),
    ]
    for url, params, signature in forgeries:
        answer = twilio.call_back(url, params, signature=signature)
        assert answer.status_code == 403, (url, signature, answer.status_code)
    row = Call.objects.get(run_id=run_id)
    assert (row.status, row.history, row.error_code, row.recording_sid) == ("queued", [], "", "")
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stage, run.attached_at) == ("running", "live", None)

    # The relay websocket: a forged or unsigned handshake is refused before anything is read; a
    # signed one is accepted, the waiting run attaches to it and our caller speaks first.
    for signature in (None, twilio.signature_for(call.relay_url, {}, token=someone_else)):
        assert asyncio.run(relay_handshake(call.relay_url, signature)) in [("refused", 403), ("closed", 4403)]
    assert Run.objects.get(pk=run_id).attached_at is None
    setup = {"type": "setup", "sessionId": "VX" + uuid.uuid4().hex, "callSid": call.sid, "from": call.form["From"],
             "to": to, "direction": "outbound-api", "customParameters": {"run": run_id}}
    outcome, frames = asyncio.run(relay_handshake(call.relay_url, twilio.signature_for(call.relay_url, {}),
                                                  setup=setup))
    assert outcome == "accepted", (outcome, frames, Run.objects.filter(pk=run_id).values().first(),
                                   "".join(stack.web.log[-30:]))
    assert frames[0] == {"type": "text", "token": "Hello, is this the clinic?", "last": True}
    assert frames[-1]["type"] == "end"
    assert ended(run_id).status == "completed"


# A start delivered twice -----------------------------------------------------------------------

def test_a_redelivered_start_never_dials_twice(twilio_here, twilio, workspace):
    to = new_number()
    run = admitted_run(workspace, phone_path(workspace, to=to))
    # The same start reaches two executors at once (a redelivered message), then a third later.
    execute_here((run.pk, "executor-a"), (run.pk, "executor-b"))
    execute_here((run.pk, "executor-c"))
    assert len(twilio.requests_to(to)) == 1
    assert Call.objects.get(run=run).sid == twilio.placed(to)[0].sid
    assert Run.objects.filter(pk=run.pk, status="running", stage="live").exists()

    # Even an executor that got hold of a run whose call was already written never dials it again.
    other_to = new_number()
    other = admitted_run(workspace, phone_path(workspace, to=other_to))
    f.CallFactory(run=other, provider="twilio", sid=None, status="placing", from_number=new_number("+1628666"),
                  to_number=other_to)
    execute_here((other.pk, "executor-d"))
    assert twilio.requests_to(other_to) == []
    run_cancel(run_id=run.pk)
    run_cancel(run_id=other.pk)


# Cancel ------------------------------------------------------------------------------------------

def test_cancelling_a_ringing_call_cancels_it_at_twilio(stack, twilio, api, workspace):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    for status, sequence in [("initiated", 0), ("ringing", 1)]:
        assert twilio.call_back(call.status_callback, twilio.status_fields(call, status, sequence)).status_code == 204
    answer = api.post(f"/api/v1/runs/{run_id}/cancel/")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    wait_for(lambda: call.statuses_asked() == ["canceled"], timeout=2.5, message="Twilio to be asked to cancel")


def test_cancelling_a_live_call_hangs_it_up(stack, api, workspace):
    run_id = start(api, demo_path(workspace, script=LIVE_CALL_SCRIPT))
    call = live_call(run_id)
    assert stack.call(call.sid)["status"] == "in-progress"
    answer = api.post(f"/api/v1/runs/{run_id}/cancel/")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    witness = wait_for(lambda: (w := stack.call(call.sid))["status"] == "completed" and w, timeout=2.5,
                       message="the loopback call to end")
    events = {event["event"] for event in witness["timeline"]}
    assert {"hangup:requested", "in:end"} & events, events  # hung up through the API, or our caller's end frame
    assert Run.objects.get(pk=run_id).status == "cancelled"


# Processes dying, answers never coming -----------------------------------------------------------

def test_a_call_held_by_a_daphne_that_dies_fails_as_error_after_the_heartbeat_timeout(stack, api, workspace):
    run_id = start(api, demo_path(workspace, script=LIVE_CALL_SCRIPT))
    call = live_call(run_id)
    assert Run.objects.get(pk=run_id).worker.startswith("relay:")  # daphne holds the conversation
    stack.web.kill()
    try:
        run = ended(run_id, timeout=20)
        assert (run.status, run.failure_reason) == ("failed", "error")
        assert "stopped responding" in run.failure_detail and "Safe to retry" in run.failure_detail
        assert not Run.objects.filter(workspace=workspace, status="running").exists()
        wait_for(lambda: stack.call(call.sid)["status"] == "completed", timeout=10, message="the loopback call to end")
    finally:
        stack.restart_web()


def test_an_answered_call_whose_conversation_never_connects_fails_naming_the_public_url(stack, twilio, api, workspace):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    # Answered, but the relay websocket never reaches us (Twilio cannot reach PUBLIC_BASE_URL).
    answer = twilio.call_back(call.status_callback, twilio.status_fields(call, "in-progress", 2))
    assert answer.status_code == 204, answer.text
    run = ended(run_id, timeout=RING_SECONDS + ANSWER_GRACE_SECONDS + 15)
    assert (run.status, run.failure_reason) == ("failed", "error")
    assert "answered but its conversation never reached this deployment" in run.failure_detail
    assert "PUBLIC_BASE_URL" in run.failure_detail


def test_a_call_twilio_never_reports_on_fails_as_unreachable_once_ring_and_grace_pass(stack, twilio, api, workspace):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    run = ended(run_id, timeout=RING_SECONDS + ANSWER_GRACE_SECONDS + 15)
    assert (run.status, run.failure_reason) == ("failed", "target_unreachable")
    assert "never answered" in run.failure_detail
    assert (run.ended_at - run.started_at).total_seconds() >= RING_SECONDS + ANSWER_GRACE_SECONDS - 1
    wait_for(lambda: call.statuses_asked() == ["canceled"], timeout=5, message="the unanswered call to be cancelled")


@pytest.mark.parametrize("code, reason, words", [
    ("64106", "caller_voice_unavailable", "Pick a different voice on the agent"),
    ("64102", "error", "Check PUBLIC_BASE_URL"),
])
def test_a_relay_session_failure_reported_by_the_connect_action_fails_the_run_for_its_reason(
        stack, twilio, api, workspace, code, reason, words):
    to = new_number()
    run_id = start(api, phone_path(workspace, to=to))
    call = placed_call(twilio, run_id, to)
    fields = {**twilio.status_fields(call, "in-progress", 2), "SessionId": "VX" + uuid.uuid4().hex,
              "SessionStatus": "failed", "SessionDuration": "0", "ErrorCode": code}
    answer = twilio.call_back(call.connect_action, fields)
    assert answer.status_code == 200 and "<Hangup" in answer.text
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.failure_reason) == ("failed", reason)
    assert words in run.failure_detail and code in run.failure_detail
    assert Call.objects.get(run_id=run_id).error_code == code


def test_a_phone_run_without_twilio_settings_fails_naming_what_to_set(stack, twilio, workspace, settings):
    settings.TWILIO_ACCOUNT_SID = settings.TWILIO_AUTH_TOKEN = ""
    settings.PUBLIC_BASE_URL = None
    to = new_number()
    run = admitted_run(workspace, phone_path(workspace, to=to))
    execute_here((run.pk, "executor-without-twilio"))
    run.refresh_from_db()
    assert (run.status, run.failure_reason) == ("failed", "error")
    assert "Twilio is not configured" in run.failure_detail
    assert "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL" in run.failure_detail
    assert twilio.requests_to(to) == []


# Recording ---------------------------------------------------------------------------------------

def test_a_completed_call_s_two_channel_recording_is_stored(stack, api, workspace, settings, media_root):
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing: CI must voice loopback recordings (apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed, so the loopback telephony records nothing (apt-get install espeak-ng)")
    settings.MEDIA_ROOT = str(media_root)  # where the stack's worker stores what it downloads
    run_id = start(api, demo_path(workspace, script=[
        {"say": "Hi, is this Brightsmile Dental?"}, {"expect": "(?i)press 1"}, {"end_call": True}]))
    assert ended(run_id).status == "completed"
    call = wait_for(lambda: (c := Call.objects.get(run_id=run_id)).recording and c, timeout=30,
                    message="the recording to be stored")
    witness = stack.call(call.sid)
    # The product accepted the emulator's signed callback, and fetched the audio with the account's
    # credentials (the emulator answers nothing without them).
    assert call.recording_sid == witness["recording_sid"]
    assert [e["http_status"] for e in witness["timeline"] if e["event"] == "callback:recording"] == [204]
    with call.recording.open("rb") as stored:
        audio = stored.read()
    assert audio[:4] == b"RIFF"
    with wave.open(io.BytesIO(audio)) as recording:
        assert recording.getnchannels() == 2 and recording.getnframes() > 0
