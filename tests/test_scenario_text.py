"""Tests as text: a scenario exported as YAML and imported back byte for byte, Botium convo files
imported as paths that then pass against a matching bot through the real stack (a Celery worker,
the bot on a real socket), and a finished run saved as a path, through the API, the page and a
real browser."""

from __future__ import annotations


import pytest
import yaml

from assure import patterns
from assure.services import api_token_create
from runs import services as run_services
from runs.models import Run
from scenarios import portable
from scenarios.api import PathSerializer
from scenarios.models import Agent, Path, Scenario, Target
from tests import factories as f
from tests.support import CeleryWorker, DaphneServer, FakeTarget, chromium, signed_in_page, wait_for

TERMINAL = ("completed", "failed", "cancelled")

EVERY_CRITERION = [
    {"name": "Greets — ¡hola!", "kind": "contains", "speaker": "target", "text": "Hello", "case_sensitive": True},
    {"name": "Polite", "kind": "regex", "speaker": "caller", "pattern": r"(?i)please|thank\s+you"},
    {"name": "Books", "kind": "tool_called", "tool": "book_table",
     "arguments": {"when": {"day": "Tuesday", "at": "19:00"}, "size": 2}},
    {"tool": "refund", "kind": "tool_not_called", "name": "No refund"},  # keys in an odd order on purpose
    {"name": "Caller ends", "kind": "ended_by", "speaker": "caller"},
    {"name": "Fast", "kind": "max_latency_ms", "percentile": "p90", "ms": 1500},
    {"name": "Short", "kind": "max_duration_ms", "ms": 60000},
    {"name": "Talks", "kind": "min_turns", "n": 2},
    {"name": "Not too long", "kind": "max_turns", "n": 40},
    {"name": "Judge", "kind": "llm_judge", "rule": "The agent confirms the booking.\nIt never promises a refund."},
]
EVERY_STEP = [
    {"say": "Hi — I'd like a table for 2 😀"},
    {"expect": "(?i)how many|for how"},
    {"press": "12#"},
    {"pause_ms": 250},
    {"say": "yes"},
    {"say": "Line one\nline two: with a colon\n"},
    {"say": "trailing space \nand a\r\nWindows break"},
    {"expect": r"^\d+ people$"},
    {"end_call": True},
]


def rich_scenario(workspace, *, name="Réservations — dîner") -> Scenario:
    agent = f.AgentFactory(workspace=workspace, name="Caller Zoë")
    target = f.TargetFactory(workspace=workspace, name="Bistro bot 🍷")
    scenario = f.ScenarioFactory(
        workspace=workspace, name=name, agent=agent, target=target, criteria=EVERY_CRITERION,
        description="Book a table.\n\n  Indented second paragraph.\n", max_parallel_runs=3,
        inbound_window_seconds=120)
    f.PathFactory(scenario=scenario, name="Zoë in a hurry", narrative="Zoë calls.\n\n  She is in a hurry.\n",
                  script=EVERY_STEP, criteria=[{"name": "Mentions time", "kind": "contains", "speaker": "target",
                                                "text": "19:00"}])
    f.PathFactory(scenario=scenario, name="yes", narrative="null", script=[], criteria=[])
    f.PathFactory(scenario=scenario, name="123", narrative="- looks like a list item: but is text", script=[],
                  criteria=[])
    return scenario


def export(api, scenario) -> str:
    response = api.get(f"/api/v1/scenarios/{scenario.pk}/export/")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/yaml")
    return response.content.decode()


def import_yaml(api, text: str, *, replace: bool | None = None, content_type="application/yaml"):
    url = "/api/v1/scenarios/import/" + ("" if replace is None else f"?replace={str(replace).lower()}")
    return api.post(url, data=text.encode(), content_type=content_type)


def counts() -> tuple[int, int]:
    return Scenario.objects.count(), Path.objects.count()


# Export and import ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_import_export_is_byte_identical(api, workspace, other_workspace, client):
    scenario = rich_scenario(workspace)
    first = export(api, scenario)

    # Readable text: references by name, multi-line text as literal blocks, unicode as itself.
    assert "agent: Caller Zoë\n" in first and "target: Bistro bot 🍷\n" in first
    assert "narrative: |\n    Zoë calls.\n\n      She is in a hurry.\n" in first
    assert "- name: No refund\n  kind: tool_not_called\n  tool: refund\n" in first
    assert "&" not in first and "*" not in first.replace("😀", "")  # no anchors, no aliases
    document = yaml.safe_load(first)
    assert document["criteria"] == EVERY_CRITERION
    assert [p["name"] for p in document["paths"]] == ["Zoë in a hurry", "yes", "123"]
    assert document["paths"][0]["script"] == EVERY_STEP

    # Into another workspace, where the agent and target of the same names exist.
    f.AgentFactory(workspace=other_workspace, name="Caller Zoë")
    f.TargetFactory(workspace=other_workspace, name="Bistro bot 🍷")
    _, other_key = api_token_create(workspace=other_workspace, name="other")
    other_api = type(client)()
    other_api.defaults["HTTP_AUTHORIZATION"] = f"Token {other_key}"
    created = import_yaml(other_api, first)
    assert created.status_code == 201, created.content
    imported = Scenario.objects.get(pk=created.json()["id"])
    assert imported.workspace_id == other_workspace.pk and imported.agent.workspace_id == other_workspace.pk
    assert export(other_api, imported) == first

    # Replacing the scenario with its own export changes nothing either.
    replaced = import_yaml(api, first, replace=True)
    assert replaced.status_code == 201, replaced.content
    assert replaced.json()["id"] == str(scenario.pk)
    assert export(api, scenario) == first


@pytest.mark.django_db
@pytest.mark.parametrize("accept,media_type", [
    ("text/yaml", "text/yaml"), ("application/yaml", "application/yaml"), ("*/*", "text/yaml"),
    ("application/json", "text/yaml"), ("text/yaml;q=0.9, application/json;q=0.1", "text/yaml"),
])
def test_the_export_answers_a_client_that_asks_for_yaml(api, workspace, accept, media_type):
    scenario = rich_scenario(workspace)
    response = api.get(f"/api/v1/scenarios/{scenario.pk}/export/", HTTP_ACCEPT=accept)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == f"{media_type}; charset=utf-8"
    assert yaml.safe_load(response.content)["name"] == scenario.name
    missing = api.get(f"/api/v1/scenarios/{f.ScenarioFactory(workspace=f.WorkspaceFactory()).pk}/export/",
                      HTTP_ACCEPT=accept)
    assert missing.status_code == 404
    assert "detail" in (missing.json() if "json" in missing["Content-Type"] else yaml.safe_load(missing.content))


@pytest.mark.django_db
def test_a_name_clash_needs_replace_and_replace_updates_in_place(api, workspace):
    scenario = rich_scenario(workspace)
    kept = scenario.paths.get(name="Zoë in a hurry")
    run = f.RunFactory(path=kept)
    document = yaml.safe_load(export(api, scenario))

    clash = import_yaml(api, export(api, scenario))
    assert clash.status_code == 400 and "replace=true" in clash.json()["name"][0]
    assert counts() == (1, 3)

    document["description"] = "Changed."
    document["paths"] = [
        {"name": "New first", "narrative": "", "script": [{"say": "first"}], "criteria": []},
        {**document["paths"][0], "script": [{"say": "changed"}]},
    ]
    response = import_yaml(api, portable.dump_yaml(document), replace=True)
    assert response.status_code == 201, response.content
    scenario.refresh_from_db()
    assert scenario.description == "Changed."
    assert list(scenario.paths.order_by("created_at").values_list("name", flat=True)) == ["New first", "Zoë in a hurry"]
    kept.refresh_from_db()
    assert kept.script == [{"say": "changed"}]  # updated in place: its runs stay linked
    assert Run.objects.get(pk=run.pk).path_id == kept.pk
    assert not Path.objects.filter(name__in=["yes", "123"]).exists()
    assert [p["name"] for p in yaml.safe_load(export(api, scenario))["paths"]] == ["New first", "Zoë in a hurry"]


def _valid_document(**changes) -> dict:
    document = {"version": 1, "name": "Imported", "channel": "chat", "agent": "Caller Zoë",
                "target": "Bistro bot 🍷", "criteria": [],
                "paths": [{"name": "one", "script": [{"say": "hi"}]}, {"name": "two", "script": [{"say": "yo"}]}]}
    document.update(changes)
    return document


BAD_IMPORTS = {
    "not yaml": ("name: [unclosed\nchannel: chat\n", "detail", "line 2"),
    "an alias": ("a: &x [1, 2]\nb: *x\n", "detail", "aliases"),
    "deep nesting": ("a: " + "[" * 40 + "]" * 40 + "\n", "detail", "nested deeper"),
    "a key twice": ("name: a\nname: b\n", "detail", "appears twice"),
    "a date": (portable.dump_yaml(_valid_document()) + "description: 2024-01-01\n", "detail", "date"),
    "not an object": ("- just\n- a list\n", "detail", "must be an object"),
    "an unknown key": (portable.dump_yaml(_valid_document(colour="red")), "detail", "'colour'"),
    "a later version": (portable.dump_yaml(_valid_document(version=2)), "version", "version 1"),
    "unknown agent": (portable.dump_yaml(_valid_document(agent="Nobody")), "agent", "No agent named 'Nobody'"),
    "unknown target": (portable.dump_yaml(_valid_document(target="Nothing")), "target", "No target named 'Nothing'"),
    "a bad scenario field": (portable.dump_yaml(_valid_document(direction="sideways")), "direction", "valid choice"),
    "a bad criterion": (portable.dump_yaml(_valid_document(criteria=[{"name": "x", "kind": "psychic"}])),
                        "criteria", "unknown kind 'psychic'"),
    "a bad step in path 2": (portable.dump_yaml(_valid_document(paths=[
        {"name": "fine", "script": [{"say": "hi"}]},
        {"name": "broken", "script": [{"say": "hi"}, {"expect": "(a)\\1"}]},
    ])), "paths", "path 2 (broken): script: step 2: \"expect\": RE2 does not support backreferences"),
    "two paths of one name": (portable.dump_yaml(_valid_document(paths=[
        {"name": "same", "script": [{"say": "a"}]}, {"name": "same", "script": [{"say": "b"}]},
    ])), "paths", "path 2: the name 'same' is path 1's too"),
    "too many paths": (portable.dump_yaml(_valid_document(paths=[
        {"name": f"p{i}", "script": [{"say": "hi"}]} for i in range(portable.MAX_PATHS + 1)])),
        "paths", f"At most {portable.MAX_PATHS} paths"),
    "too large": ("description: " + "x" * portable.MAX_YAML_BYTES + "\n", "detail", "larger than"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", BAD_IMPORTS)
def test_a_refused_import_says_why_and_writes_nothing(api, workspace, case):
    f.AgentFactory(workspace=workspace, name="Caller Zoë")
    f.TargetFactory(workspace=workspace, name="Bistro bot 🍷")
    text, field, words = BAD_IMPORTS[case]
    response = import_yaml(api, text)
    assert response.status_code == 400, response.content
    body = response.json()
    assert words in " ".join(body[field]) if isinstance(body[field], list) else words in body[field], body
    assert counts() == (0, 0)


ODD_SHAPES = [
    "name: null\nchannel: chat\nagent: Caller Zoë\ntarget: Bistro bot 🍷\n",
    "name: [1]\nchannel: 5\nagent: Caller Zoë\ntarget: Bistro bot 🍷\n",
    "agent: [x]\ntarget: {a: 1}\n",
    "paths: notalist\n",
    "paths: [1, 2]\n",
    "paths: [{name: {a: 1}}]\n",
    "paths:\n- name: x\n  script: notalist\n  criteria: {a: 1}\n  narrative: null\n",
    "criteria: {a: 1}\nmax_parallel_runs: abc\ninbound_window_seconds: 1e10\n",
    "description: " + "9" * 5000 + "\n",
    "version: true\n",
    "? - a\n: b\n",
    "!!binary aGVsbG8=\n",
    "---\n...\n",
    "\t\x00",
]


@pytest.mark.django_db
@pytest.mark.parametrize("text", ODD_SHAPES)
def test_odd_shapes_are_refused_never_a_server_error(api, workspace, text):
    f.AgentFactory(workspace=workspace, name="Caller Zoë")
    f.TargetFactory(workspace=workspace, name="Bistro bot 🍷")
    base = "" if text.startswith(("name:", "agent:", "!!", "---", "\t", "?")) else (
        "name: Odd\nchannel: chat\nagent: Caller Zoë\ntarget: Bistro bot 🍷\n")
    response = import_yaml(api, base + text)
    assert response.status_code == 400, response.content
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_the_valid_document_of_the_refusal_cases_imports(api, workspace):
    """The documents above differ from this one by the one thing each refuses."""
    f.AgentFactory(workspace=workspace, name="Caller Zoë")
    f.TargetFactory(workspace=workspace, name="Bistro bot 🍷")
    response = import_yaml(api, portable.dump_yaml(_valid_document()), content_type="text/yaml")
    assert response.status_code == 201, response.content
    assert counts() == (1, 2)


@pytest.mark.django_db
def test_import_takes_yaml_only_and_checks_replace(api, workspace):
    assert import_yaml(api, '{"name": "x"}', content_type="application/json").status_code == 415
    assert import_yaml(api, "name: x\n", replace=None).status_code == 400
    response = api.post("/api/v1/scenarios/import/?replace=maybe", data=b"name: x\n", content_type="application/yaml")
    assert response.status_code == 400 and response.json() == {"replace": ["Use true or false."]}


@pytest.mark.django_db
def test_another_workspaces_objects_are_not_found(api, workspace, other_workspace):
    theirs = rich_scenario(other_workspace)
    assert api.get(f"/api/v1/scenarios/{theirs.pk}/export/").status_code == 404
    botium = api.post(f"/api/v1/scenarios/{theirs.pk}/import-botium/",
                      data={"files": {"a.convo.txt": "#me\nhi\n#bot\nhello\n"}}, content_type="application/json")
    assert botium.status_code == 404
    assert api.post(f"/api/v1/runs/{f.RunFactory(path=theirs.paths.first()).pk}/save-as-path/").status_code == 404
    # Their agent and target, by name, are not this workspace's.
    response = import_yaml(api, portable.dump_yaml(_valid_document()))
    assert response.status_code == 400 and set(response.json()) == {"agent", "target"}
    assert theirs.paths.count() == 3 and Scenario.objects.filter(workspace=workspace).count() == 0


@pytest.mark.django_db
def test_a_viewer_cannot_import(client, workspace):
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    response = client.post("/api/v1/scenarios/import/", data=b"name: x\n", content_type="application/yaml")
    assert response.status_code == 403


# Botium -------------------------------------------------------------------------------------------

PIZZA_CONVO = """Order a margherita
A hungry customer orders a pizza
and says goodbye.

#begin
WAITFORBOTTIMEOUT 5000

#me
hello

#bot
welcome   to the PIZZA shop

#me
PAUSE 100
A margherita, please.

#bot
one margherita (large)
TEXT_CONTAINS_ANY $12.50|$13.00

#me
bye

#bot

#end
CLEAR_SCRIPTING_MEMORY
"""


def test_a_botium_convo_becomes_a_script():
    convo = portable.parse_botium_convo("orders/pizza.convo.txt", PIZZA_CONVO)
    assert convo["name"] == "Order a margherita"
    assert convo["narrative"] == "A hungry customer orders a pizza\nand says goodbye."
    assert convo["script"] == [
        {"say": "hello"},
        {"expect": r"(?i)welcome\s+to\s+the\s+PIZZA\s+shop"},
        {"pause_ms": 100},
        {"say": "A margherita, please."},
        {"expect": r"(?i)one\s+margherita\s+\(large\)"},
        {"expect": r"(?:\$12\.50|\$13\.00)"},
        {"say": "bye"},
        {"expect": r"\S"},
    ]
    # Botium's default matching: the text anywhere in the reply, case and spacing ignored.
    assert patterns.matches(convo["script"][1]["expect"], "Hi! Welcome to the pizza\nshop. What would you like?")
    assert not patterns.matches(convo["script"][1]["expect"], "Welcome to the burger shop")
    assert patterns.matches(convo["script"][4]["expect"], "ONE MARGHERITA (LARGE) coming up")
    assert not patterns.matches(convo["script"][4]["expect"], "one margherita large")  # brackets are literal
    # Without a name line, the file's name.
    assert portable.parse_botium_convo("dir/Greeting.convo.txt", "#me\nhi\n#bot\nhello")["name"] == "Greeting"


BAD_CONVOS = {
    "unknown section": ("Name\n#me\nhi\n#robot\nhello\n", "line 4", "unknown section '#robot'"),
    "include": ("Name\n#me\nhi\n#include PCONVO_BYE\n", "line 4", "#include"),
    "asserter": ("Name\n#me\nhi\n#bot\nhello\nBUTTONS Yes|No\n", "line 6", "BUTTONS"),
    "bad pause": ("Name\n#me\nPAUSE soon\nhi\n", "line 3", "PAUSE"),
    "empty me": ("Name\n#me\n\n#bot\nhello\n", "line 2", "nothing to say"),
    "no sections": ("Just a name\nand a description\n", None, "no #me or #bot"),
    "contains in me": ("Name\n#me\nTEXT_CONTAINS_ANY a|b\n", "line 3", "belongs in a #bot block"),
    # Botium's "must NOT contain": importing it as an expect would invert the test.
    "negated bot text": ("Name\n#me\nhi\n#bot\n\n!hello\n", "line 6", "'!hello': a message starting with ! is "
                                                                        "Botium's negation"),
    "negated me text": ("Name\n#me\n!hi there\n#bot\nhello\n", "line 3", "negation"),
    "negated upper case": ("Name\n#me\nhi\n#bot\n!HELLO\n", "line 5", "negation"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", BAD_CONVOS)
def test_a_malformed_convo_is_refused_naming_file_and_line(api, workspace, case):
    scenario = f.ScenarioFactory(workspace=workspace, criteria=[])
    text, line, words = BAD_CONVOS[case]
    files = {"good.convo.txt": "Good\n#me\nhi\n#bot\nhello\n", "bad.convo.txt": text}
    response = api.post(f"/api/v1/scenarios/{scenario.pk}/import-botium/", data={"files": files},
                        content_type="application/json")
    assert response.status_code == 400, response.content
    [message] = response.json()["files"]
    assert message.startswith("bad.convo.txt" + (f", {line}:" if line else ":")), message
    assert words in message
    assert scenario.paths.count() == 0  # the good file is not imported either


@pytest.mark.django_db
def test_botium_import_bounds_and_file_kinds(api, workspace):
    scenario = f.ScenarioFactory(workspace=workspace, criteria=[])
    url = f"/api/v1/scenarios/{scenario.pk}/import-botium/"

    def post(files):
        return api.post(url, data={"files": files}, content_type="application/json")

    too_many = post({f"c{i}.convo.txt": "#me\nhi\n" for i in range(portable.MAX_BOTIUM_FILES + 1)})
    assert too_many.status_code == 400 and "At most" in too_many.json()["files"][0]
    too_big = post({"big.convo.txt": "#me\n" + "x" * portable.MAX_BOTIUM_FILE_BYTES})
    assert too_big.status_code == 400 and "big.convo.txt" in too_big.json()["files"][0]
    utterances = post({"greetings.utterances.txt": "GREETING\nhi\nhello\n"})
    assert utterances.status_code == 400 and "only .convo.txt" in utterances.json()["files"][0]
    assert post({"skip-later.convo.txt": "#me\nhi\n"}).status_code == 400  # skipped, as Botium does: nothing left
    duplicate = post({"a.convo.txt": "Same\n#me\nhi\n", "b.convo.txt": "Same\n#me\nho\n"})
    assert duplicate.json()["files"] == ["b.convo.txt: the path name 'Same' is taken by a.convo.txt; rename the "
                                         "convo (its first line)."]
    f.PathFactory(scenario=scenario, name="Existing")
    existing = post({"c.convo.txt": "Existing\n#me\nhi\n"})
    assert existing.json()["files"] == ["c.convo.txt: the path name 'Existing' is taken by this scenario; rename "
                                        "the convo (its first line)."]
    assert api.post(url, data={"files": ["not", "a", "dict"]}, content_type="application/json").status_code == 400
    assert scenario.paths.count() == 1


@pytest.mark.django_db
def test_botium_files_upload_as_multipart(api, workspace):
    from django.core.files.uploadedfile import SimpleUploadedFile

    scenario = f.ScenarioFactory(workspace=workspace, criteria=[])
    response = api.post(f"/api/v1/scenarios/{scenario.pk}/import-botium/", data={"files": [
        SimpleUploadedFile("b.convo.txt", "Second\n#me\nhi\n#bot\nhello\n".encode()),
        SimpleUploadedFile("a.convo.txt", "\ufeffFirst\n#me\nhé\n".encode()),
    ]})
    assert response.status_code == 201, response.content
    assert [p["name"] for p in response.json()["paths"]] == ["First", "Second"]
    assert [p["script"] for p in response.json()["paths"]] == [[{"say": "hé"}],
                                                                [{"say": "hi"}, {"expect": "(?i)hello"}]]


def _uploads(count, *, name="c{}.convo.txt", size=None):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return [SimpleUploadedFile(name.format(i), (f"Convo {i}\n#me\nhi\n" if size is None else
                                                "#me\n" + "x" * size).encode()) for i in range(count)]


@pytest.mark.django_db
def test_multipart_file_counts_up_to_the_product_limit_and_beyond_answer_json(api, workspace):
    from django.conf import settings

    assert settings.DATA_UPLOAD_MAX_NUMBER_FILES == portable.MAX_BOTIUM_FILES + 1
    scenario = f.ScenarioFactory(workspace=workspace, criteria=[])
    url = f"/api/v1/scenarios/{scenario.pk}/import-botium/"
    # More than Django's default of 100, within the product's 500.
    imported = api.post(url, data={"files": _uploads(150)})
    assert imported.status_code == 201, imported.content[:300]
    assert scenario.paths.count() == 150
    scenario.paths.all().delete()
    for count in (portable.MAX_BOTIUM_FILES + 1, portable.MAX_BOTIUM_FILES + 2):
        refused = api.post(url, data={"files": _uploads(count)})
        assert refused.status_code == 400 and refused["Content-Type"] == "application/json", refused.content[:300]
        assert refused.json() == {"files": [f"At most {portable.MAX_BOTIUM_FILES} files at once."]}
    assert scenario.paths.count() == 0


@pytest.mark.django_db
def test_multipart_refuses_a_file_name_twice_and_a_body_too_large_unread(api, workspace):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test.client import encode_multipart

    scenario = f.ScenarioFactory(workspace=workspace, criteria=[])
    url = f"/api/v1/scenarios/{scenario.pk}/import-botium/"
    twice = api.post(url, data={"files": [SimpleUploadedFile("a.convo.txt", b"First\n#me\nhi\n"),
                                          SimpleUploadedFile("a.convo.txt", b"Second\n#me\nho\n")]})
    assert twice.status_code == 400 and twice.json() == {
        "files": ["a.convo.txt: sent twice; each file needs its own name."]}
    # Over the total, the files' own sizes refuse it once read…
    over = api.post(url, data={"files": _uploads(5, size=250_000)})
    assert over.status_code == 400 and "add up to more than 1,000,000 bytes" in over.json()["files"][0]
    # …and a body whose declared length is far beyond it is refused before any of it is read (the
    # test client's payload raises if read past what it holds).
    body = encode_multipart("xYz", {"files": _uploads(1)})
    declared = api.post(url, data=body, content_type="multipart/form-data; boundary=xYz",
                        CONTENT_LENGTH=str(5_000_000))
    assert declared.status_code == 400 and "add up to more than" in declared.json()["files"][0]
    assert scenario.paths.count() == 0


# Through the real stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="text1", beat=True)
    yield started
    started.stop()


PIZZA_REPLIES = {
    "hello": "Hi! Welcome to the Pizza Shop. What would you like?",
    "a margherita, please.": "One MARGHERITA (large) coming up: $12.50.",
    "bye": "Goodbye, enjoy!",
    "do you deliver?": "Only on weekdays.",
}


def pizza_bot():
    return FakeTarget(lambda message, n: (200, {"reply": PIZZA_REPLIES.get(message.strip().lower(), "Sorry?")}))


def ended(run_id, timeout=60) -> Run:
    return wait_for(lambda: (r := Run.objects.get(pk=run_id)).status in TERMINAL and r, timeout,
                    message=f"run {run_id} to end")


@pytest.mark.django_db(transaction=True)
def test_a_botium_folder_imports_and_passes_against_a_matching_bot(worker, api, workspace):
    bot = pizza_bot()
    try:
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
        files = {
            "convos/pizza.convo.txt": PIZZA_CONVO,
            "convos/delivery.convo.txt": "#me\nDo you deliver?\n\n#bot\nonly on WEEKDAYS\n",
            "convos/wrong.convo.txt": "Expects too much\n#me\nhello\n#bot\nwelcome to the burger shop\n",
        }
        response = api.post(f"/api/v1/scenarios/{scenario.pk}/import-botium/", data={"files": files},
                            content_type="application/json")
        assert response.status_code == 201, response.content
        paths = response.json()["paths"]
        assert [p["name"] for p in paths] == ["delivery", "Order a margherita", "Expects too much"]

        batch = api.post(f"/api/v1/scenarios/{scenario.pk}/run-all/", content_type="application/json")
        assert batch.status_code == 201, batch.content
        runs = {run["path"]: ended(run["id"]) for run in batch.json()["runs"]}
        verdicts = {path["name"]: (runs[path["id"]].status, runs[path["id"]].verdict) for path in paths}
        assert verdicts == {"delivery": ("completed", "passed"), "Order a margherita": ("completed", "passed"),
                            "Expects too much": ("completed", "failed")}
        sent = [request["body"]["text"] for request in bot.requests]
        assert "A margherita, please." in sent and "bye" in sent

        # The passing run saved as a path replays as a passing run itself.
        pizza_run = runs[paths[1]["id"]]
        saved = api.post(f"/api/v1/runs/{pizza_run.pk}/save-as-path/", data={"name": "Replay"},
                         content_type="application/json")
        assert saved.status_code == 201, saved.content
        assert [list(step)[0] for step in saved.json()["script"]] == [
            "say", "expect", "say", "expect", "say", "expect"]
        replay = api.post(f"/api/v1/paths/{saved.json()['id']}/run/", content_type="application/json")
        assert replay.status_code == 201, replay.content
        run = ended(replay.json()["id"])
        assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail
    finally:
        bot.close()


# Save as path --------------------------------------------------------------------------------------


def finished_run(workspace, *, status="completed", turns=True) -> Run:
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, criteria=[]), name="Booking",
                         narrative="A customer books a table.",
                         criteria=[{"name": "Confirms", "kind": "contains", "speaker": "target", "text": "booked"}])
    terminal = status in TERMINAL
    run = f.RunFactory(path=path, status=status, stage="done" if terminal else "queued",
                       verdict="passed" if status == "completed" else None,
                       failure_reason="error" if status == "failed" else "",
                       snapshot=run_services.snapshot_of(path))
    if turns:
        f.TurnFactory(run=run, seq=1, speaker="target", text="Hello, Bistro (Paris) — how can I help?", started_ms=0)
        f.TurnFactory(run=run, seq=2, speaker="caller", text="A table for two, please.", started_ms=900)
        f.TurnFactory(run=run, seq=3, speaker="target", text="Sorry, an error occurred.", started_ms=1500,
                      is_error=True)
        f.ToolInvocationFactory(run=run, seq=1, name="press_digit", arguments={"digits": "2#"}, at_ms=1800)
        f.TurnFactory(run=run, seq=4, speaker="target", text="Done:   you are booked   for 19:00.", started_ms=2000)
        f.ToolInvocationFactory(run=run, seq=2, name="end_call", arguments={}, at_ms=2500)
    return run


@pytest.mark.django_db
def test_save_as_path_turns_the_conversation_into_a_script(api, workspace):
    run = finished_run(workspace)
    response = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", content_type="application/json")
    assert response.status_code == 201, response.content
    path = response.json()
    assert path["scenario"] == str(run.scenario_id)
    assert path["name"] == f"Booking (saved from run {str(run.pk)[:8]})"
    assert path["narrative"] == "A customer books a table."
    assert path["criteria"] == [{"name": "Confirms", "kind": "contains", "speaker": "target", "text": "booked"}]
    assert path["script"] == [
        {"expect": r"(?i)Hello,\s+Bistro\s+\(Paris\)\s+—\s+how\s+can\s+I\s+help\?"},
        {"say": "A table for two, please."},
        {"press": "2#"},
        {"expect": r"(?i)Done:\s+you\s+are\s+booked\s+for\s+19:00\."},
        {"end_call": True},
    ]
    # The expectations find the words whatever their case and spacing, and only those words.
    assert patterns.matches(path["script"][3]["expect"], "done: YOU ARE BOOKED for 19:00. Bye!")
    assert not patterns.matches(path["script"][3]["expect"], "Done: you are booked for 20:00.")
    again = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", content_type="application/json")
    assert again.json()["name"] == f"Booking (saved from run {str(run.pk)[:8]}) (2)"
    clash = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", data={"name": "Booking"}, content_type="application/json")
    assert clash.status_code == 400 and clash.json() == {"name": ["The scenario already has a path named 'Booking'."]}
    assert Path.objects.filter(scenario_id=run.scenario_id).count() == 3


def another_save_takes(monkeypatch, run, name: str, *, before_the_check: bool) -> None:
    """Another request saves a path named ``name`` in the run's scenario (committed, so outside
    this save's savepoint) after this save picked its name and before it inserts. With
    ``before_the_check`` false, it lands after the serializer's uniqueness check too, so that
    only the unique constraint, at the INSERT, refuses the name."""
    from runs import save_as_path

    original = save_as_path.run_conversation
    taken: list[str] = []

    def racing(racing_run):
        if not taken:
            taken.append(name)
            f.PathFactory(scenario=run.scenario, name=name)
        return original(racing_run)

    monkeypatch.setattr(save_as_path, "run_conversation", racing)
    if not before_the_check:
        monkeypatch.setattr(PathSerializer, "_check_unique_constraints", lambda self, probe: None)


@pytest.mark.django_db
@pytest.mark.parametrize("before_the_check", [True, False])
def test_save_as_path_racing_another_save_picks_the_next_free_name(api, workspace, monkeypatch, before_the_check):
    run = finished_run(workspace)
    default = f"Booking (saved from run {str(run.pk)[:8]})"
    another_save_takes(monkeypatch, run, default, before_the_check=before_the_check)
    response = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == f"{default} (2)"
    assert sorted(Path.objects.filter(scenario_id=run.scenario_id).values_list("name", flat=True)) == [
        "Booking", default, f"{default} (2)"]


@pytest.mark.django_db
@pytest.mark.parametrize("before_the_check", [True, False])
def test_save_as_path_with_a_name_taken_meanwhile_is_a_400(api, workspace, monkeypatch, before_the_check):
    run = finished_run(workspace)
    another_save_takes(monkeypatch, run, "Mine", before_the_check=before_the_check)
    response = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", data={"name": "Mine"}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json() == {"name": ["The scenario already has a path named 'Mine'."]}


def clash_before(monkeypatch, method: str, *, make=None):
    """Another writer takes the name after the import's checks, just before its INSERT: the first
    time the path serializer's ``method`` runs, a path of the same name appears in the scenario."""
    original = getattr(PathSerializer, method)
    clashes: list[str] = []

    def racing(self, attrs):
        if not clashes:
            clashes.append(attrs["name"])
            (make or (lambda attrs: f.PathFactory(scenario=attrs["scenario"], name=attrs["name"])))(attrs)
        return original(self, attrs)

    monkeypatch.setattr(PathSerializer, method, racing)
    return clashes


@pytest.mark.django_db
def test_a_path_name_taken_at_the_insert_refuses_an_import_with_a_400(api, workspace, monkeypatch):
    scenario = rich_scenario(workspace)
    document = yaml.safe_load(export(api, scenario))
    document["paths"].append({"name": "Brand new", "script": [{"say": "hi"}]})
    clash_before(monkeypatch, "create", make=lambda attrs: f.PathFactory(scenario=attrs["scenario"], name="Brand new")
                 if attrs["name"] == "Brand new" else None)
    # The racing writer's path lands only when the import reaches "Brand new"; it is rolled back
    # with the import here (same transaction), which is what a committed one would not be.
    replaced = import_yaml(api, portable.dump_yaml(document), replace=True)
    assert replaced.status_code == 400, replaced.content
    assert "changed while it was being imported" in replaced.json()["detail"]
    clash_before(monkeypatch, "create")
    botium = api.post(f"/api/v1/scenarios/{scenario.pk}/import-botium/", content_type="application/json",
                      data={"files": {"a.convo.txt": "Brand new\n#me\nhi\n"}})
    assert botium.status_code == 400 and "added to the scenario while importing" in botium.json()["files"][0]
    assert counts() == (1, 3)


@pytest.mark.django_db
def test_a_scenario_of_the_imported_name_created_meanwhile_refuses_the_import(api, workspace, monkeypatch):
    from scenarios.portable import _ExactScenarioSerializer

    f.AgentFactory(workspace=workspace, name="Caller Zoë")
    f.TargetFactory(workspace=workspace, name="Bistro bot 🍷")
    original = _ExactScenarioSerializer.create

    def racing(self, validated_data):
        f.ScenarioFactory(workspace=workspace, name=validated_data["name"])  # the API or a page, meanwhile
        return original(self, validated_data)

    monkeypatch.setattr(_ExactScenarioSerializer, "create", racing)
    response = import_yaml(api, portable.dump_yaml(_valid_document()))
    assert response.status_code == 400 and "was created while importing" in response.json()["name"][0]
    assert Scenario.objects.filter(name="Imported").count() == 0 and Path.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("status,turns,words", [
    ("pending", False, "not finished"),
    ("completed", False, "no turns"),
])
def test_save_as_path_needs_a_finished_run_with_turns(api, workspace, status, turns, words):
    run = finished_run(workspace, status=status, turns=turns)
    response = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", content_type="application/json")
    assert response.status_code == 400 and words in response.json()["detail"]
    assert Path.objects.count() == 1


@pytest.mark.django_db
def test_a_failed_or_cancelled_run_with_turns_saves_too(api, workspace):
    for status in ("failed", "cancelled"):
        run = finished_run(workspace, status=status)
        response = api.post(f"/api/v1/runs/{run.pk}/save-as-path/", content_type="application/json")
        assert response.status_code == 201, response.content


@pytest.mark.django_db
def test_the_run_page_button_saves_and_opens_the_new_path(member_client, workspace):
    run = finished_run(workspace)
    page = member_client.get(f"/runs/{run.pk}/").content.decode()
    assert f'hx-post="/runs/{run.pk}/save-as-path/"' in page
    assert 'hx-disabled-elt="this"' in page  # a double click sends one request
    response = member_client.post(f"/runs/{run.pk}/save-as-path/")
    path = Path.objects.get(name__startswith="Booking (saved")
    assert response.status_code == 302 and response["Location"] == f"/paths/{path.pk}/edit/"
    htmx = member_client.post(f"/runs/{run.pk}/save-as-path/", HTTP_HX_REQUEST="true")
    assert htmx.status_code == 204 and htmx["HX-Redirect"].endswith("/edit/")
    edit = member_client.get(response["Location"]).content.decode()
    assert "Saved as the path" in edit and "you\\\\s+are\\\\s+booked" in edit.replace("&quot;", '"')


@pytest.mark.django_db
def test_the_button_is_disabled_until_the_run_has_ended_with_turns(member_client, workspace):
    pending = finished_run(workspace, status="pending", turns=False)
    page = member_client.get(f"/runs/{pending.pk}/").content.decode()
    assert 'disabled data-action="save-as-path"' in page and "Available once the run has ended." in page
    refused = member_client.post(f"/runs/{pending.pk}/save-as-path/", follow=True)
    assert "has not finished yet" in refused.content.decode()
    assert Path.objects.count() == 1


@pytest.mark.django_db
def test_viewers_see_no_button_and_cannot_save(client, workspace):
    run = finished_run(workspace)
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    assert 'data-action="save-as-path"' not in client.get(f"/runs/{run.pk}/").content.decode()
    assert client.post(f"/runs/{run.pk}/save-as-path/").status_code == 403
    assert Path.objects.count() == 1


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        server = DaphneServer(redis_url=test_redis_url)
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_save_as_path_in_a_real_browser(web):
    workspace = f.WorkspaceFactory()
    user = f.UserFactory(username="saver")
    f.MembershipFactory(workspace=workspace, user=user, role="owner")
    run = finished_run(workspace)
    with chromium() as browser:
        page = signed_in_page(browser, base_url=web.url, username="saver", password="correct horse battery staple")
        page.goto(f"/runs/{run.pk}/")
        page.click("button[data-action=save-as-path]")
        page.wait_for_url("**/paths/*/edit/")
        path = Path.objects.get(name__startswith="Booking (saved")
        assert page.url.endswith(f"/paths/{path.pk}/edit/")
        assert "Saved as the path" in page.content()
