"""The authoring pages: agents, functions, targets, scenarios and paths, the layout and the switcher.

Every flow goes through the real views, forms and templates with the test client; only the
background sync of custom functions is replaced (it belongs to scenarios/services.py, and it would
queue a Celery task).
"""

import json
import re

import pytest
from django.urls import reverse

from assure.tenancy import SESSION_KEY
from scenarios import services
from scenarios.models import Agent, CustomFunction, Path, Scenario, Target
from tests import factories as f

pytestmark = pytest.mark.django_db

SYNCED, PENDING, ERROR = (CustomFunction.SyncStatus.SYNCED, CustomFunction.SyncStatus.PENDING,
                          CustomFunction.SyncStatus.ERROR)


@pytest.fixture(autouse=True)
def sync_requests(monkeypatch):
    """Records the functions whose sync the pages requested, instead of queueing it."""
    requested = []
    monkeypatch.setattr(
        services, "function_request_sync", lambda *, function: requested.append(function.pk), raising=False
    )
    return requested


@pytest.fixture
def viewer_client(client, workspace):
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    return client


def objects_in(workspace):
    """One of each authoring object in ``workspace``."""
    scenario = f.ScenarioFactory(workspace=workspace)
    return {
        "agent": scenario.agent,
        "function": f.CustomFunctionFactory(agent=scenario.agent),
        "target": scenario.target,
        "scenario": scenario,
        "path": f.PathFactory(scenario=scenario),
    }


def object_urls(o):
    """Every URL that shows, edits or deletes one object (by the object it names)."""
    return [
        f"/agents/{o['agent'].pk}/",
        f"/agents/{o['agent'].pk}/edit/",
        f"/agents/{o['agent'].pk}/delete/",
        f"/agents/{o['agent'].pk}/functions/new/",
        f"/functions/{o['function'].pk}/edit/",
        f"/functions/{o['function'].pk}/delete/",
        f"/targets/{o['target'].pk}/edit/",
        f"/targets/{o['target'].pk}/delete/",
        f"/scenarios/{o['scenario'].pk}/edit/",
        f"/scenarios/{o['scenario'].pk}/delete/",
        f"/scenarios/{o['scenario'].pk}/paths/new/",
        f"/paths/{o['path'].pk}/edit/",
        f"/paths/{o['path'].pk}/delete/",
    ]


LIST_AND_NEW_URLS = ["/agents/", "/agents/new/", "/targets/", "/targets/new/", "/scenarios/", "/scenarios/new/"]


def text_of(response) -> str:
    return response.content.decode()


def field_errors(response, field) -> list[str]:
    form = response.context["form"]
    return form.errors.get(field, [])


def agent_data(**overrides):
    data = {
        "name": "Polite caller", "instructions": "You are a polite customer.", "language": "en-US",
        "voice_provider": "ElevenLabs", "voice": "", "max_duration_seconds": "300", "end_conditions": "",
        "outbound_numbers": "+14155550123\n+14155550124", "llm_base_url": "", "llm_model": "", "llm_api_key": "",
    }
    return {**data, **overrides}


def function_data(**overrides):
    data = {
        "name": "lookup_order", "description": "Looks up an order.",
        "parameters": json.dumps({"type": "object", "properties": {"id": {"type": "string"}}}),
        "url": "https://hooks.example.com/order", "secret": "",
    }
    return {**data, **overrides}


def target_data(**overrides):
    data = {
        "name": "Support bot", "channel": "chat", "kind": "http_json", "url": "https://bot.example.com/chat",
        "phone_number": "", "headers": "", "request_template": json.dumps({"text": "{{message}}"}),
        "response_path": "$.reply", "model": "",
    }
    return {**data, **overrides}


def scenario_data(agent, target, **overrides):
    data = {
        "name": "Book a table", "description": "A customer books a table.", "channel": "chat",
        "direction": "outbound", "inbound_window_seconds": "300", "agent": str(agent.pk), "target": str(target.pk),
        "max_parallel_runs": "", "criteria": json.dumps([{"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}]),
    }
    return {**data, **overrides}


def path_data(**overrides):
    data = {
        "name": "Party of two", "narrative": "Wants a table for two tonight.",
        "script": json.dumps([{"say": "Hi"}, {"expect": "(?i)how many"}, {"say": "Two"}, {"end_call": True}]),
        "criteria": "",
    }
    return {**data, **overrides}


# Layout -------------------------------------------------------------------------------------------


def test_home_sends_signed_in_users_to_scenarios_and_others_to_sign_in(client, member):
    assert client.get("/").url.startswith("/login/")
    client.force_login(member)
    response = client.get("/")
    assert response.status_code == 302 and response.url == "/scenarios/"


@pytest.mark.parametrize("url", LIST_AND_NEW_URLS + ["/agents/00000000-0000-0000-0000-000000000000/"])
def test_pages_need_a_signed_in_user(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_every_page_loads_for_a_member(member_client, workspace):
    o = objects_in(workspace)
    for url in LIST_AND_NEW_URLS + object_urls(o):
        response = member_client.get(url)
        assert response.status_code == 200, url


def test_layout_has_the_navigation_marking_the_current_section(member_client, workspace):
    o = objects_in(workspace)
    page = text_of(member_client.get(f"/functions/{o['function'].pk}/edit/"))
    nav = re.search(r'<nav class="sidenav".*?</nav>', page, re.S).group(0)
    labels = re.findall(r">([^<>]+)</a>", nav)
    assert labels == ["Scenarios", "Queue", "Test results", "Agents", "Phone numbers", "Targets", "Admin", "API docs"]
    assert re.findall(r'href="([^"]+)" aria-current="page"', nav) == ["/agents/"]
    nav = re.search(r'<nav class="sidenav".*?</nav>', text_of(member_client.get(f"/paths/{o['path'].pk}/edit/")), re.S).group(0)
    assert re.findall(r'href="([^"]+)" aria-current="page"', nav) == ["/scenarios/"]


def test_staff_links_only_for_staff(client, workspace):
    user = f.UserFactory(is_staff=False)
    f.MembershipFactory(workspace=workspace, user=user, role="member")
    client.force_login(user)
    page = text_of(client.get("/scenarios/"))
    assert 'href="/agents/"' in page and 'href="/admin/"' not in page and 'href="/api/docs/"' not in page


def test_layout_loads_htmx_locally_and_gives_it_the_csrf_token(member_client):
    page = text_of(member_client.get("/agents/"))
    assert re.search(r'<script src="/static/vendor/htmx\.min\.js"', page)
    assert not re.search(r'src="(https?:)?//', page), "nothing may load from another host"
    assert re.search(r'<body hx-headers=\'\{"X-CSRFToken": "[^"]+"\}\'', page)
    assert '<meta name="csrf-token"' in page
    assert 'action="/logout/"' in page and "Sign out" in page


def test_the_vendored_htmx_is_version_2():
    from django.contrib.staticfiles import finders

    path = finders.find("vendor/htmx.min.js")
    assert path, "static/vendor/htmx.min.js is missing"
    source = open(path, encoding="utf-8").read()
    assert 'version:"2.' in source


def test_messages_show_at_the_top_of_the_content_as_status(member_client):
    response = member_client.post("/agents/new/", agent_data(), follow=True)
    page = text_of(response)
    assert re.search(r'<div class="messages" role="status">\s*<p class="banner banner-ok">Agent “Polite caller” created.', page)


# Workspace switcher --------------------------------------------------------------------------------


def test_a_single_workspace_user_sees_the_name_and_no_switcher(member_client, workspace):
    page = text_of(member_client.get("/agents/"))
    assert f'<span class="workspace-name">{workspace.name}</span>' in page
    assert 'name="workspace"' not in page


def test_the_switcher_switches_between_the_users_own_workspaces_only(member_client, member, workspace, other_workspace):
    third = f.WorkspaceFactory(name="Zeta")
    f.MembershipFactory(workspace=third, user=member, role="member")
    f.AgentFactory(workspace=third, name="Zeta caller")
    page = text_of(member_client.get("/agents/"))
    assert 'action="/workspace/switch/"' in page
    assert str(third.pk) in page and str(other_workspace.pk) not in page

    response = member_client.post("/workspace/switch/", {"workspace": str(third.pk), "next": f"/agents/{third.pk}/"})
    assert response.status_code == 302 and response.url == "/agents/"
    assert member_client.session[SESSION_KEY] == str(third.pk)
    assert "Zeta caller" in text_of(member_client.get("/agents/"))

    for foreign in (str(other_workspace.pk), "not-a-uuid"):
        response = member_client.post("/workspace/switch/", {"workspace": foreign, "next": "/agents/"})
        assert response.status_code == 404
    assert member_client.session[SESSION_KEY] == str(third.pk)
    assert member_client.get("/workspace/switch/").status_code == 405


def test_the_switcher_does_not_redirect_off_site(member_client, workspace):
    response = member_client.post("/workspace/switch/", {"workspace": str(workspace.pk), "next": "https://evil.example/"})
    assert response.url == "/"


# Agents ------------------------------------------------------------------------------------------------


def test_create_edit_and_delete_an_agent(member_client, workspace, other_workspace):
    response = member_client.post("/agents/new/", agent_data(llm_api_key="sk-secret"))
    agent = Agent.objects.get(name="Polite caller")
    assert response.status_code == 302 and response.url == f"/agents/{agent.pk}/"
    assert agent.workspace == workspace
    assert agent.outbound_numbers == ["+14155550123", "+14155550124"]
    assert agent.llm_api_key == "sk-secret"

    page = text_of(member_client.get(f"/agents/{agent.pk}/edit/"))
    assert "sk-secret" not in page and "+14155550123\n+14155550124" in page
    response = member_client.post(f"/agents/{agent.pk}/edit/", agent_data(name="Grumpy caller", max_duration_seconds="120"))
    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.name, agent.max_duration_seconds, agent.llm_api_key) == ("Grumpy caller", 120, "sk-secret")
    assert "sk-secret" not in text_of(member_client.get(f"/agents/{agent.pk}/"))

    response = member_client.post(f"/agents/{agent.pk}/delete/")
    assert response.status_code == 302 and response.url == "/agents/"
    assert not Agent.objects.filter(pk=agent.pk).exists()


def test_a_rejected_edit_keeps_the_stored_name_in_the_heading(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace, name="Polite caller")
    response = member_client.post(f"/agents/{agent.pk}/edit/", agent_data(name="", language="english"))
    assert response.status_code == 200
    assert "<h1>Edit agent “Polite caller”</h1>" in text_of(response)
    assert field_errors(response, "language") == ["Use a BCP 47 language tag such as en-US or es-MX."]
    agent.refresh_from_db()
    assert agent.name == "Polite caller" and agent.language == "en-US"


def test_a_bad_outbound_number_shows_the_validators_message_and_writes_nothing(member_client):
    response = member_client.post("/agents/new/", agent_data(outbound_numbers="+14155550123\n0800 123"))
    assert response.status_code == 200
    errors = field_errors(response, "outbound_numbers")
    assert errors and errors[0].startswith("number 2: '0800 123' is not an E.164 phone number")
    assert "number 2: &#x27;0800 123&#x27; is not an E.164 phone number" in text_of(response)
    assert not Agent.objects.exists()


def test_a_duplicate_agent_name_is_a_field_error_not_a_crash(member_client, workspace, other_workspace):
    f.AgentFactory(workspace=workspace, name="Polite caller")
    f.AgentFactory(workspace=other_workspace, name="Other name")
    response = member_client.post("/agents/new/", agent_data())
    assert field_errors(response, "name") == ["An agent with this name already exists in this workspace."]
    assert not response.context["form"].non_field_errors()
    # The same name in another workspace is no clash.
    assert member_client.post("/agents/new/", agent_data(name="Other name")).status_code == 302


def test_deleting_an_agent_in_use_names_the_scenarios_and_keeps_it(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace, name="Refund flow")
    agent = scenario.agent
    page = text_of(member_client.get(f"/agents/{agent.pk}/delete/"))
    assert "Refund flow" in page and 'class="btn danger"' not in page
    response = member_client.post(f"/agents/{agent.pk}/delete/")
    assert response.status_code == 409
    page = text_of(response)
    assert "Not deleted" in page and "Refund flow" in page
    assert Agent.objects.filter(pk=agent.pk).exists()


def test_deleting_a_target_in_use_names_the_scenarios_and_keeps_it(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace, name="Refund flow")
    response = member_client.post(f"/targets/{scenario.target.pk}/delete/")
    assert response.status_code == 409 and "Refund flow" in text_of(response)
    assert Target.objects.filter(pk=scenario.target.pk).exists()


# Custom functions --------------------------------------------------------------------------------------


def test_create_edit_and_delete_a_function_request_a_sync(member_client, workspace, sync_requests):
    agent = f.AgentFactory(workspace=workspace)
    response = member_client.post(f"/agents/{agent.pk}/functions/new/", function_data(secret="s3cret"))
    function = CustomFunction.objects.get(name="lookup_order")
    assert response.status_code == 302 and response.url == f"/agents/{agent.pk}/"
    assert (function.workspace, function.agent, function.secret) == (workspace, agent, "s3cret")
    assert sync_requests == [function.pk]

    page = text_of(member_client.get(f"/functions/{function.pk}/edit/"))
    assert "s3cret" not in page and 'type="password"' in page
    response = member_client.post(f"/functions/{function.pk}/edit/", function_data(url="https://hooks.example.com/v2"))
    assert response.status_code == 302
    function.refresh_from_db()
    assert (function.url, function.secret) == ("https://hooks.example.com/v2", "s3cret")
    assert sync_requests == [function.pk, function.pk]

    member_client.post(f"/functions/{function.pk}/edit/", function_data(secret="n3w"))
    function.refresh_from_db()
    assert function.secret == "n3w"

    response = member_client.post(f"/functions/{function.pk}/delete/")
    assert response.status_code == 302 and response.url == f"/agents/{agent.pk}/"
    assert not CustomFunction.objects.exists()


@pytest.mark.parametrize("parameters, message", [
    ('{"type": "array"}', 'Function parameters must be a JSON Schema with "type": "object".'),
    ('{"type": 5}', "Not a valid JSON Schema at type:"),
    ("{not json", "Not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)."),
])
def test_bad_function_parameters_show_the_validators_message(member_client, workspace, sync_requests, parameters, message):
    agent = f.AgentFactory(workspace=workspace)
    response = member_client.post(f"/agents/{agent.pk}/functions/new/", function_data(parameters=parameters))
    assert response.status_code == 200
    assert field_errors(response, "parameters")[0].startswith(message)
    assert not CustomFunction.objects.exists() and sync_requests == []


def test_a_bad_function_name_and_url_show_next_to_their_fields(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    response = member_client.post(f"/agents/{agent.pk}/functions/new/", function_data(name="1 bad", url="ftp://x"))
    assert field_errors(response, "name")[0].startswith("Use 1–64 letters")
    assert field_errors(response, "url") == ["Must be a URL starting with http:// or https://."]
    assert not CustomFunction.objects.exists()


# Functions panel -------------------------------------------------------------------------------------


def panel(response) -> str:
    return re.search(r'<section id="functions-panel".*?</section>', text_of(response), re.S).group(0)


def test_the_panel_is_green_with_no_functions_or_all_synced(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    html = panel(member_client.get(f"/agents/{agent.pk}/"))
    assert 'class="banner banner-ok"' in html and "All functions synced" in html and "No custom functions" in html
    f.CustomFunctionFactory(agent=agent, sync_status=SYNCED)
    html = panel(member_client.get(f"/agents/{agent.pk}/"))
    assert "All functions synced" in html and 'id="retry-sync"' not in html and "hx-trigger" not in html


def test_the_panel_is_amber_while_functions_are_pending_and_polls(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    f.CustomFunctionFactory(agent=agent, sync_status=SYNCED)
    f.CustomFunctionFactory.create_batch(2, agent=agent, sync_status=PENDING)
    html = panel(member_client.get(f"/agents/{agent.pk}/"))
    assert 'class="banner banner-warn' in html and "2 functions pending sync" in html
    assert 'id="retry-sync"' in html and 'hx-trigger="every 3s"' in html
    assert html.count('class="pill sync-pending"') == 2 and html.count('class="pill sync-synced"') == 1


def test_the_panel_is_red_with_the_last_error(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    f.CustomFunctionFactory(agent=agent, sync_status=PENDING)
    f.CustomFunctionFactory(agent=agent, name="old_fail", sync_status=ERROR, sync_error="timed out")
    latest = f.CustomFunctionFactory(agent=agent, name="book_slot", sync_status=ERROR, sync_error="HTTP 500 from the webhook")
    html = panel(member_client.get(f"/agents/{agent.pk}/"))
    assert 'class="banner banner-error' in html and "2 functions failed to sync" in html
    assert f"Last error ({latest.name}): HTTP 500 from the webhook" in html
    assert 'id="retry-sync"' in html and "hx-trigger" not in html


def test_retry_requests_a_sync_for_every_function_not_synced(member_client, workspace, sync_requests):
    agent = f.AgentFactory(workspace=workspace)
    f.CustomFunctionFactory(agent=agent, sync_status=SYNCED)
    pending = f.CustomFunctionFactory(agent=agent, sync_status=PENDING)
    failed = f.CustomFunctionFactory(agent=agent, sync_status=ERROR, sync_error="refused")
    f.CustomFunctionFactory(sync_status=ERROR)  # another agent's
    response = member_client.post(f"/agents/{agent.pk}/functions/sync/")
    assert response.status_code == 302 and response.url == f"/agents/{agent.pk}/"
    assert sorted(sync_requests) == sorted([pending.pk, failed.pk])


def test_retry_from_htmx_answers_with_the_panel_fragment(member_client, workspace, sync_requests):
    agent = f.AgentFactory(workspace=workspace)
    failed = f.CustomFunctionFactory(agent=agent, sync_status=ERROR, sync_error="refused")
    response = member_client.post(
        f"/agents/{agent.pk}/functions/sync/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="functions-panel"
    )
    assert response.status_code == 200 and sync_requests == [failed.pk]
    body = text_of(response)
    assert body.lstrip().startswith("<section id=\"functions-panel\"")
    assert "<html" not in body and "<nav" not in body
    # htmx polling asks the agent page for the panel alone.
    response = member_client.get(f"/agents/{agent.pk}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="functions-panel")
    assert '<section id="functions-panel"' in text_of(response) and "<nav" not in text_of(response)


# Targets ------------------------------------------------------------------------------------------------


def test_create_edit_and_delete_a_target(member_client, workspace):
    response = member_client.post("/targets/new/", target_data(headers='{"Authorization": "Bearer t0ken"}'))
    assert response.status_code == 302 and response.url == "/targets/"
    target = Target.objects.get(name="Support bot")
    assert target.workspace == workspace and target.headers == {"Authorization": "Bearer t0ken"}

    page = text_of(member_client.get(f"/targets/{target.pk}/edit/"))
    assert "t0ken" not in page and "leave blank to keep the current headers" in page
    assert "t0ken" not in text_of(member_client.get("/targets/"))
    member_client.post(f"/targets/{target.pk}/edit/", target_data(response_path="$.data.text"))
    target.refresh_from_db()
    assert target.response_path == "$.data.text" and target.headers == {"Authorization": "Bearer t0ken"}
    member_client.post(f"/targets/{target.pk}/edit/", target_data(headers="{}"))
    target.refresh_from_db()
    assert target.headers == {}

    response = member_client.post(f"/targets/{target.pk}/delete/")
    assert response.status_code == 302 and not Target.objects.exists()


def test_switching_kind_drops_the_fields_the_new_kind_does_not_use(member_client, workspace):
    response = member_client.post("/targets/new/", target_data(
        name="Front desk", channel="voice", kind="phone", phone_number="+14155550100", headers='{"X-Key": "k"}',
    ))
    assert response.status_code == 302
    target = Target.objects.get(name="Front desk")
    assert (target.phone_number, target.url, target.request_template, target.response_path, target.headers) == (
        "+14155550100", "", {}, "", {}
    )


def test_the_target_form_marks_fields_by_kind(member_client):
    page = text_of(member_client.get("/targets/new/"))
    assert re.search(r'name="phone_number"[^>]*data-show-when="kind=phone"', page) or \
        re.search(r'data-show-when="kind=phone"[^>]*name="phone_number"', page)
    assert 'data-show-when="kind=openai_chat,http_json,websocket"' in page


@pytest.mark.parametrize("data, field, message", [
    ({"channel": "voice", "kind": "phone", "phone_number": "4155550100"}, "phone_number",
     "'4155550100' is not an E.164 phone number"),
    ({"channel": "voice", "kind": "phone", "phone_number": ""}, "phone_number",
     "A phone target needs the number to call"),
    ({"request_template": ""}, "request_template", "An http_json target needs a request template"),
    ({"request_template": '{"text": "hi"}'}, "request_template", "The request template must place {{message}}"),
    ({"response_path": "reply"}, "response_path", "Must be a JSONPath starting with $"),
    ({"channel": "voice", "kind": "http_json"}, "kind", "A voice target's kind is one of: phone, demo, rehearsal."),
    ({"kind": "openai_chat", "model": ""}, "model", "An openai_chat target needs the model name"),
    ({"kind": "websocket", "url": "https://x.example"}, "url", "Must be a URL starting with ws:// or wss://."),
    ({"headers": '{"Bad Header": "x"}'}, "headers", "'Bad Header' is not a valid HTTP header name."),
    ({"headers": "{oops"}, "headers", "Not valid JSON"),
    ({"headers": '["x"]'}, "headers", "Must be a JSON object."),
    ({"request_template": '["x"]'}, "request_template", "Must be a JSON object."),
])
def test_bad_target_input_shows_the_message_next_to_the_field(member_client, data, field, message):
    response = member_client.post("/targets/new/", target_data(**data))
    assert response.status_code == 200
    assert any(error.startswith(message) for error in field_errors(response, field)), response.context["form"].errors
    assert not Target.objects.exists()


# Scenarios --------------------------------------------------------------------------------------------


def test_create_edit_and_delete_a_scenario(member_client, workspace):
    agent, target = f.AgentFactory(workspace=workspace), f.TargetFactory(workspace=workspace)
    response = member_client.post("/scenarios/new/", scenario_data(agent, target))
    scenario = Scenario.objects.get(name="Book a table")
    assert response.status_code == 302 and response.url == f"/scenarios/{scenario.pk}/"
    assert (scenario.workspace, scenario.agent, scenario.target) == (workspace, agent, target)
    assert scenario.criteria == [{"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}]

    response = member_client.post(f"/scenarios/{scenario.pk}/edit/", scenario_data(agent, target, max_parallel_runs="2", criteria=""))
    assert response.status_code == 302 and response.url == f"/scenarios/{scenario.pk}/"
    scenario.refresh_from_db()
    assert (scenario.max_parallel_runs, scenario.criteria) == (2, [])

    f.PathFactory(scenario=scenario)
    page = text_of(member_client.get(f"/scenarios/{scenario.pk}/delete/"))
    assert "Its 1 path will be deleted with it." in page
    response = member_client.post(f"/scenarios/{scenario.pk}/delete/")
    assert response.status_code == 302 and response.url == "/scenarios/"
    assert not Scenario.objects.exists() and not Path.objects.exists()


def test_deleting_a_scenario_keeps_its_past_runs(member_client, workspace):
    run = f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)))
    response = member_client.post(f"/scenarios/{run.scenario_id}/delete/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert (run.scenario_id, run.path_id) == (None, None)


def test_the_scenario_list_shows_the_workspaces_scenarios(member_client, workspace, other_workspace):
    mine = f.ScenarioFactory(workspace=workspace, name="Mine")
    f.PathFactory.create_batch(2, scenario=mine)
    f.ScenarioFactory(workspace=other_workspace, name="Theirs")
    response = member_client.get("/scenarios/")
    assert list(response.context["scenarios"]) == [mine]
    page = text_of(response)
    assert f'href="/scenarios/{mine.pk}/"' in page and "Theirs" not in page
    assert re.search(r'<td class="num">2</td>', page)


def test_a_session_pointing_at_another_workspace_falls_back_to_the_users_own(member_client, workspace, other_workspace):
    f.ScenarioFactory(workspace=other_workspace, name="Theirs")
    session = member_client.session
    session[SESSION_KEY] = str(other_workspace.pk)
    session.save()
    response = member_client.get("/scenarios/")
    assert response.context["current_workspace"] == workspace and "Theirs" not in text_of(response)


def test_empty_states_tell_a_new_user_what_to_do(member_client, workspace):
    page = text_of(member_client.get("/scenarios/"))
    assert "Create an agent and a target, then a scenario" in page
    assert 'href="/agents/new/"' in page and 'href="/targets/new/"' in page
    assert 'class="empty"' in text_of(member_client.get("/agents/"))
    assert "Built-in demo" in text_of(member_client.get("/targets/"))
    page = text_of(member_client.get("/scenarios/new/"))
    assert "A scenario needs an agent" in page
    f.AgentFactory(workspace=workspace)
    f.TargetFactory(workspace=workspace)
    page = text_of(member_client.get("/scenarios/"))
    assert "You have an agent" in page and 'href="/scenarios/new/"' in page


def test_another_workspaces_agent_and_target_cannot_be_chosen(member_client, workspace, other_workspace):
    agent, target = f.AgentFactory(workspace=workspace), f.TargetFactory(workspace=workspace)
    their_agent, their_target = f.AgentFactory(workspace=other_workspace), f.TargetFactory(workspace=other_workspace)
    page = text_of(member_client.get("/scenarios/new/"))
    assert str(agent.pk) in page and str(their_agent.pk) not in page and str(their_target.pk) not in page
    response = member_client.post("/scenarios/new/", scenario_data(their_agent, their_target))
    assert field_errors(response, "agent") and field_errors(response, "target")
    response = member_client.post("/scenarios/new/", scenario_data(agent, their_target))
    assert field_errors(response, "target")[0].startswith("Select a valid choice")
    assert not Scenario.objects.exists()


def test_a_channel_mismatch_is_a_field_error(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    phone = f.TargetFactory(workspace=workspace, channel="voice", kind="phone", phone_number="+14155550100", url="")
    response = member_client.post("/scenarios/new/", scenario_data(agent, phone))
    assert field_errors(response, "target") == ["This is a chat scenario; pick a chat target."]
    assert not Scenario.objects.exists()


def test_a_chat_scenario_is_always_outbound(member_client, workspace):
    agent, target = f.AgentFactory(workspace=workspace), f.TargetFactory(workspace=workspace)
    response = member_client.post("/scenarios/new/", scenario_data(agent, target, direction="inbound"))
    assert response.status_code == 302
    assert Scenario.objects.get().direction == "outbound"


@pytest.mark.parametrize("criteria, message", [
    ('[{"name": "greets", "kind": "contains", "speaker": "bot", "text": "hi"}]',
     "criterion 1 (greets): contains needs 'speaker': \"caller\" or \"target\"."),
    ('[{"name": "a", "kind": "ended_by", "speaker": "caller"}, {"name": "b", "kind": "telepathy"}]',
     "criterion 2 (b): unknown kind 'telepathy'"),
    ('{"name": "x"}', "Criteria must be a list."),
])
def test_bad_criteria_show_the_validators_message(member_client, workspace, criteria, message):
    agent, target = f.AgentFactory(workspace=workspace), f.TargetFactory(workspace=workspace)
    response = member_client.post("/scenarios/new/", scenario_data(agent, target, criteria=criteria))
    assert field_errors(response, "criteria")[0].startswith(message)
    assert not Scenario.objects.exists()


def test_the_criteria_field_carries_the_kinds_for_the_editor(member_client, workspace):
    page = text_of(member_client.get("/scenarios/new/"))
    match = re.search(r'data-editor="criteria" data-kinds="([^"]+)"', page) or re.search(r'data-kinds="([^"]+)"[^>]*data-editor="criteria"', page)
    import html
    kinds = json.loads(html.unescape(match.group(1)))
    assert kinds["max_latency_ms"] == {"required": ["percentile", "ms"], "optional": []}
    assert kinds["contains"]["optional"] == ["case_sensitive"]
    assert re.search(r'<script src="/static/js/editors\.js"', page)


# Paths -----------------------------------------------------------------------------------------------------


def test_create_edit_and_delete_a_path(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    response = member_client.post(f"/scenarios/{scenario.pk}/paths/new/", path_data())
    path = Path.objects.get(name="Party of two")
    assert response.status_code == 302 and response.url == f"/scenarios/{scenario.pk}/"
    assert (path.workspace, path.scenario, path.script[-1], path.criteria) == (workspace, scenario, {"end_call": True}, [])

    page = text_of(member_client.get(f"/paths/{path.pk}/edit/"))
    assert "&quot;end_call&quot;: true" in page and 'data-editor="script"' in page
    response = member_client.post(f"/paths/{path.pk}/edit/", path_data(script="", narrative="Wants a table for four."))
    assert response.status_code == 302 and response.url == f"/scenarios/{scenario.pk}/"
    path.refresh_from_db()
    assert (path.script, path.narrative) == ([], "Wants a table for four.")

    response = member_client.post(f"/paths/{path.pk}/delete/")
    assert response.status_code == 302 and response.url == f"/scenarios/{scenario.pk}/"
    assert not Path.objects.exists()


@pytest.mark.parametrize("script, message", [
    ('[{"say": "Hi"}, {"press": "12x"}]', 'step 2: "press" needs digits to press'),
    ('[{"end_call": true}, {"say": "Hi"}]', 'step 1: "end_call" must be the last step.'),
    ('[{"say": "Hi"}, {"pause_ms": "soon"}]', 'step 2: "pause_ms" needs a whole number of milliseconds'),
    ('[{"say": "Hi"}, {"sing": "la"}]', "step 2: unknown step 'sing'"),
    ('[{"say": "Hi", "press": "1"}]', "step 1: each step is an object with one key"),
])
def test_a_bad_script_step_shows_its_number_and_writes_nothing(member_client, workspace, script, message):
    scenario = f.ScenarioFactory(workspace=workspace)
    response = member_client.post(f"/scenarios/{scenario.pk}/paths/new/", path_data(script=script))
    assert response.status_code == 200
    assert field_errors(response, "script")[0].startswith(message)
    assert re.search(r'<ul class="field-errors" id="id_script_error"><li>step \d', text_of(response))
    assert not Path.objects.exists()


def test_a_path_needs_a_narrative_or_a_script(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    response = member_client.post(f"/scenarios/{scenario.pk}/paths/new/", path_data(narrative="", script=""))
    assert field_errors(response, "narrative") == ["A path needs a narrative for the LLM caller, or a script of steps."]
    response = member_client.post(f"/scenarios/{scenario.pk}/paths/new/", path_data(criteria='[{"name": "x", "kind": "min_turns", "n": -1}]'))
    assert field_errors(response, "criteria")[0].startswith("criterion 1 (x): min_turns needs 'n'")
    assert not Path.objects.exists()


def test_a_duplicate_path_name_in_the_scenario_is_a_field_error(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    f.PathFactory(scenario=scenario, name="Party of two")
    response = member_client.post(f"/scenarios/{scenario.pk}/paths/new/", path_data())
    assert field_errors(response, "name") == ["This scenario already has a path with this name."]
    assert Path.objects.count() == 1


# Tenancy and roles ----------------------------------------------------------------------------------------


def test_another_workspaces_objects_are_404_everywhere(member_client, other_workspace, sync_requests):
    theirs = objects_in(other_workspace)
    detail = f"/agents/{theirs['agent'].pk}/"
    for url in object_urls(theirs):
        assert member_client.get(url).status_code == 404, url
    for url in [u for u in object_urls(theirs) if u != detail] + [f"/agents/{theirs['agent'].pk}/functions/sync/"]:
        assert member_client.post(url, {"name": "hijack"}).status_code == 404, url
    assert Agent.objects.filter(pk=theirs["agent"].pk).exists()
    assert Scenario.objects.filter(pk=theirs["scenario"].pk, name=theirs["scenario"].name).exists()
    assert Path.objects.filter(pk=theirs["path"].pk).exists() and CustomFunction.objects.count() == 1
    assert sync_requests == []


def test_a_viewer_reads_without_edit_buttons(viewer_client, workspace):
    o = objects_in(workspace)
    f.CustomFunctionFactory(agent=o["agent"], sync_status=ERROR, sync_error="refused")
    for url in ["/agents/", f"/agents/{o['agent'].pk}/", "/targets/", "/scenarios/"]:
        response = viewer_client.get(url)
        assert response.status_code == 200, url
        page = text_of(response)
        assert "/edit/" not in page and "/delete/" not in page and "/new/" not in page, url
        assert 'id="retry-sync"' not in page
    assert "refused" in text_of(viewer_client.get(f"/agents/{o['agent'].pk}/"))


def test_a_viewer_gets_403_on_every_change(viewer_client, workspace, sync_requests):
    o = objects_in(workspace)
    agent, target = o["agent"], o["target"]
    posts = {
        "/agents/new/": agent_data(),
        f"/agents/{agent.pk}/edit/": agent_data(),
        f"/agents/{agent.pk}/delete/": {},
        f"/agents/{agent.pk}/functions/new/": function_data(),
        f"/agents/{agent.pk}/functions/sync/": {},
        f"/functions/{o['function'].pk}/edit/": function_data(),
        f"/functions/{o['function'].pk}/delete/": {},
        "/targets/new/": target_data(name="New"),
        f"/targets/{target.pk}/edit/": target_data(),
        f"/targets/{target.pk}/delete/": {},
        "/scenarios/new/": scenario_data(agent, target, name="New"),
        f"/scenarios/{o['scenario'].pk}/edit/": scenario_data(agent, target),
        f"/scenarios/{o['scenario'].pk}/delete/": {},
        f"/scenarios/{o['scenario'].pk}/paths/new/": path_data(),
        f"/paths/{o['path'].pk}/edit/": path_data(),
        f"/paths/{o['path'].pk}/delete/": {},
    }
    for url, data in posts.items():
        assert viewer_client.post(url, data).status_code == 403, url
        if not url.endswith("/sync/"):
            assert viewer_client.get(url).status_code == 403, url
    assert (Agent.objects.count(), CustomFunction.objects.count(), Target.objects.count(),
            Scenario.objects.count(), Path.objects.count()) == (1, 1, 1, 1, 1)
    assert Agent.objects.get().name == agent.name and sync_requests == []


def test_url_names_resolve_to_the_documented_paths():
    assert reverse("workspace-switch") == "/workspace/switch/"
    assert reverse("scenarios:function-retry-sync", args=["00000000-0000-0000-0000-000000000000"]) == (
        "/agents/00000000-0000-0000-0000-000000000000/functions/sync/"
    )
    assert reverse("scenarios:scenario-list") == "/scenarios/"
