import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory, override_settings

from assure.models import Membership, Workspace
from scenarios.models import Path, Scenario, Target
from telephony.models import PhoneNumber

pytestmark = pytest.mark.django_db


@override_settings(EMBEDDED_DATABASE=True)
def test_seed_demo_creates_a_workspace_ready_to_run():
    call_command("seed_demo", verbosity=0)
    workspace = Workspace.objects.get(slug="demo")
    user = authenticate(RequestFactory().post("/login/"), username="demo", password="demo")
    assert user is not None and user.is_staff
    assert Membership.objects.get(user=user).workspace == workspace
    kinds = set(Target.objects.filter(workspace=workspace).values_list("channel", "kind"))
    assert kinds == {("chat", "demo"), ("voice", "demo")}
    scenarios = Scenario.objects.filter(workspace=workspace)
    assert set(scenarios.values_list("channel", "direction")) == {
        ("chat", "outbound"), ("voice", "outbound"), ("voice", "inbound")}
    for scenario in scenarios:
        assert scenario.paths.count() >= 1
        assert all(path.script for path in scenario.paths.all())
    # Loopback numbers: the demo agent dials from its caller ID; inbound runs arm the inbound lines.
    numbers = PhoneNumber.objects.filter(workspace=workspace, provider="loopback")
    assert set(numbers.values_list("direction", flat=True)) == {"outbound", "inbound"}
    agent = scenarios.get(channel="voice", direction="outbound").agent
    assert set(agent.outbound_numbers) <= set(numbers.values_list("number", flat=True))


@override_settings(EMBEDDED_DATABASE=True)
def test_seed_demo_is_idempotent():
    call_command("seed_demo", verbosity=0)
    counts = (Scenario.objects.count(), Path.objects.count(), Target.objects.count(), PhoneNumber.objects.count())
    call_command("seed_demo", verbosity=0)
    assert (Scenario.objects.count(), Path.objects.count(), Target.objects.count(),
            PhoneNumber.objects.count()) == counts


@override_settings(EMBEDDED_DATABASE=False)
def test_seed_demo_on_a_real_database_creates_no_demo_password(capsys):
    call_command("seed_demo")
    assert "without a demo user" in capsys.readouterr().out
    assert authenticate(RequestFactory().post("/login/"), username="demo", password="demo") is None
    assert Workspace.objects.filter(slug="demo").exists()
