"""Secrets at rest: encrypted in the database with ASSURE_SECRET_KEYS, rotated with
``manage.py rotate_secrets``; a target's headers never follow its URL to another host; a queued run
uses the headers it was queued with, or fails saying so."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from assure.models import Workspace
from assure.secrets import SecretUnreadable
from runs.models import Run
from scenarios.models import Agent, CustomFunction, Target
from tests import factories as f
from tests.support import ROOT, CeleryWorker, FakeTarget, wait_for
from tests.test_admin import change_url, submitted_data

HOST_CHANGED = "The URL's host changed: enter the headers again (or {} for none) so they are not sent to the new host."
TARGET_CHANGED = ("The target's URL or secret headers changed after this run was queued; retry it to use the "
                  "current target.")


def raw_column(model, field_name: str) -> list[str]:
    """The column's values as the database holds them, bypassing the model field."""
    table = connection.ops.quote_name(model._meta.db_table)
    column = connection.ops.quote_name(model._meta.get_field(field_name).column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table}")
        return [str(value) for (value,) in cursor.fetchall()]


def http_json_target(**fields) -> dict:
    return {"name": "Support bot", "channel": "chat", "kind": "http_json", "url": "http://127.0.0.1:8001/chat",
            "request_template": {"text": "{{message}}"}, "response_path": "$.reply", **fields}


# At rest -------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_database_holds_no_plaintext_secret(api, workspace):
    target = api.post("/api/v1/targets/", http_json_target(headers={"Authorization": "Bearer tgt-pl41n"}),
                      content_type="application/json")
    agent = api.post("/api/v1/agents/", {"name": "Caller", "llm_api_key": "sk-pl41n-agent"},
                     content_type="application/json")
    function = api.post("/api/v1/functions/", {
        "agent": agent.json()["id"], "name": "lookup", "url": "http://127.0.0.1:8002/hook",
        "parameters": {"type": "object", "properties": {}}, "secret": "whsec-pl41n-fn"}, content_type="application/json")
    workspace_patch = api.patch("/api/v1/workspace/", {"webhook_secret": "whsec-pl41n-ws"},
                                content_type="application/json")
    assert [r.status_code for r in (target, agent, function, workspace_patch)] == [201, 201, 201, 200]

    raw = {
        "headers": raw_column(Target, "headers"), "llm_api_key": raw_column(Agent, "llm_api_key"),
        "secret": raw_column(CustomFunction, "secret"), "webhook_secret": raw_column(Workspace, "webhook_secret"),
    }
    for name, plaintext in [("headers", "tgt-pl41n"), ("llm_api_key", "sk-pl41n-agent"),
                            ("secret", "whsec-pl41n-fn"), ("webhook_secret", "whsec-pl41n-ws")]:
        assert raw[name], f"no {name} stored"
        assert not any(plaintext in value for value in raw[name]), f"{name} is stored in plain text"
    # What the product reads is the plaintext.
    assert Target.objects.get(pk=target.json()["id"]).headers == {"Authorization": "Bearer tgt-pl41n"}
    assert Agent.objects.get(pk=agent.json()["id"]).llm_api_key == "sk-pl41n-agent"
    assert CustomFunction.objects.get(pk=function.json()["id"]).secret == "whsec-pl41n-fn"
    assert Workspace.objects.get(pk=workspace.pk).webhook_secret == "whsec-pl41n-ws"


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_existing_rows_and_decrypts_them_on_the_way_back():
    executor = MigrationExecutor(connection)
    executor.migrate([("scenarios", "0003_rehearsal_targets")])
    old_apps = executor.loader.project_state([("scenarios", "0003_rehearsal_targets")]).apps
    old_workspace = old_apps.get_model("assure", "Workspace").objects.create(name="Old", slug="old")
    old_apps.get_model("scenarios", "Agent").objects.create(
        workspace_id=old_workspace.pk, name="Old caller", llm_api_key="sk-0ld-plain")
    old_apps.get_model("scenarios", "Target").objects.create(
        workspace_id=old_workspace.pk, name="Old bot", channel="chat", kind="http_json", url="http://127.0.0.1:8001/",
        headers={"X-Key": "0ld-header"})

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert not any("0ld-header" in value for value in raw_column(Target, "headers"))
    assert not any("sk-0ld-plain" in value for value in raw_column(Agent, "llm_api_key"))
    assert Target.objects.get(name="Old bot").headers == {"X-Key": "0ld-header"}
    assert Agent.objects.get(name="Old caller").llm_api_key == "sk-0ld-plain"

    executor = MigrationExecutor(connection)
    executor.migrate([("scenarios", "0003_rehearsal_targets")])
    assert any("0ld-header" in value for value in raw_column(Target, "headers"))
    assert "sk-0ld-plain" in raw_column(Agent, "llm_api_key")
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert Target.objects.get(name="Old bot").headers == {"X-Key": "0ld-header"}


@pytest.mark.django_db
def test_rotate_secrets_reencrypts_with_the_first_key(settings, workspace, capsys):
    key_a = settings.ASSURE_SECRET_KEYS[0]
    key_b = Fernet.generate_key().decode()
    target = f.TargetFactory(workspace=workspace, headers={"X-Key": "rotate-me"})
    agent = f.AgentFactory(workspace=workspace, llm_api_key="sk-rotate-me")
    workspace.webhook_secret = "whsec-rotate-me"
    workspace.save()

    settings.ASSURE_SECRET_KEYS = [key_b]
    with pytest.raises(SecretUnreadable, match="scenarios.Target.headers cannot be decrypted"):
        Target.objects.get(pk=target.pk)

    # Before the rotation: B encrypts, A still decrypts the old rows.
    settings.ASSURE_SECRET_KEYS = [key_b, key_a]
    assert Target.objects.get(pk=target.pk).headers == {"X-Key": "rotate-me"}
    capsys.readouterr()
    call_command("rotate_secrets")
    first = capsys.readouterr().out
    assert "scenarios.Target.headers: 1 re-encrypted, 0 already current" in first
    assert "scenarios.Agent.llm_api_key: 1 re-encrypted, 0 already current" in first
    assert "assure.Workspace.webhook_secret: 1 re-encrypted, 0 already current" in first
    call_command("rotate_secrets")
    again = capsys.readouterr().out
    assert "scenarios.Target.headers: 0 re-encrypted, 1 already current" in again
    assert "Total: 0 re-encrypted" in again

    # After it: key B alone reads everything.
    settings.ASSURE_SECRET_KEYS = [key_b]
    assert Target.objects.get(pk=target.pk).headers == {"X-Key": "rotate-me"}
    assert Agent.objects.get(pk=agent.pk).llm_api_key == "sk-rotate-me"
    assert Workspace.objects.get(pk=workspace.pk).webhook_secret == "whsec-rotate-me"


# Settings -------------------------------------------------------------------------------------------

def import_settings(env: dict[str, str], var_dir) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ASSURE_SECRET_KEYS", "DEBUG")}
    clean.update({"ASSURE_VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "assure.settings", **env})
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                               "print(','.join(settings.ASSURE_SECRET_KEYS))"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
    )


def test_a_deployment_without_secret_keys_stops_saying_how_to_make_one(tmp_path):
    result = import_settings({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test", "SECRET_KEY": "k" * 50},
                             tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured: ASSURE_SECRET_KEYS must be set when DATABASE_URL is set" in result.stderr
    assert 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"' in result.stderr


def test_a_malformed_key_stops_start_up_without_repeating_it(tmp_path):
    good = Fernet.generate_key().decode()
    result = import_settings({"ASSURE_SECRET_KEYS": f"{good},not-a-key-s3cr3t"}, tmp_path)
    assert result.returncode != 0
    assert "ASSURE_SECRET_KEYS: key 2 of 2 is not a Fernet key" in result.stderr
    assert "not-a-key-s3cr3t" not in result.stderr
    both = import_settings({"ASSURE_SECRET_KEYS": f" {good} , {good} "}, tmp_path)
    assert both.returncode == 0, both.stderr
    assert both.stdout.strip() == f"{good},{good}"


def test_the_embedded_default_keeps_one_private_key_per_checkout(tmp_path):
    first = import_settings({}, tmp_path)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "secret_keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.stdout.strip() == path.read_text().strip()
    Fernet(path.read_text().strip())
    assert import_settings({}, tmp_path).stdout == first.stdout


# A target's headers and its host -------------------------------------------------------------------

@pytest.mark.django_db
def test_api_refuses_a_new_host_for_stored_headers_until_they_are_given_again(api, workspace):
    target = f.TargetFactory(workspace=workspace, url="http://127.0.0.1:8001/chat", headers={"X-Key": "k1"})
    url = f"/api/v1/targets/{target.pk}/"

    moved = api.patch(url, {"url": "http://127.0.0.2:8001/chat"}, content_type="application/json")
    assert moved.status_code == 400
    assert moved.json() == {"headers": [HOST_CHANGED]}
    other_port = api.patch(url, {"url": "http://127.0.0.1:8002/chat"}, content_type="application/json")
    assert other_port.status_code == 400
    target.refresh_from_db()
    assert (target.url, target.headers) == ("http://127.0.0.1:8001/chat", {"X-Key": "k1"})

    # Same host, another path: the headers stay.
    assert api.patch(url, {"url": "http://127.0.0.1:8001/v2/chat"}, content_type="application/json").status_code == 200
    target.refresh_from_db()
    assert (target.url, target.headers) == ("http://127.0.0.1:8001/v2/chat", {"X-Key": "k1"})

    # Given again (here: none), the new host is accepted.
    accepted = api.patch(url, {"url": "http://127.0.0.2:8001/chat", "headers": {}}, content_type="application/json")
    assert accepted.status_code == 200
    target.refresh_from_db()
    assert (target.url, target.headers) == ("http://127.0.0.2:8001/chat", {})
    # No headers stored, nothing to carry: the host may change freely.
    assert api.patch(url, {"url": "http://127.0.0.3:8001/chat"}, content_type="application/json").status_code == 200


@pytest.mark.django_db
def test_the_target_page_refuses_a_new_host_for_stored_headers(member_client, workspace):
    target = f.TargetFactory(workspace=workspace, url="http://127.0.0.1:8001/chat", headers={"X-Key": "k1"})
    form = {"name": target.name, "channel": "chat", "kind": "http_json", "url": "http://127.0.0.2:8001/chat",
            "phone_number": "", "headers": "", "request_template": json.dumps(target.request_template),
            "response_path": target.response_path, "model": ""}

    refused = member_client.post(f"/targets/{target.pk}/edit/", form)
    assert refused.status_code == 200
    assert refused.context["form"].errors["headers"] == [HOST_CHANGED]
    target.refresh_from_db()
    assert (target.url, target.headers) == ("http://127.0.0.1:8001/chat", {"X-Key": "k1"})

    accepted = member_client.post(f"/targets/{target.pk}/edit/", {**form, "headers": '{"X-Key": "k2"}'})
    assert accepted.status_code == 302
    target.refresh_from_db()
    assert (target.url, target.headers) == ("http://127.0.0.2:8001/chat", {"X-Key": "k2"})


@pytest.mark.django_db
def test_the_admin_refuses_a_new_host_for_stored_headers(member_client, workspace):
    target = f.TargetFactory(workspace=workspace, url="http://127.0.0.1:8001/chat", headers={"X-Key": "k1"})
    data = submitted_data(member_client.get(change_url(target)))
    data["url"] = "https://127.0.0.1:8001/chat"

    refused = member_client.post(change_url(target), data)
    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["headers"] == [HOST_CHANGED]
    target.refresh_from_db()
    assert target.url == "http://127.0.0.1:8001/chat"

    assert member_client.post(change_url(target), {**data, "headers": '{"X-Key": "k2"}'}).status_code == 302
    target.refresh_from_db()
    assert (target.url, target.headers) == ("https://127.0.0.1:8001/chat", {"X-Key": "k2"})


# A queued run and the target's secrets ---------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="secrets", beat=True)
    yield started
    started.stop()


def ended(run_id) -> Run:
    return wait_for(lambda: (run := Run.objects.get(pk=run_id)).status in ("completed", "failed", "cancelled") and run,
                    30, message=f"run {run_id} to end")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["none", "headers", "host"])
def test_a_queued_run_uses_the_headers_it_was_queued_with_or_fails(worker, api, workspace, change):
    queued_bot = FakeTarget(lambda message, n: (200, {"reply": "hello"}))
    other_bot = FakeTarget(lambda message, n: (200, {"reply": "hello"}))
    try:
        target = f.TargetFactory(workspace=workspace, url=queued_bot.url, headers={"X-Key": "queued-key"})
        path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, target=target),
                             script=[{"say": "hi"}, {"end_call": True}])
        assert api.post("/api/v1/queue/pause/").json()["queue_paused"] is True
        run_id = api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"]
        edit = {"none": {"name": "Renamed"}, "headers": {"headers": {"X-Key": "current-key"}},
                "host": {"url": other_bot.url, "headers": {"X-Key": "current-key"}}}[change]
        assert api.patch(f"/api/v1/targets/{target.pk}/", edit, content_type="application/json").status_code == 200
        api.post("/api/v1/queue/resume/")
        run = ended(run_id)
    finally:
        queued_bot.close()
        other_bot.close()

    if change == "none":
        assert (run.status, run.verdict) == ("completed", "passed")
        assert [request["headers"]["X-Key"] for request in queued_bot.requests] == ["queued-key"]
    else:
        assert (run.status, run.failure_reason, run.failure_detail) == ("failed", "error", TARGET_CHANGED)
        assert queued_bot.requests == [] and other_bot.requests == []
    assert "queued-key" not in json.dumps(run.snapshot)
