"""The operator admin: every screen works for operators, and a workspace's staff member sees and
edits only their own workspaces' objects, with what their role allows."""

import hashlib
import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.forms import CheckboxInput, PasswordInput
from django.test import Client
from django.urls import reverse

from assure.models import ApiToken, Membership, Workspace
from assure.services import api_token_authenticate, api_token_create
from runs.models import Batch, CriterionResult, Run, RunEvent, ScheduleFiring, ToolInvocation, Turn
from scenarios.models import Agent, CustomFunction, Path, Scenario, Schedule, Target
from telephony.models import Call, PhoneNumber
from tests import factories as f

pytestmark = pytest.mark.django_db

# One object of each model, in the given workspace.
MAKERS = {
    Workspace: lambda ws: ws,
    Membership: lambda ws: f.MembershipFactory(workspace=ws),
    ApiToken: lambda ws: api_token_create(workspace=ws, name="deploy")[0],
    Agent: lambda ws: f.AgentFactory(workspace=ws),
    CustomFunction: lambda ws: f.CustomFunctionFactory(agent__workspace=ws),
    Target: lambda ws: f.TargetFactory(workspace=ws),
    Scenario: lambda ws: f.ScenarioFactory(workspace=ws),
    Path: lambda ws: f.PathFactory(scenario__workspace=ws),
    Schedule: lambda ws: f.ScheduleFactory(scenario__workspace=ws),
    ScheduleFiring: lambda ws: f.ScheduleFiringFactory(schedule__scenario__workspace=ws),
    Batch: lambda ws: f.BatchFactory(scenario__workspace=ws),
    Run: lambda ws: f.RunFactory(path__scenario__workspace=ws),
    Turn: lambda ws: f.TurnFactory(run__path__scenario__workspace=ws),
    ToolInvocation: lambda ws: f.ToolInvocationFactory(run__path__scenario__workspace=ws),
    CriterionResult: lambda ws: f.CriterionResultFactory(run__path__scenario__workspace=ws),
    RunEvent: lambda ws: f.RunEventFactory(run__path__scenario__workspace=ws),
    PhoneNumber: lambda ws: f.PhoneNumberFactory(workspace=ws),
    Call: lambda ws: f.CallFactory(run=f.RunFactory(workspace=ws)),
}
# Runs and their records are written by the engine's services only.
NOT_ADDABLE = {Batch, Run, Turn, ToolInvocation, CriterionResult, RunEvent, Call, ScheduleFiring}
by_name = {"ids": lambda model: model.__name__}


def admin_url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def change_url(obj):
    return admin_url(type(obj), "change", obj.pk)


def staff_client(workspace, role):
    user = f.UserFactory(is_staff=True)
    f.MembershipFactory(workspace=workspace, user=user, role=role)
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def submitted_data(response) -> dict:
    """What the page's form and inline formsets would POST if the user changed nothing.

    Password inputs are sent blank, as a browser sends them.
    """
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms.append(inline.formset.management_form)
        forms.extend(inline.formset.forms)
    data = {}
    for form in forms:
        for bound in form:
            widget, value = bound.field.widget, bound.value()
            if isinstance(widget, PasswordInput):
                data[bound.html_name] = ""
            elif isinstance(widget, CheckboxInput):
                if value:
                    data[bound.html_name] = "on"
            else:
                data[bound.html_name] = "" if value is None else value
    return data


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.fixture
def operator_client(db):
    client = Client()
    client.force_login(f.UserFactory(is_staff=True, is_superuser=True))
    return client


# --- Operators (superusers) -------------------------------------------------------------------


def test_every_model_of_the_project_is_registered():
    project_models = {
        model for label in ("assure", "scenarios", "runs", "telephony")
        for model in apps.get_app_config(label).get_models()
    }
    assert project_models == set(MAKERS)
    assert all(admin.site.is_registered(model) for model in project_models)


@pytest.mark.parametrize("model", list(MAKERS), **by_name)
def test_operator_pages_load(operator_client, workspace, model):
    obj = MAKERS[model](workspace)

    changelist = operator_client.get(admin_url(model, "changelist"))
    assert changelist.status_code == 200
    assert change_url(obj) in changelist.content.decode()
    # Searching exercises every search field's lookup.
    assert operator_client.get(admin_url(model, "changelist"), {"q": "nothing matches this"}).status_code == 200
    assert operator_client.get(change_url(obj)).status_code == 200
    assert operator_client.get(admin_url(model, "add")).status_code == (403 if model in NOT_ADDABLE else 200)


def test_run_page_links_to_what_the_run_came_from(operator_client, workspace):
    first = f.RunFactory(path__scenario__workspace=workspace)
    batch = f.BatchFactory(scenario=first.scenario, workspace=workspace)
    retry = f.RunFactory(path=first.path, batch=batch, retry_of=first)

    page = operator_client.get(change_url(retry)).content.decode()

    for related in (retry.scenario, retry.path, batch, first):
        assert f'href="{change_url(related)}"' in page
    retries = operator_client.get(admin_url(Run, "changelist"), {"retry_of__id__exact": first.pk})
    assert change_url(retry) in retries.content.decode()
    assert change_url(first) not in retries.content.decode()


def test_scenario_and_path_link_to_their_runs(operator_client, workspace):
    run = f.RunFactory(path__scenario__workspace=workspace)
    other_path = f.PathFactory(scenario=run.scenario, workspace=workspace)
    other_run = f.RunFactory(path=other_path)

    scenario_page = operator_client.get(change_url(run.scenario)).content.decode()
    runs_of_scenario = re.search(r'href="([^"]*scenario__id__exact[^"]*)"', scenario_page).group(1)
    listed = operator_client.get(runs_of_scenario.replace("&amp;", "&")).content.decode()
    assert change_url(run) in listed and change_url(other_run) in listed

    path_page = operator_client.get(change_url(run.path)).content.decode()
    runs_of_path = re.search(r'href="([^"]*path__id__exact[^"]*)"', path_page).group(1)
    listed = operator_client.get(runs_of_path.replace("&amp;", "&")).content.decode()
    assert change_url(run) in listed and change_url(other_run) not in listed

    scenario_list = operator_client.get(admin_url(Scenario, "changelist")).content.decode()
    assert f'href="{change_url(run.scenario.agent)}"' in scenario_list
    assert f'href="{change_url(run.scenario.target)}"' in scenario_list


def test_run_state_cannot_be_edited_and_its_records_are_read_only(operator_client, workspace):
    run = f.RunFactory(path__scenario__workspace=workspace)
    turn = f.TurnFactory(run=run, text="Good evening, table for two?")
    f.ToolInvocationFactory(run=run)
    f.CriterionResultFactory(run=run)
    f.RunEventFactory(run=run)

    response = operator_client.get(change_url(run))

    page = response.content.decode()
    assert turn.text in page
    for field in ("status", "stage", "failure_reason", "verdict", "snapshot", "metrics", "started_at"):
        assert f'name="{field}"' not in page
    assert 'name="_save"' not in page
    assert 'name="turns-0-text"' not in page
    assert "turns-__prefix__" not in page  # the template Django clones for "Add another"
    assert len(response.context["inline_admin_formsets"]) == 4
    # Read-only in their own right, not only because the run page is: they stay so if runs ever
    # get an editable field.
    request = response.wsgi_request
    for inline in admin.site.get_model_admin(Run).get_inline_instances(request, run):
        assert not inline.has_add_permission(request, run)
        assert not inline.has_change_permission(request, run)
        assert not inline.has_delete_permission(request, run)

    refused = operator_client.post(change_url(run), {"status": "cancelled", "stage": "done"})
    assert refused.status_code == 403
    run.refresh_from_db()
    assert (run.status, run.stage) == ("pending", "queued")


def test_only_operators_delete_runs(operator_client, member_client, workspace):
    run = f.RunFactory(path__scenario__workspace=workspace)
    f.TurnFactory(run=run)

    assert member_client.post(admin_url(Run, "delete", run.pk), {"post": "yes"}).status_code == 403
    assert Run.objects.filter(pk=run.pk).exists()

    assert operator_client.post(admin_url(Run, "delete", run.pk), {"post": "yes"}).status_code == 302
    assert not Run.objects.filter(pk=run.pk).exists()
    assert not Turn.objects.exists()


# --- A staff member of workspace A ------------------------------------------------------------


@pytest.mark.parametrize("model", list(MAKERS), **by_name)
def test_member_lists_only_their_workspaces_objects(member_client, workspace, other_workspace, model):
    mine, theirs = MAKERS[model](workspace), MAKERS[model](other_workspace)

    response = member_client.get(admin_url(model, "changelist"))

    assert response.status_code == 200
    assert admin_url(model, "changelist") in member_client.get(reverse("admin:index")).content.decode()
    page = response.content.decode()
    assert change_url(mine) in page
    assert change_url(theirs) not in page
    assert str(other_workspace.pk) not in page  # not even in the workspace filter


@pytest.mark.parametrize("model", list(MAKERS), **by_name)
def test_member_cannot_open_another_workspaces_object(member_client, other_workspace, model):
    theirs = MAKERS[model](other_workspace)

    for view in ("change", "history", "delete"):
        response = member_client.get(admin_url(model, view, theirs.pk))
        # Where nobody but operators may delete (workspaces, runs), the delete page is refused first.
        refusals = {(302, reverse("admin:index")), (404, None)} | ({(403, None)} if view == "delete" else set())
        assert (response.status_code, response.get("Location")) in refusals
        assert str(theirs) not in response.content.decode()


def test_member_cannot_change_or_delete_another_workspaces_object(member_client, workspace, other_workspace):
    mine, theirs = f.AgentFactory(workspace=workspace), f.AgentFactory(workspace=other_workspace, name="Theirs")
    data = submitted_data(member_client.get(change_url(mine)))
    data["name"] = "Hijacked"

    member_client.post(change_url(theirs), data)
    member_client.post(admin_url(Agent, "delete", theirs.pk), {"post": "yes"})
    member_client.post(
        admin_url(Agent, "changelist"), {"action": "delete_selected", "_selected_action": [theirs.pk], "post": "yes"}
    )

    theirs.refresh_from_db()
    assert theirs.name == "Theirs"


def test_member_edits_their_own_objects(member_client, workspace):
    agent = f.AgentFactory(workspace=workspace)
    data = submitted_data(member_client.get(change_url(agent)))
    data["name"] = "Renamed"

    assert member_client.post(change_url(agent), data).status_code == 302
    agent.refresh_from_db()
    assert agent.name == "Renamed"


def test_add_form_offers_only_the_members_workspace(member_client, workspace, other_workspace):
    mine = f.ScenarioFactory(workspace=workspace)
    theirs = f.ScenarioFactory(workspace=other_workspace)

    page = member_client.get(admin_url(Scenario, "add")).content.decode()

    assert f'value="{workspace.pk}"' in page
    assert f'value="{mine.agent.pk}"' in page and f'value="{mine.target.pk}"' in page
    for foreign in (other_workspace, theirs.agent, theirs.target):
        assert str(foreign.pk) not in page


def _new_scenario_data(client, workspace, agent, target) -> dict:
    data = submitted_data(client.get(admin_url(Scenario, "add")))
    data.update(workspace=workspace.pk, name="Booking", channel="chat", agent=agent.pk, target=target.pk)
    return data


def test_scenario_pointing_at_another_workspaces_agent_is_refused(member_client, workspace, other_workspace):
    target = f.TargetFactory(workspace=workspace)
    their_agent = f.AgentFactory(workspace=other_workspace)

    response = member_client.post(
        admin_url(Scenario, "add"), _new_scenario_data(member_client, workspace, their_agent, target)
    )

    assert response.status_code == 200
    assert "agent" in response.context["adminform"].form.errors
    assert not Scenario.objects.exists()


def test_scenario_mixing_two_of_the_members_workspaces_is_refused(workspace, other_workspace):
    # Both agents are on offer to this user; the model's own validation must still run.
    client = staff_client(workspace, "owner")
    f.MembershipFactory(workspace=other_workspace, user=client.user, role="member")
    target = f.TargetFactory(workspace=workspace)
    agent_elsewhere = f.AgentFactory(workspace=other_workspace)

    response = client.post(admin_url(Scenario, "add"), _new_scenario_data(client, workspace, agent_elsewhere, target))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["agent"] == ["Must belong to the same workspace."]
    assert not Scenario.objects.exists()


def test_saving_into_a_viewed_only_workspace_is_refused(workspace, other_workspace):
    client = staff_client(workspace, "owner")
    f.MembershipFactory(workspace=other_workspace, user=client.user, role="viewer")
    agent, target = f.AgentFactory(workspace=other_workspace), f.TargetFactory(workspace=other_workspace)

    response = client.post(
        admin_url(Scenario, "add"), _new_scenario_data(client, other_workspace, agent, target)
    )

    assert "workspace" in response.context["adminform"].form.errors
    assert not Scenario.objects.exists()


def test_paths_added_inline_join_the_scenarios_workspace(member_client, workspace):
    agent, target = f.AgentFactory(workspace=workspace), f.TargetFactory(workspace=workspace)
    data = _new_scenario_data(member_client, workspace, agent, target)
    data.update({
        "paths-TOTAL_FORMS": "1", "paths-0-name": "Party of two", "paths-0-narrative": "Books a table for two.",
        "paths-0-script": "[]", "paths-0-criteria": "[]",
    })

    response = member_client.post(admin_url(Scenario, "add"), data)

    assert response.status_code == 302
    path = Path.objects.get()
    assert path.workspace == workspace == path.scenario.workspace


def test_objects_stay_in_their_workspace(workspace, other_workspace):
    client = staff_client(workspace, "owner")
    f.MembershipFactory(workspace=other_workspace, user=client.user, role="owner")
    agent = f.AgentFactory(workspace=workspace)
    data = submitted_data(client.get(change_url(agent)))
    data.update(workspace=other_workspace.pk, name="Moved?")

    assert client.post(change_url(agent), data).status_code == 302
    agent.refresh_from_db()
    assert (agent.name, agent.workspace) == ("Moved?", workspace)


def test_renaming_to_a_name_taken_in_the_workspace_is_a_form_error(member_client, workspace):
    f.AgentFactory(workspace=workspace, name="Taken")
    agent = f.AgentFactory(workspace=workspace)
    data = submitted_data(member_client.get(change_url(agent)))
    data["name"] = "Taken"

    response = member_client.post(change_url(agent), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    agent.refresh_from_db()
    assert agent.name != "Taken"


def test_membership_user_choices_are_people_the_manager_works_with(member_client, member, workspace, other_workspace):
    colleague = f.MembershipFactory(workspace=workspace).user
    stranger = f.MembershipFactory(workspace=other_workspace).user

    choices = member_client.get(admin_url(Membership, "add")).context["adminform"].form.fields["user"].queryset

    assert set(choices) == {member, colleague}
    assert stranger not in choices


# --- Roles ------------------------------------------------------------------------------------


def test_viewer_can_view_but_not_change(workspace):
    client = staff_client(workspace, "viewer")
    agent = f.AgentFactory(workspace=workspace, name="Caller", llm_api_key="sk-viewer-must-not-see")
    f.CustomFunctionFactory(agent=agent, secret="whsec-viewer-must-not-see")

    assert change_url(agent) in client.get(admin_url(Agent, "changelist")).content.decode()
    page = client.get(change_url(agent))
    assert page.status_code == 200
    content = page.content.decode()
    assert "Caller" in content
    assert 'name="_save"' not in content and 'name="name"' not in content
    assert "sk-viewer-must-not-see" not in content and "whsec-viewer-must-not-see" not in content

    assert client.post(change_url(agent), {"name": "Changed"}).status_code == 403
    assert client.get(admin_url(Agent, "add")).status_code == 403
    assert client.post(admin_url(Agent, "delete", agent.pk), {"post": "yes"}).status_code == 403
    agent.refresh_from_db()
    assert agent.name == "Caller"


def test_only_owners_and_admins_manage_the_workspace_its_members_and_tokens(workspace):
    client = staff_client(workspace, "member")
    membership = Membership.objects.get(user=client.user)

    assert client.get(change_url(workspace)).status_code == 200
    assert client.post(change_url(workspace), {"name": "Renamed"}).status_code == 403
    assert client.post(change_url(membership), {"role": "owner"}).status_code == 403
    assert client.get(admin_url(ApiToken, "add")).status_code == 403
    workspace.refresh_from_db()
    membership.refresh_from_db()
    assert workspace.name != "Renamed" and membership.role == "member"


def test_owner_changes_their_workspace_but_never_adds_or_deletes_one(member_client, workspace):
    data = submitted_data(member_client.get(change_url(workspace)))
    data["name"] = "Renamed"

    assert member_client.post(change_url(workspace), data).status_code == 302
    workspace.refresh_from_db()
    assert workspace.name == "Renamed"
    assert member_client.get(admin_url(Workspace, "add")).status_code == 403
    assert member_client.post(admin_url(Workspace, "delete", workspace.pk), {"post": "yes"}).status_code == 403
    assert Workspace.objects.filter(pk=workspace.pk).exists()


# --- API tokens and secrets -------------------------------------------------------------------


def test_adding_a_token_shows_its_key_once_and_stores_only_its_hash(member_client, member, workspace):
    add_page = member_client.get(admin_url(ApiToken, "add")).content.decode()
    assert 'name="key_hash"' not in add_page and 'name="prefix"' not in add_page

    response = member_client.post(
        admin_url(ApiToken, "add"), {"workspace": workspace.pk, "name": "CI pipeline"}, follow=True
    )

    shown = [m for m in shown_messages(response) if "will not be shown again" in m]
    assert len(shown) == 1
    key = re.search(r"aa_[\w-]+", shown[0]).group(0)
    token = ApiToken.objects.get()
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert (token.name, token.workspace, token.created_by, token.prefix) == ("CI pipeline", workspace, member, key[3:11])
    assert key not in str(ApiToken.objects.values().get())
    assert api_token_authenticate(key=key) == token
    assert key not in member_client.get(change_url(token)).content.decode()


def test_revoke_action_revokes_only_tokens_the_user_manages(member_client, workspace, other_workspace):
    mine, my_key = api_token_create(workspace=workspace, name="mine")
    theirs, their_key = api_token_create(workspace=other_workspace, name="theirs")

    member_client.post(
        admin_url(ApiToken, "changelist"), {"action": "revoke", "_selected_action": [mine.pk, theirs.pk]}
    )

    assert api_token_authenticate(key=my_key) is None
    assert api_token_authenticate(key=their_key) == theirs


def test_function_secret_is_never_shown_and_kept_when_left_blank(member_client, workspace):
    function = f.CustomFunctionFactory(agent__workspace=workspace, secret="whsec-original")

    page = member_client.get(change_url(function))
    assert "whsec-original" not in page.content.decode()
    data = submitted_data(page)
    data["description"] = "Looks up a booking."
    assert member_client.post(change_url(function), data).status_code == 302
    function.refresh_from_db()
    assert (function.description, function.secret) == ("Looks up a booking.", "whsec-original")

    data["secret"] = "whsec-rotated"
    assert member_client.post(change_url(function), data).status_code == 302
    function.refresh_from_db()
    assert function.secret == "whsec-rotated"


def test_agent_secrets_survive_an_edit_with_its_functions_inline(member_client, workspace):
    function = f.CustomFunctionFactory(agent__workspace=workspace, agent__llm_api_key="sk-agent", secret="whsec-fn")
    agent = function.agent

    page = member_client.get(change_url(agent))
    assert "sk-agent" not in page.content.decode() and "whsec-fn" not in page.content.decode()
    data = submitted_data(page)
    data["instructions"] = "Be brief."
    assert member_client.post(change_url(agent), data).status_code == 302

    agent.refresh_from_db()
    function.refresh_from_db()
    assert (agent.instructions, agent.llm_api_key, function.secret) == ("Be brief.", "sk-agent", "whsec-fn")


def test_target_headers_are_an_input_that_never_shows_them(member_client, workspace):
    target = f.TargetFactory(workspace=workspace, headers={"Authorization": "Bearer tgt-secret"})

    assert "tgt-secret" not in member_client.get(admin_url(Target, "changelist")).content.decode()
    page = member_client.get(change_url(target)).content.decode()
    assert 'name="headers"' in page and "tgt-secret" not in page
    viewer = staff_client(workspace, "viewer")
    assert "tgt-secret" not in viewer.get(change_url(target)).content.decode()

    data = submitted_data(member_client.get(change_url(target)))
    data["name"] = "Renamed"
    assert member_client.post(change_url(target), data).status_code == 302
    target.refresh_from_db()
    assert (target.name, target.headers) == ("Renamed", {"Authorization": "Bearer tgt-secret"})




def test_changing_what_a_synced_function_proved_sets_it_back_to_pending(member_client, workspace):
    function = f.CustomFunctionFactory(agent=f.AgentFactory(workspace=workspace), sync_status="synced")
    data = submitted_data(member_client.get(change_url(function)))
    data["description"] = "Only the words changed."
    assert member_client.post(change_url(function), data).status_code == 302
    function.refresh_from_db()
    assert function.sync_status == "synced"
    data["url"] = "https://hooks.example.com/v2/lookup"
    assert member_client.post(change_url(function), data).status_code == 302
    function.refresh_from_db()
    assert (function.sync_status, function.url) == ("pending", "https://hooks.example.com/v2/lookup")


def test_a_workspace_with_scenarios_can_be_deleted(workspace):
    f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    workspace.delete()
    assert not Scenario.objects.exists()
