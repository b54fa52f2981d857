"""No tenant takes more than its share: the operator caps a workspace's parallel runs, probes and
webhooks have their own queue, API tokens and logins are rate limited, and a workspace always
keeps an owner."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import scenarios.tasks  # noqa: F401  (registers the tasks whose routes are checked)
import telephony.tasks  # noqa: F401
from assure.celery import app as celery_app
from assure.models import Membership
from assure.services import api_token_create
from runs import services
from runs.models import Run
from tests import factories as f

pytestmark = pytest.mark.django_db


def token_client(workspace) -> Client:
    _, key = api_token_create(workspace=workspace, name="tests")
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


# The operator's cap on parallel runs ----------------------------------------------------------

def test_a_workspace_cannot_ask_for_more_parallel_runs_than_the_operator_allows(workspace, settings):
    settings.MAX_PARALLEL_RUNS_PER_WORKSPACE = 20
    api = token_client(workspace)

    refused = api.patch("/api/v1/workspace/", {"max_parallel_runs": 1000}, content_type="application/json")
    assert refused.status_code == 400
    assert "At most 20" in refused.json()["max_parallel_runs"][0]
    workspace.refresh_from_db()
    assert workspace.max_parallel_runs != 1000

    allowed = api.patch("/api/v1/workspace/", {"max_parallel_runs": 20}, content_type="application/json")
    assert allowed.status_code == 200 and allowed.json()["max_parallel_runs"] == 20


def test_the_admin_refuses_a_parallel_limit_above_the_cap(member_client, workspace, settings):
    settings.MAX_PARALLEL_RUNS_PER_WORKSPACE = 20
    url = reverse("admin:assure_workspace_change", args=[workspace.pk])
    data = {"name": workspace.name, "slug": workspace.slug, "max_parallel_runs": 21, "webhook_url": "",
            "webhook_secret": ""}

    response = member_client.post(url, data)

    assert response.status_code == 200  # the form again, with the error
    assert "At most 20" in str(response.context["adminform"].form.errors["max_parallel_runs"])
    workspace.refresh_from_db()
    assert workspace.max_parallel_runs != 21


def test_admission_holds_to_the_cap_whatever_the_workspace_asked_for(workspace, settings):
    workspace.max_parallel_runs = 50  # asked for before the operator lowered the cap
    workspace.save()
    settings.MAX_PARALLEL_RUNS_PER_WORKSPACE = 2
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    for _ in range(4):
        f.RunFactory(path=path, created_at=timezone.now())

    admitted = services.admit_pending_runs(workspace_id=workspace.pk)

    assert len(admitted) == 2
    assert Run.objects.filter(workspace=workspace, status="running").count() == 2
    assert services.admit_pending_runs(workspace_id=workspace.pk) == []


# Queues ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", [
    "scenarios.tasks.sync_function", "scenarios.tasks.resync_stale_functions",
    "runs.tasks.notify_run_finished", "telephony.tasks.download_recording",
])
def test_probes_and_webhooks_go_to_the_background_queue_with_a_time_limit(task):
    route = celery_app.amqp.router.route({}, task, args=(), kwargs={})
    assert route["queue"].name == "background"
    assert celery_app.tasks[task].soft_time_limit == 120


@pytest.mark.parametrize("task", ["runs.tasks.execute_runs", "runs.tasks.admit_runs", "runs.tasks.sweep_runs"])
def test_runs_keep_the_default_queue(task):
    assert celery_app.amqp.router.route({}, task, args=(), kwargs={})["queue"].name == "celery"


# API throttling ---------------------------------------------------------------------------------

def test_each_api_token_is_throttled_on_its_own(workspace, settings):
    settings.API_THROTTLE_RATE = "3/min"
    busy, other = token_client(workspace), token_client(workspace)

    assert [busy.get("/api/v1/workspace/").status_code for _ in range(3)] == [200, 200, 200]
    throttled = busy.get("/api/v1/workspace/")
    assert throttled.status_code == 429 and "Retry-After" in throttled

    assert other.get("/api/v1/workspace/").status_code == 200


# Login rate limiting ----------------------------------------------------------------------------

def test_logins_lock_out_after_ten_failures_for_that_username_and_address(db):
    user = f.UserFactory(username="maya")
    user.set_password("the right one")
    user.save()
    bystander = f.UserFactory(username="sam")
    bystander.set_password("sam's own")
    bystander.save()
    browser = Client()
    login = reverse("login")

    for _ in range(9):
        assert browser.post(login, {"username": "maya", "password": "a guess"}).status_code == 200
    assert browser.post(login, {"username": "maya", "password": "a guess"}).status_code == 429  # the tenth

    locked = browser.post(login, {"username": "maya", "password": "the right one"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in browser.session
    # Another account from the same address still signs in.
    assert browser.post(login, {"username": "sam", "password": "sam's own"}).status_code == 302


def test_a_successful_login_resets_the_failure_count(db):
    user = f.UserFactory(username="maya")
    user.set_password("the right one")
    user.save()
    login = reverse("login")
    for _ in range(9):
        Client().post(login, {"username": "maya", "password": "a guess"})
    assert Client().post(login, {"username": "maya", "password": "the right one"}).status_code == 302
    for _ in range(9):
        Client().post(login, {"username": "maya", "password": "a guess"})
    assert Client().post(login, {"username": "maya", "password": "the right one"}).status_code == 302


# The last owner ---------------------------------------------------------------------------------

def membership_url(membership, view="change"):
    return reverse(f"admin:assure_membership_{view}", args=[membership.pk])


def test_the_last_owner_cannot_be_demoted_in_the_admin(member_client, member, workspace):
    own = Membership.objects.get(user=member, workspace=workspace)

    response = member_client.post(membership_url(own), {"role": "admin"})

    assert response.status_code == 200
    assert "would have no owner left" in str(response.context["adminform"].form.non_field_errors())
    own.refresh_from_db()
    assert own.role == "owner"


def test_the_last_owner_cannot_be_removed_in_the_admin(member_client, member, workspace):
    own = Membership.objects.get(user=member, workspace=workspace)
    colleague = f.MembershipFactory(workspace=workspace, role="member")

    page = member_client.post(membership_url(own, "delete"), {"post": "yes"})
    assert "would have no owner left" in page.content.decode()
    member_client.post(reverse("admin:assure_membership_changelist"), {
        "action": "delete_selected", "_selected_action": [own.pk, colleague.pk], "post": "yes"})

    assert set(Membership.objects.filter(workspace=workspace).values_list("pk", flat=True)) == {own.pk, colleague.pk}


def test_an_owner_steps_down_once_another_owner_exists(member_client, member, workspace):
    own = Membership.objects.get(user=member, workspace=workspace)
    f.MembershipFactory(workspace=workspace, role="owner")

    response = member_client.post(membership_url(own), {"role": "admin"})

    assert response.status_code == 302
    own.refresh_from_db()
    assert own.role == "admin"
