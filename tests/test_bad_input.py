"""Bad input is a 400 (or a form error) with a message, and writes nothing: never a server error.

Each case here was a 500 once (schemathesis against /api/schema/, and by hand); tests/test_api_fuzz.py
keeps looking for new ones.
"""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from assure import patterns
from runs.connectors import Reply, TargetConnection
from runs.engine import Clock, ScriptedCaller
from runs.evaluation import check, metrics_of
from runs.routing import websocket_urlpatterns
from scenarios.models import Agent, Path, Scenario, Target
from tests import factories as f

pytestmark = pytest.mark.django_db


def post_json(api, url, body):
    return api.post(url, json.dumps(body), content_type="application/json")


# Unique names ------------------------------------------------------------------------------------


def test_a_duplicate_agent_name_is_a_400_on_the_name(api, workspace):
    f.AgentFactory(workspace=workspace, name="Polite caller")
    response = post_json(api, "/api/v1/agents/", {"name": "Polite caller", "instructions": "Be polite."})
    assert response.status_code == 400, response.content
    assert response.json() == {"name": ["Another agent in this workspace already has this name."]}
    assert Agent.objects.filter(workspace=workspace).count() == 1


def test_a_duplicate_target_name_is_a_400_also_when_renaming(api, workspace):
    f.TargetFactory(workspace=workspace, name="Support bot")
    other = f.TargetFactory(workspace=workspace, name="Sales bot")
    created = post_json(api, "/api/v1/targets/", {
        "name": "Support bot", "channel": "chat", "kind": "http_json", "url": "http://127.0.0.1:9/chat",
        "request_template": {"text": "{{message}}"}, "response_path": "$.reply"})
    assert created.status_code == 400, created.content
    assert created.json() == {"name": ["Another target in this workspace already has this name."]}
    renamed = api.patch(f"/api/v1/targets/{other.pk}/", json.dumps({"name": "Support bot"}), content_type="application/json")
    assert renamed.status_code == 400, renamed.content
    assert "already has this name" in renamed.json()["name"][0]
    assert sorted(Target.objects.filter(workspace=workspace).values_list("name", flat=True)) == ["Sales bot", "Support bot"]


def test_saving_an_agent_under_its_own_name_is_not_a_duplicate(api, workspace, other_workspace):
    agent = f.AgentFactory(workspace=workspace, name="Polite caller")
    f.AgentFactory(workspace=other_workspace, name="Rude caller")
    kept = api.patch(f"/api/v1/agents/{agent.pk}/", json.dumps({"name": "Polite caller", "instructions": "New."}),
                     content_type="application/json")
    assert kept.status_code == 200, kept.content
    # Another workspace's names are theirs alone.
    renamed = api.patch(f"/api/v1/agents/{agent.pk}/", json.dumps({"name": "Rude caller"}), content_type="application/json")
    assert renamed.status_code == 200, renamed.content


# Query parameters and bodies ----------------------------------------------------------------------


def test_a_huge_limit_gives_the_largest_page(api, workspace):
    f.AgentFactory.create_batch(3, workspace=workspace)
    response = api.get("/api/v1/agents/", {"limit": "2713497940347741274112"})
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 3 and len(response.json()["results"]) == 3
    far = api.get("/api/v1/agents/", {"limit": "2", "offset": "2713497940347741274112"})
    assert far.status_code == 200 and far.json()["results"] == []


@pytest.mark.parametrize("numbers,message", [
    ("garbage", "Must be a list of E.164 phone numbers."),
    ({"+14155550123": True}, "Must be a list of E.164 phone numbers."),
    ([["+14155550123"]], "number 1: "),
    ([2 ** 70], "number 1: "),
    ([None], "number 1: "),
])
def test_garbage_in_outbound_numbers_is_a_400(api, workspace, numbers, message):
    response = post_json(api, "/api/v1/agents/", {"name": "Caller", "instructions": "Hi.", "outbound_numbers": numbers})
    assert response.status_code == 400, response.content
    assert response.json()["outbound_numbers"][0].startswith(message)
    assert not Agent.objects.exists()


def test_json_nested_60000_deep_is_a_400(api):
    body = '{"name": "Caller", "instructions": "Hi.", "end_conditions": ' + "[" * 60_000 + "]" * 60_000 + "}"
    response = api.post("/api/v1/agents/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "nested deeper than 64 levels" in response.json()["detail"]
    assert not Agent.objects.exists()


def test_json_nested_a_little_too_deep_is_a_400_too(api, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    script = [{"say": "Hi"}, {"expect": "x"}]
    deep = script
    for _ in range(70):
        deep = [deep]
    response = post_json(api, "/api/v1/paths/", {"scenario": str(scenario.pk), "name": "Deep", "script": deep})
    assert response.status_code == 400, response.content
    assert not Path.objects.filter(name="Deep").exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_an_api_body_is_a_400(api, workspace, constant):
    scenario = f.ScenarioFactory(workspace=workspace)
    body = ('{"name": "x", "kind": "http_json", "channel": "chat", "url": "http://127.0.0.1:9/chat", '
            '"response_path": "$.reply", "request_template": {"text": "{{message}}", "n": %s}}' % constant)
    response = api.post("/api/v1/targets/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert constant.lstrip("-") in response.json()["detail"]
    assert Target.objects.filter(workspace=workspace).count() == 1  # the scenario's own


def test_a_form_body_is_refused_the_api_speaks_json(api):
    response = api.post("/api/v1/agents/", {"name": "Caller", "instructions": "Hi.", "outbound_numbers": "NaN"})
    assert response.status_code == 415
    assert not Agent.objects.exists()


# Pages ------------------------------------------------------------------------------------------


def test_nan_in_a_pages_json_field_is_a_form_error(member_client, workspace):
    response = member_client.post("/targets/new/", {
        "name": "Support bot", "channel": "chat", "kind": "http_json", "url": "https://bot.example.com/chat",
        "phone_number": "", "headers": "", "request_template": '{"text": "{{message}}", "n": NaN}',
        "response_path": "$.reply", "model": ""})
    assert response.status_code == 200
    assert "Not valid JSON: NaN is not allowed in JSON: use a number or null." in response.context["form"].errors["request_template"]
    assert not Target.objects.exists()


def test_deeply_nested_headers_on_a_page_are_a_form_error(member_client, workspace):
    response = member_client.post("/targets/new/", {
        "name": "Support bot", "channel": "chat", "kind": "http_json", "url": "https://bot.example.com/chat",
        "phone_number": "", "headers": "[" * 60_000 + "]" * 60_000, "request_template": '{"text": "{{message}}"}',
        "response_path": "$.reply", "model": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["headers"] == ["Not valid JSON: nested deeper than 64 levels."]
    assert not Target.objects.exists()


# Regexes ----------------------------------------------------------------------------------------


def test_a_huge_repeat_count_in_a_criterion_is_a_400(api, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    criteria = [{"name": "greets", "kind": "regex", "speaker": "target", "pattern": "a{99999}"}]
    response = api.patch(f"/api/v1/scenarios/{scenario.pk}/", json.dumps({"criteria": criteria}), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["criteria"] == [
        "criterion 1 (greets): pattern: RE2 does not support repetition counts above 1000, or {n,m} with n > m."]
    scenario.refresh_from_db()
    assert scenario.criteria == [{"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}]


def test_an_overflowing_repeat_count_in_a_script_is_not_a_server_error(api, workspace):
    # Python's re raised OverflowError on this; RE2 reads a count it cannot parse as literal text.
    scenario = f.ScenarioFactory(workspace=workspace)
    response = post_json(api, "/api/v1/paths/", {"scenario": str(scenario.pk), "name": "Big",
                                                 "script": [{"say": "Hi"}, {"expect": "a{99999999999}"}]})
    assert response.status_code == 201, response.content
    assert patterns.matches("a{99999999999}", "say a{99999999999}")


@pytest.mark.parametrize("pattern,unsupported", [
    (r"(\w+) \1", r"backreferences (\1 … \9)"),
    (r"(?P<word>\w+) (?P=word)", "backreferences ((?P=name))"),
    (r"book(?=ed)", "lookahead ((?=…))"),
    (r"(?<!not )booked", "negative lookbehind ((?<!…))"),
])
def test_syntax_re2_lacks_is_refused_when_saved(api, workspace, pattern, unsupported):
    scenario = f.ScenarioFactory(workspace=workspace)
    criteria = [{"name": "booked", "kind": "regex", "speaker": "target", "pattern": pattern}]
    response = post_json(api, "/api/v1/scenarios/", {
        "name": "Regex", "channel": "chat", "agent": str(scenario.agent_id), "target": str(scenario.target_id),
        "criteria": criteria})
    assert response.status_code == 400, response.content
    assert response.json()["criteria"] == [f"criterion 1 (booked): pattern: RE2 does not support {unsupported}."]
    path = post_json(api, "/api/v1/paths/", {"scenario": str(scenario.pk), "name": "P", "script": [{"expect": pattern}]})
    assert path.status_code == 400, path.content
    assert path.json()["script"] == [f'step 1: "expect": RE2 does not support {unsupported}.']
    assert Scenario.objects.count() == 1 and not Path.objects.filter(name="P").exists()


def test_a_catastrophic_pattern_is_judged_on_a_long_reply():
    # With Python's re, (a+)+$ against 10,000 a's and a b backtracks for longer than the universe
    # has existed; with RE2 it is a linear scan.
    turns = [{"seq": 1, "speaker": "target", "text": "a" * 10_000 + "b", "latency_ms": 5, "started_ms": 0},
             {"seq": 2, "speaker": "target", "text": "a" * 10_000, "latency_ms": 5, "started_ms": 10}]
    result = check({"name": "all a", "kind": "regex", "speaker": "target", "pattern": "(a+)+$"},
                   turns=turns, tools=[], ended_by="caller", metrics=metrics_of(turns, 20))
    assert (result.outcome, result.evidence) == ("passed", [2])


def test_only_the_first_100000_characters_are_matched():
    text = "x" * patterns.MAX_TEXT_CHARS + "needle"
    assert not patterns.matches("needle", text)
    assert patterns.matches("needle", text[-20_000:])


class _RepeatingTarget(TargetConnection):
    """A customer's agent that answers every message with the same text."""

    def __init__(self, answer: str):
        super().__init__(target={}, context=None)
        self.answer = answer

    async def send(self, text: str) -> Reply:
        return Reply(text=self.answer)


class _Recorder:
    def __init__(self):
        self.turns, self.tools = [], []

    async def turn(self, **turn):
        self.turns.append(turn)

    async def tool(self, **tool):
        self.tools.append(tool)


@pytest.mark.parametrize("answer,met", [("a" * 10_000, True), ("a" * 10_000 + "b", False)])
def test_a_catastrophic_expect_step_is_decided_on_a_long_reply(answer, met):
    recorder = _Recorder()
    caller = ScriptedCaller([{"say": "Spell it"}, {"expect": "^(a+)+$"}, {"say": "Thanks"}])
    outcome = asyncio.run(caller.converse(_RepeatingTarget(answer), recorder, Clock()))
    assert [t["text"] for t in recorder.turns if t["speaker"] == "caller"] == (["Spell it", "Thanks"] if met else ["Spell it"])
    assert bool(outcome.expectation_failures) is not met


def test_a_pattern_saved_before_re2_gives_an_error_not_a_verdict():
    turns = [{"seq": 1, "speaker": "target", "text": "booked booked", "latency_ms": 5, "started_ms": 0}]
    result = check({"name": "twice", "kind": "regex", "speaker": "target", "pattern": r"(\w+) \1"},
                   turns=turns, tools=[], ended_by="caller", metrics=metrics_of(turns, 10))
    assert result.outcome == "error"
    assert "RE2 does not support backreferences" in result.rationale


# Websockets -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bad", [
    {"type": "resume", "turn_seq": "abc", "tool_seq": 0},
    {"type": "resume", "turn_seq": 0, "tool_seq": [1]},
    {"type": "resume", "turn_seq": 2 ** 80, "tool_seq": 0},
    ["resume"],
    "not json at all {",
])
def test_a_bad_resume_leaves_the_live_socket_open(workspace, member, bad):
    run = f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)))
    f.TurnFactory(run=run, seq=1, speaker="caller", text="hello", started_ms=0)

    async def scenario():
        comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/runs/{run.pk}/")
        comm.scope["user"] = member
        assert (await comm.connect(timeout=5))[0]
        await comm.send_to(text_data=bad if isinstance(bad, str) else json.dumps(bad))
        assert await comm.receive_nothing(timeout=0.3)  # ignored, and the socket was not closed
        await comm.send_json_to({"type": "resume", "turn_seq": 0, "tool_seq": 0})
        first = await comm.receive_json_from(timeout=5)
        assert first["type"] == "turn" and first["seq"] == 1
        await comm.disconnect()

    async_to_sync(scenario)()
