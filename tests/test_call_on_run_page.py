"""A voice run's call where users see it: the run API's ``call``, the recording, and the Call panel
of the run page, which follows the call live."""

import io
import wave
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from assure.services import api_token_create
from runs.routing import websocket_urlpatterns
from telephony import services
from tests import factories as f

WAV_SECONDS = 1


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x01\x00\x02\x00" * 8000 * WAV_SECONDS)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def voice_run(workspace, *, run_status="completed", **call_fields):
    """A voice run of ``workspace`` with its call (``call_fields=None``: not placed yet)."""
    target = f.TargetFactory(workspace=workspace, channel="voice", kind="phone", phone_number="+14155550123", url="")
    scenario = f.ScenarioFactory(workspace=workspace, channel="voice", target=target)
    run = f.RunFactory(path=f.PathFactory(scenario=scenario), status=run_status,
                       stage={"pending": "queued", "running": "live"}.get(run_status, "done"),
                       verdict="passed" if run_status == "completed" else None,
                       snapshot={"scenario": {"name": scenario.name, "channel": "voice", "direction": "outbound"},
                                 "path": {"name": "Books a cleaning"}, "target": {"kind": "phone"}, "agent": {}})
    if call_fields.pop("placed", True):
        f.CallFactory(run=run, **call_fields)
    return run


def finished_call(**extra):
    started = timezone.now() - timedelta(minutes=5)
    fields = {
        "provider": "twilio", "direction": "outbound", "sid": "CA" + "1" * 32, "from_number": "+14155550100",
        "to_number": "+14155550123", "status": "completed",
        "history": [
            {"status": "ringing", "sequence": 1, "at": started.isoformat(), "sip": ""},
            {"status": "in-progress", "sequence": 2, "at": (started + timedelta(seconds=3)).isoformat(), "sip": ""},
            {"status": "completed", "sequence": 3, "at": (started + timedelta(seconds=40)).isoformat(), "sip": "200"},
        ],
        "answered_at": started + timedelta(seconds=3), "ended_at": started + timedelta(seconds=40),
        "hung_up_by": "target", "error_code": "", "recording_duration_seconds": 37,
    }
    fields.update(extra)
    return fields


def store_recording(run) -> bytes:
    audio = wav_bytes()
    run.call.recording.save(f"{run.pk}.wav", ContentFile(audio))
    return audio


@pytest.fixture
def outsider_client(client, other_workspace):
    outsider = f.UserFactory()
    f.MembershipFactory(workspace=other_workspace, user=outsider, role="owner")
    client.force_login(outsider)
    return client


# The run API -------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_voice_runs_detail_has_its_call(api, workspace):
    run = voice_run(workspace, **finished_call())
    store_recording(run)
    call = api.get(f"/api/v1/runs/{run.pk}/").json()["call"]
    assert {k: v for k, v in call.items() if k not in ("answered_at", "ended_at", "history", "recording_url")} == {
        "provider": "twilio", "direction": "outbound", "sid": "CA" + "1" * 32, "from_number": "+14155550100",
        "to_number": "+14155550123", "status": "completed", "hung_up_by": "target", "error_code": "",
        "error_detail": "", "recording_duration_seconds": 37}
    assert [(e["status"], e["sequence"], e["sip"]) for e in call["history"]] == [
        ("ringing", 1, ""), ("in-progress", 2, ""), ("completed", 3, "200")]
    assert call["answered_at"] and call["ended_at"]
    assert call["recording_url"] == f"http://testserver/runs/{run.pk}/recording/"
    # The URL the API gives opens with the same token.
    assert api.get(call["recording_url"]).status_code == 200


@pytest.mark.django_db
def test_the_call_is_null_for_chat_runs_and_the_recording_url_until_it_is_stored(api, workspace):
    chat = f.RunFactory(path__scenario__workspace=workspace, status="completed", stage="done", verdict="passed")
    assert api.get(f"/api/v1/runs/{chat.pk}/").json()["call"] is None
    voice = voice_run(workspace, **finished_call())
    assert api.get(f"/api/v1/runs/{voice.pk}/").json()["call"]["recording_url"] is None
    # The list stays as it was.
    assert all("call" not in row for row in api.get("/api/v1/runs/").json()["results"])


@pytest.mark.django_db
def test_the_call_costs_the_detail_no_query_of_its_own(api, workspace):
    chat = f.RunFactory(path__scenario__workspace=workspace, status="completed", stage="done", verdict="passed")
    voice = voice_run(workspace, **finished_call())
    for run in (chat, voice):
        with CaptureQueriesContext(connection) as queries:
            assert api.get(f"/api/v1/runs/{run.pk}/").status_code == 200
        # Joined into the run's own query, for voice and chat runs alike.
        assert not [q["sql"] for q in queries if 'FROM "telephony_call"' in q["sql"]]
        assert [q["sql"] for q in queries if 'JOIN "telephony_call"' in q["sql"]]


@pytest.mark.django_db
def test_the_schema_documents_the_call_and_the_recording(api):
    schema = api.get("/api/schema/?format=json").json()
    call = schema["components"]["schemas"]["RunDetail"]["properties"]["call"]
    assert call.get("nullable") is True
    assert "RunCall" in str(call)
    assert "recording_url" in schema["components"]["schemas"]["RunCall"]["properties"]
    recording = schema["paths"]["/api/v1/runs/{id}/recording/"]["get"]
    assert "audio/wav" in recording["responses"]["200"]["content"]


# The recording -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_member_gets_the_recording(member_client, workspace):
    run = voice_run(workspace, **finished_call())
    audio = store_recording(run)
    response = member_client.get(f"/runs/{run.pk}/recording/")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/wav"
    assert b"".join(response.streaming_content) == audio


@pytest.mark.django_db
@pytest.mark.parametrize("asked, status, part", [
    ("bytes=0-99", 206, slice(0, 100)), ("bytes=100-", 206, slice(100, None)), ("bytes=-50", 206, slice(-50, None)),
    ("bytes=10-999999999", 206, slice(10, None)), ("bytes=0-0", 206, slice(0, 1)),
    ("bytes=5-1", 416, None), ("bytes=999999999-", 416, None),
    ("bytes=0-1,5-9", 200, slice(None)), ("bytes=" + "9" * 5000 + "-", 200, slice(None)), ("items=0-5", 200, slice(None)),
])
def test_the_player_seeks_with_byte_ranges(member_client, workspace, asked, status, part):
    run = voice_run(workspace, **finished_call())
    audio = store_recording(run)
    response = member_client.get(f"/runs/{run.pk}/recording/", HTTP_RANGE=asked)
    assert response.status_code == status
    if status == 416:
        assert response["Content-Range"] == f"bytes */{len(audio)}"
        return
    assert response["Accept-Ranges"] == "bytes"
    body = b"".join(response.streaming_content)
    assert body == audio[part]
    if status == 206:
        start = len(audio[:part.start]) if part.start is not None else 0
        assert response["Content-Range"] == f"bytes {start}-{start + len(body) - 1}/{len(audio)}"
        assert response["Content-Length"] == str(len(body))


@pytest.mark.django_db
def test_an_api_token_gets_the_recording(api, workspace):
    run = voice_run(workspace, **finished_call())
    audio = store_recording(run)
    response = api.get(f"/api/v1/runs/{run.pk}/recording/", HTTP_ACCEPT="audio/wav")
    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    assert b"".join(response.streaming_content) == audio


@pytest.mark.django_db
def test_nobody_else_gets_the_recording(client, workspace, other_workspace):
    run = voice_run(workspace, **finished_call())
    store_recording(run)
    assert client.get(f"/runs/{run.pk}/recording/").status_code == 404  # anonymous

    _, their_key = api_token_create(workspace=other_workspace, name="theirs")
    assert client.get(f"/runs/{run.pk}/recording/", HTTP_AUTHORIZATION=f"Token {their_key}").status_code == 404
    assert client.get(f"/api/v1/runs/{run.pk}/recording/", HTTP_AUTHORIZATION=f"Token {their_key}").status_code == 404

    outsider = f.UserFactory()
    f.MembershipFactory(workspace=other_workspace, user=outsider, role="owner")
    client.force_login(outsider)
    assert client.get(f"/runs/{run.pk}/recording/").status_code == 404


@pytest.mark.django_db
def test_no_recording_yet_is_a_404(member_client, workspace):
    run = voice_run(workspace, **finished_call())
    assert member_client.get(f"/runs/{run.pk}/recording/").status_code == 404


# The run page ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_run_page_shows_the_call_and_plays_its_recording(member_client, workspace):
    run = voice_run(workspace, **finished_call())
    store_recording(run)
    page = member_client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="call-panel"' in page
    assert "<code>+14155550100</code> → <code>+14155550123</code>" in page
    assert "The target" in page  # who hung up
    for status in ("ringing", "in-progress", "completed"):
        assert f'call-{status}">{status}</span>' in page
    assert f'<audio controls preload="metadata" src="/runs/{run.pk}/recording/"></audio>' in page


@pytest.mark.django_db
def test_chat_runs_have_no_call_panel(member_client, workspace):
    chat = f.RunFactory(path__scenario__workspace=workspace, status="completed", stage="done", verdict="passed",
                        snapshot={"scenario": {"channel": "chat", "name": "Chat"}, "path": {"name": "p"}})
    page = member_client.get(f"/runs/{chat.pk}/").content.decode()
    assert 'id="call-panel"' not in page


@pytest.mark.django_db
@pytest.mark.parametrize("call, says", [
    (dict(provider="twilio", ended_ago=timedelta(seconds=5)), "Recording is being processed"),
    (dict(provider="loopback", ended_ago=timedelta(seconds=5)), "Recording is being processed"),
    (dict(provider="loopback", ended_ago=timedelta(minutes=2)),
     "No recording: the loopback telephony records only where espeak-ng is installed"),
    (dict(provider="twilio", ended_ago=timedelta(seconds=5), answered=False, status="no-answer"),
     "No recording: the call was not answered"),
], ids=["twilio-processing", "loopback-processing", "loopback-no-espeak", "unanswered"])
def test_the_panel_says_where_the_recording_is(member_client, workspace, call, says):
    ended = timezone.now() - call["ended_ago"]
    run = voice_run(workspace, **finished_call(
        provider=call["provider"], ended_at=ended, status=call.get("status", "completed"),
        answered_at=ended - timedelta(seconds=30) if call.get("answered", True) else None))
    page = member_client.get(f"/runs/{run.pk}/").content.decode()
    assert says in page
    assert "<audio" not in page


@pytest.mark.django_db
def test_an_armed_inbound_run_shows_the_number_it_waits_on(member_client, workspace):
    run = voice_run(workspace, run_status="running", provider="loopback", direction="inbound", sid=None,
                    from_number="+15550100", to_number="+15550160")
    run.call.status = "armed"
    run.call.save()
    page = member_client.get(f"/runs/{run.pk}/").content.decode()
    assert "Armed</span> waiting for a call to <code>+15550160</code>" in page
    assert "The recording is available once the call ends." in page


@pytest.mark.django_db
def test_a_queued_voice_run_says_when_its_call_comes(member_client, workspace):
    run = voice_run(workspace, run_status="pending", placed=False)
    page = member_client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="call-panel"' in page and "The call is placed" in page


@pytest.mark.django_db(transaction=True)
def test_a_call_status_change_updates_the_open_run_page(workspace, member):
    run = voice_run(workspace, run_status="running", provider="twilio", sid="CA" + "2" * 32)
    services.call_status_update(run_id=run.pk, sid="CA" + "2" * 32, status="ringing", sequence=1)

    async def scenario():
        comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/runs/{run.pk}/")
        comm.scope["user"] = member
        assert (await comm.connect(timeout=5))[0]
        await database_sync_to_async(services.call_status_update)(
            run_id=run.pk, sid="CA" + "2" * 32, status="in-progress", sequence=2)
        while True:
            message = await comm.receive_json_from(timeout=5)
            if message["type"] == "replace" and message["id"] == "run-summary":
                break
        assert 'data-call-status="in-progress"' in message["html"]
        assert 'call-in-progress">In progress</span>' in message["html"]
        await comm.disconnect()

    async_to_sync(scenario)()
