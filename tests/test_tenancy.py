"""A member of workspace A can neither read nor change workspace B's objects."""

import pytest
from django.urls import reverse

from assure.models import ApiToken, Membership, Workspace
from assure.services import api_token_create
from assure.tenancy import scoped, switch_workspace, user_workspaces
from runs.models import Batch, CriterionResult, Run, RunEvent, ScheduleFiring, ToolInvocation, Turn
from scenarios.models import Agent, CustomFunction, Path, Scenario, Schedule, Target
from telephony.models import Call, PhoneNumber
from tests import factories as f

pytestmark = pytest.mark.django_db

TENANT_MODELS = {
    Agent: f.AgentFactory,
    CustomFunction: f.CustomFunctionFactory,
    Target: f.TargetFactory,
    Scenario: f.ScenarioFactory,
    Path: f.PathFactory,
    Schedule: f.ScheduleFactory,
    ScheduleFiring: f.ScheduleFiringFactory,
    Batch: f.BatchFactory,
    Run: f.RunFactory,
    Turn: f.TurnFactory,
    ToolInvocation: f.ToolInvocationFactory,
    CriterionResult: f.CriterionResultFactory,
    RunEvent: f.RunEventFactory,
    PhoneNumber: f.PhoneNumberFactory,
    Call: f.CallFactory,
    Membership: f.MembershipFactory,
}


def _workspace_of(obj) -> Workspace:
    for attr in f"{obj.workspace_path}".split("__"):
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("model", list(TENANT_MODELS), ids=lambda m: m.__name__)
def test_scoped_returns_only_the_workspaces_own_objects(model):
    mine, theirs = TENANT_MODELS[model](), TENANT_MODELS[model]()
    ws_a, ws_b = _workspace_of(mine), _workspace_of(theirs)
    assert ws_a != ws_b
    assert list(scoped(model, ws_a)) == [mine]
    assert list(scoped(model, ws_b)) == [theirs]
    assert list(scoped(model.objects.all(), ws_a)) == [mine]
    assert not scoped(model, None).exists()


def test_every_tenant_model_is_covered():
    from django.apps import apps

    owned = {
        m for m in apps.get_models()
        if hasattr(m, "workspace_path") and m._meta.app_label in ("scenarios", "runs", "telephony", "assure")
        and m not in (Workspace, ApiToken)
    }
    assert owned == set(TENANT_MODELS)


def test_user_workspaces_and_switching(rf, workspace, other_workspace, member):
    assert list(user_workspaces(member)) == [workspace]
    request = rf.get("/")
    request.user = member
    request.session = {}
    switch_workspace(request, workspace)
    with pytest.raises(PermissionError):
        switch_workspace(request, other_workspace)
    assert request.session["workspace_id"] == str(workspace.pk)


def test_pages_list_only_the_current_workspace(member_client, workspace, other_workspace):
    f.ScenarioFactory(workspace=workspace, name="Mine")
    f.ScenarioFactory.create_batch(3, workspace=other_workspace)
    assert member_client.get(reverse("home")).url == reverse("scenarios:scenario-list")
    response = member_client.get(reverse("scenarios:scenario-list"))
    assert response.status_code == 200
    assert [s.name for s in response.context["scenarios"]] == ["Mine"]


def test_a_session_pointing_at_another_workspace_falls_back_to_the_users_own(member_client, workspace, other_workspace):
    session = member_client.session
    session["workspace_id"] = str(other_workspace.pk)
    session.save()
    response = member_client.get(reverse("scenarios:scenario-list"))
    assert response.context["current_workspace"] == workspace


def test_api_token_sees_only_its_workspace(client, workspace, other_workspace):
    _, key = api_token_create(workspace=workspace, name="ci")
    response = client.get("/api/v1/workspace/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200
    assert response.json()["slug"] == workspace.slug
    response = client.patch(
        "/api/v1/workspace/", {"max_parallel_runs": 3}, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}"
    )
    assert response.status_code == 200
    workspace.refresh_from_db()
    other_workspace.refresh_from_db()
    assert (workspace.max_parallel_runs, other_workspace.max_parallel_runs) == (3, 5)


def test_workspace_api_rejects_bad_input_with_field_errors(client, workspace):
    _, key = api_token_create(workspace=workspace, name="ci")
    response = client.patch(
        "/api/v1/workspace/", {"max_parallel_runs": 0}, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}"
    )
    assert response.status_code == 400
    assert "max_parallel_runs" in response.json()
    workspace.refresh_from_db()
    assert workspace.max_parallel_runs == 5


def test_api_without_credentials_or_with_a_bad_token_is_refused(client, workspace):
    assert client.get("/api/v1/workspace/").status_code in (401, 403)
    response = client.get("/api/v1/workspace/", HTTP_AUTHORIZATION="Token aa_not-a-real-key")
    assert response.status_code == 401
    assert "Invalid or revoked API token" in response.json()["detail"]


def test_viewer_cannot_change_workspace_settings(client, workspace):
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    assert client.get("/api/v1/workspace/").status_code == 200
    assert client.patch("/api/v1/workspace/", {"queue_paused": True}, content_type="application/json").status_code == 403
    member = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=member, role="member")
    client.force_login(member)
    assert client.patch("/api/v1/workspace/", {"queue_paused": True}, content_type="application/json").status_code == 403
    workspace.refresh_from_db()
    assert workspace.queue_paused is False
