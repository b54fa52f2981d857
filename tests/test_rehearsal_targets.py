"""Rehearsal targets (a chat target's replies, spoken on a loopback call) and the numbers loopback
voice targets are given, through the target form and the API."""

import re

import pytest

from scenarios.models import DEMO_VOICE_NUMBER, Target, loopback_number
from tests import factories as f

pytestmark = pytest.mark.django_db

NEEDS_CHAT = "A rehearsal target needs the chat target whose replies it speaks."


@pytest.fixture
def chat_bot(workspace):
    return f.TargetFactory(workspace=workspace, name="Chat bot")


def form_data(**overrides):
    data = {"name": "Rehearsal", "channel": "voice", "kind": "rehearsal", "url": "", "phone_number": "",
            "rehearse_with": "", "dial_in_delay_seconds": "5", "headers": "", "request_template": "",
            "response_path": "", "model": ""}
    return {**data, **overrides}


def options_of(page: str, name: str) -> list[str]:
    select = re.search(rf'<select name="{name}".*?</select>', page, re.S).group(0)
    return re.findall(r'<option value="([^"]+)"', select)


# The target form ---------------------------------------------------------------------------------

def test_a_rehearsal_target_speaks_a_chat_target_and_gets_its_number(member_client, chat_bot):
    response = member_client.post("/targets/new/", form_data(rehearse_with=str(chat_bot.pk),
                                                             phone_number="+14155550100"))
    assert response.status_code == 302, response.context["form"].errors
    target = Target.objects.get(name="Rehearsal")
    assert (target.rehearse_with, target.dial_in_delay_seconds) == (chat_bot, 5)
    assert target.phone_number == loopback_number(target) != "+14155550100"

    edit = member_client.get(f"/targets/{target.pk}/edit/").content.decode()
    assert re.search(rf'name="assigned_number" value="{re.escape(target.phone_number)}"[^>]*disabled', edit)
    listed = member_client.get("/targets/").content.decode()
    assert f"<code>{target.phone_number}</code> <small class=\"muted\">assigned · speaks Chat bot</small>" in listed


def test_the_rehearsal_select_offers_only_this_workspaces_chat_targets(member_client, workspace, other_workspace,
                                                                       chat_bot):
    voice = f.TargetFactory(workspace=workspace, channel="voice", kind="phone", phone_number="+14155550123", url="")
    theirs = f.TargetFactory(workspace=other_workspace)
    page = member_client.get("/targets/new/").content.decode()
    assert options_of(page, "rehearse_with") == [str(chat_bot.pk)]
    assert str(voice.pk) not in options_of(page, "rehearse_with") and str(theirs.pk) not in page
    assert re.search(r'data-show-when="channel=voice;kind=rehearsal"[^>]*name="rehearse_with"', page) or \
        re.search(r'name="rehearse_with"[^>]*data-show-when="channel=voice;kind=rehearsal"', page)


@pytest.mark.parametrize("pick", ["nothing", "voice target", "other workspace"])
def test_a_rehearsal_target_is_refused_without_a_chat_target_of_its_workspace(member_client, workspace,
                                                                              other_workspace, pick):
    choice = {
        "nothing": "",
        "voice target": lambda: f.TargetFactory(workspace=workspace, channel="voice", kind="phone",
                                                phone_number="+14155550123", url="").pk,
        "other workspace": lambda: f.TargetFactory(workspace=other_workspace).pk,
    }[pick]
    response = member_client.post("/targets/new/", form_data(rehearse_with=str(choice() if callable(choice) else "")))
    assert response.status_code == 200
    expected = NEEDS_CHAT if pick == "nothing" else "Select a valid choice"
    assert response.context["form"].errors["rehearse_with"][0].startswith(expected)
    assert not Target.objects.filter(name="Rehearsal").exists()


def test_a_demo_voice_target_is_not_asked_for_a_number(member_client):
    response = member_client.post("/targets/new/", form_data(name="Demo line", kind="demo", phone_number="+14155550100"))
    assert response.status_code == 302, response.context["form"].errors
    assert Target.objects.get(name="Demo line").phone_number == DEMO_VOICE_NUMBER


def test_switching_away_from_rehearsal_drops_the_chat_target(member_client, workspace, chat_bot):
    target = Target(workspace=workspace, name="Rehearsal", channel="voice", kind="rehearsal", rehearse_with=chat_bot)
    target.full_clean()
    target.save()
    response = member_client.post(f"/targets/{target.pk}/edit/", form_data(
        kind="phone", phone_number="+14155550100", rehearse_with=str(chat_bot.pk)))
    assert response.status_code == 302, response.context["form"].errors
    target.refresh_from_db()
    assert (target.kind, target.rehearse_with, target.phone_number) == ("phone", None, "+14155550100")


# The API -----------------------------------------------------------------------------------------

def test_the_api_creates_a_rehearsal_target(api, chat_bot):
    response = api.post("/api/v1/targets/", {
        "name": "Rehearsal", "channel": "voice", "kind": "rehearsal", "rehearse_with": str(chat_bot.pk),
        "dial_in_delay_seconds": 7, "phone_number": "+14155550100"}, content_type="application/json")
    assert response.status_code == 201, response.json()
    body = response.json()
    target = Target.objects.get(pk=body["id"])
    assert (body["rehearse_with"], body["dial_in_delay_seconds"]) == (str(chat_bot.pk), 7)
    assert body["phone_number"] == target.phone_number == loopback_number(target)
    assert target.rehearse_with == chat_bot


@pytest.mark.parametrize("pick", ["nothing", "voice target", "other workspace"])
def test_the_api_refuses_a_rehearsal_target_without_a_chat_target_of_its_workspace(api, workspace, other_workspace,
                                                                                   pick):
    rehearse_with = {
        "nothing": lambda: None,
        "voice target": lambda: str(f.TargetFactory(workspace=workspace, channel="voice", kind="phone",
                                                    phone_number="+14155550123", url="").pk),
        "other workspace": lambda: str(f.TargetFactory(workspace=other_workspace).pk),
    }[pick]()
    response = api.post("/api/v1/targets/", {"name": "Rehearsal", "channel": "voice", "kind": "rehearsal",
                                             "rehearse_with": rehearse_with}, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["rehearse_with"] == [{
        "nothing": NEEDS_CHAT,
        "voice target": "Pick a chat target: its replies are what the rehearsal speaks.",
        "other workspace": f'Invalid pk "{rehearse_with}" - object does not exist.',
    }[pick]]
    assert not Target.objects.filter(name="Rehearsal").exists()


def test_the_api_assigns_the_demo_number(api):
    response = api.post("/api/v1/targets/", {"name": "Demo line", "channel": "voice", "kind": "demo",
                                             "phone_number": "+14155550100"}, content_type="application/json")
    assert response.status_code == 201, response.json()
    assert response.json()["phone_number"] == DEMO_VOICE_NUMBER
    assert Target.objects.get(name="Demo line").phone_number == DEMO_VOICE_NUMBER
