"""Every field a user types is validated with a message that says what to fix."""

import pytest
from django.core.exceptions import ValidationError

from scenarios import validators
from scenarios.models import Agent, CustomFunction, Path, Scenario, Target
from tests.factories import AgentFactory, PathFactory, ScenarioFactory, TargetFactory, WorkspaceFactory

pytestmark = pytest.mark.django_db


def messages(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@pytest.mark.parametrize("number", ["+14155550123", "+442071838750", "+5511987654321"])
def test_e164_accepts_real_numbers(number):
    validators.validate_e164(number)


@pytest.mark.parametrize("number", ["14155550123", "+1 415 555 0123", "+0123456789", "+1415", "+1415555012345678", ""])
def test_e164_rejects_with_an_example(number):
    with pytest.raises(ValidationError, match=r"not an E\.164 phone number.*\+14155550123"):
        validators.validate_e164(number)


def test_outbound_numbers_point_at_the_bad_entry():
    with pytest.raises(ValidationError, match="number 2: '555-1234' is not an E.164"):
        validators.validate_e164_list(["+14155550123", "555-1234"])
    with pytest.raises(ValidationError, match="only once"):
        validators.validate_e164_list(["+14155550123", "+14155550123"])


def test_urls_need_the_right_scheme_and_a_host():
    validators.validate_http_url("http://bot:8080/chat")  # private host names are fine
    validators.validate_ws_url("wss://bot.example.com/ws")
    with pytest.raises(ValidationError, match="starting with http:// or https://"):
        validators.validate_http_url("ftp://x.com")
    with pytest.raises(ValidationError, match="needs a host name"):
        validators.validate_http_url("http:///chat")
    with pytest.raises(ValidationError, match="Not a valid URL"):
        validators.validate_http_url("http://bot:99999/")
    with pytest.raises(ValidationError, match="starting with ws:// or wss://"):
        validators.validate_ws_url("http://x.com")


def test_function_parameters_must_be_an_object_json_schema():
    validators.validate_parameters_schema({"type": "object", "properties": {"day": {"type": "string"}}})
    with pytest.raises(ValidationError, match='"type": "object"'):
        validators.validate_parameters_schema({"type": "string"})
    with pytest.raises(ValidationError, match="Not a valid JSON Schema at properties/day/type"):
        validators.validate_parameters_schema({"type": "object", "properties": {"day": {"type": "text"}}})
    with pytest.raises(ValidationError, match="Must be a JSON object"):
        validators.validate_parameters_schema(["type", "object"])


def test_function_model_validates_name_url_and_schema():
    agent = AgentFactory()
    function = CustomFunction(
        workspace=agent.workspace, agent=agent, name="book slot", url="mailto:x", parameters={"type": "array"}
    )
    with pytest.raises(ValidationError) as exc:
        function.full_clean()
    assert set(exc.value.message_dict) == {"name", "url", "parameters"}


@pytest.mark.parametrize(
    "script,message",
    [
        ("say hi", "must be a list of steps"),
        ([{"say": "hi", "press": "1"}], "step 1: each step is an object with one key"),
        ([{"say": "  "}], 'step 1: "say" needs the text'),
        ([{"say": "hi"}, {"press": "12a"}], 'step 2: "press" needs digits'),
        ([{"pause_ms": 0}], 'step 1: "pause_ms" needs a whole number'),
        ([{"pause_ms": True}], 'step 1: "pause_ms" needs a whole number'),
        ([{"expect": "(unclosed"}], 'step 1: "expect" is not a valid regular expression'),
        ([{"end_call": "yes"}], 'step 1: "end_call" takes true'),
        ([{"shout": "hi"}], "step 1: unknown step 'shout'"),
        ([{"end_call": True}, {"say": "hi"}], 'step 1: "end_call" must be the last step'),
    ],
)
def test_script_steps_are_checked_one_by_one(script, message):
    with pytest.raises(ValidationError) as exc:
        validators.validate_script(script)
    assert message in messages(exc.value)


def test_a_full_script_is_accepted():
    validators.validate_script(
        [{"say": "Hi"}, {"press": "1#"}, {"pause_ms": 500}, {"expect": "(?i)hello"}, {"end_call": True}]
    )


@pytest.mark.parametrize(
    "criteria,message",
    [
        ({"name": "x"}, "Criteria must be a list"),
        ([{"kind": "contains"}], "criterion 1: needs a name"),
        ([{"name": "a", "kind": "vibes"}], "unknown kind 'vibes'"),
        ([{"name": "a", "kind": "contains", "speaker": "robot", "text": "hi"}], "contains needs 'speaker'"),
        ([{"name": "a", "kind": "regex", "speaker": "target", "pattern": "(x"}], "not a valid regular expression"),
        ([{"name": "a", "kind": "max_latency_ms", "percentile": "p99", "ms": 100}], "max_latency_ms needs 'percentile'"),
        ([{"name": "a", "kind": "min_turns", "n": -1}], "min_turns needs 'n'"),
        ([{"name": "a", "kind": "ended_by", "speaker": "caller", "extra": 1}], "ended_by takes no 'extra'"),
        (
            [{"name": "a", "kind": "llm_judge", "rule": "polite"}, {"name": "a", "kind": "min_turns", "n": 1}],
            "criterion 2: the name 'a' is used twice",
        ),
    ],
)
def test_criteria_are_checked_per_kind(criteria, message):
    with pytest.raises(ValidationError) as exc:
        validators.validate_criteria(criteria)
    assert message in messages(exc.value)


def test_every_criterion_kind_of_the_contract_is_accepted():
    validators.validate_criteria(
        [
            {"name": "1", "kind": "contains", "speaker": "target", "text": "booked"},
            {"name": "2", "kind": "regex", "speaker": "caller", "pattern": "^hi"},
            {"name": "3", "kind": "tool_called", "tool": "book", "arguments": {"day": "Tue"}},
            {"name": "4", "kind": "tool_not_called", "tool": "transfer"},
            {"name": "5", "kind": "ended_by", "speaker": "caller"},
            {"name": "6", "kind": "max_latency_ms", "percentile": "p90", "ms": 1500},
            {"name": "7", "kind": "max_duration_ms", "ms": 60000},
            {"name": "8", "kind": "min_turns", "n": 2},
            {"name": "9", "kind": "max_turns", "n": 20},
            {"name": "10", "kind": "llm_judge", "rule": "The agent confirms the booking."},
        ]
    )


def test_target_fields_depend_on_its_kind():
    ws = WorkspaceFactory()
    cases = [
        (Target(workspace=ws, name="a", channel="voice", kind="phone"), {"phone_number"}),
        (Target(workspace=ws, name="b", channel="voice", kind="phone", phone_number="555"), {"phone_number"}),
        (Target(workspace=ws, name="c", channel="chat", kind="phone"), {"kind", "phone_number"}),
        (Target(workspace=ws, name="d", channel="chat", kind="openai_chat", url="http://x.com"), {"model"}),
        (Target(workspace=ws, name="e", channel="chat", kind="websocket", url="http://x.com"), {"url"}),
        (
            Target(workspace=ws, name="f", channel="chat", kind="http_json", url="http://x.com",
                   request_template={"text": "hi"}, response_path="reply"),
            {"request_template", "response_path"},
        ),
        (Target(workspace=ws, name="g", channel="chat", kind="http_json", url="http://x.com",
                headers={"Bad Header": "x"}, request_template={"t": "{{message}}"}, response_path="$.r"), {"headers"}),
    ]
    for target, fields in cases:
        with pytest.raises(ValidationError) as exc:
            target.full_clean()
        assert set(exc.value.message_dict) == fields, (target.name, exc.value.message_dict)


def test_valid_targets_of_every_kind():
    ws = WorkspaceFactory()
    Target(workspace=ws, name="phone", channel="voice", kind="phone", phone_number="+14155550123").full_clean()
    Target(workspace=ws, name="oa", channel="chat", kind="openai_chat", url="http://llm:8000/v1", model="m").full_clean()
    Target(workspace=ws, name="ws", channel="chat", kind="websocket", url="ws://bot:9000/").full_clean()
    Target(workspace=ws, name="demo", channel="chat", kind="demo").full_clean()
    Target(
        workspace=ws, name="hj", channel="chat", kind="http_json", url="https://bot.example.com/chat",
        headers={"Authorization": "Bearer x"}, request_template={"session": "{{session_id}}", "q": {"text": "{{message}}"}},
        response_path="$.data.messages[0].text",
    ).full_clean()


def test_scenario_channel_must_match_target_and_objects_share_a_workspace():
    scenario = ScenarioFactory()
    voice_target = TargetFactory(workspace=scenario.workspace, channel="voice", kind="phone", phone_number="+14155550123")
    scenario.target = voice_target
    with pytest.raises(ValidationError, match="pick a chat target"):
        scenario.full_clean()
    scenario.target = TargetFactory()  # another workspace
    scenario.agent = AgentFactory()
    with pytest.raises(ValidationError) as exc:
        scenario.full_clean()
    assert exc.value.message_dict == {
        "agent": ["Must belong to the same workspace."], "target": ["Must belong to the same workspace."]
    }


def test_chat_scenarios_cannot_be_inbound():
    scenario = ScenarioFactory.build(direction=Scenario.Direction.INBOUND)
    with pytest.raises(ValidationError, match="Chat scenarios are outbound"):
        scenario.full_clean(exclude=["agent", "target", "workspace"])


def test_path_needs_a_narrative_or_a_script():
    path = PathFactory.build(narrative=" ", script=[], scenario=ScenarioFactory())
    path.workspace = path.scenario.workspace
    with pytest.raises(ValidationError, match="needs a narrative"):
        path.full_clean()


def test_agent_fields():
    agent = Agent(workspace=WorkspaceFactory(), name="x", language="english", max_duration_seconds=5,
                  outbound_numbers=["+14155550123", "nope"], llm_base_url="localhost:8000")
    with pytest.raises(ValidationError) as exc:
        agent.full_clean()
    assert set(exc.value.message_dict) == {"language", "max_duration_seconds", "outbound_numbers", "llm_base_url"}


def test_path_unique_name_per_scenario():
    path = PathFactory()
    duplicate = Path(workspace=path.workspace, scenario=path.scenario, name=path.name, narrative="x")
    with pytest.raises(ValidationError, match="already exists"):
        duplicate.full_clean()
