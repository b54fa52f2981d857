"""Phone numbers: the API (/api/v1/phone-numbers/) and the Phone numbers page.

A number is registered once in the whole installation (its provider routes its calls to one
place), and a number an armed inbound run has reserved stays as it is until the run ends.
"""

import pytest

from telephony.models import PhoneNumber
from tests import factories as f

pytestmark = pytest.mark.django_db

API = "/api/v1/phone-numbers/"
TAKEN = "This number is already registered."


@pytest.fixture
def viewer_client(client, workspace):
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    return client


def armed_run_holding(number: PhoneNumber):
    """An inbound run, live and waiting for its call on ``number``."""
    run = f.RunFactory(path__scenario__workspace=number.workspace, status="running", stage="live")
    PhoneNumber.objects.filter(pk=number.pk).update(reserved_by=run)
    number.refresh_from_db()
    return run


# API ---------------------------------------------------------------------------------------------

def test_create_list_retrieve_update_delete(api, workspace):
    created = api.post(API, {"number": "+14155550100", "direction": "outbound", "provider": "twilio",
                             "label": "Support caller ID", "provider_sid": "PN123"}, content_type="application/json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert {k: body[k] for k in ("number", "direction", "provider", "label", "provider_sid", "reserved_by")} == {
        "number": "+14155550100", "direction": "outbound", "provider": "twilio", "label": "Support caller ID",
        "provider_sid": "PN123", "reserved_by": None}
    assert set(body) == {"id", "number", "direction", "provider", "label", "provider_sid", "reserved_by", "created_at"}
    assert PhoneNumber.objects.get(pk=body["id"]).workspace == workspace

    listed = api.get(API).json()
    assert [n["number"] for n in listed["results"]] == ["+14155550100"]
    assert api.get(f"{API}{body['id']}/").json()["label"] == "Support caller ID"

    patched = api.patch(f"{API}{body['id']}/", {"label": "Sales", "direction": "inbound"}, content_type="application/json")
    assert patched.status_code == 200, patched.json()
    assert PhoneNumber.objects.get(pk=body["id"]).label == "Sales"
    assert PhoneNumber.objects.get(pk=body["id"]).direction == "inbound"

    assert api.delete(f"{API}{body['id']}/").status_code == 204
    assert not PhoneNumber.objects.filter(pk=body["id"]).exists()


def test_a_number_must_be_e164(api):
    response = api.post(API, {"number": "0415 555 0100", "provider": "twilio"}, content_type="application/json")
    assert response.status_code == 400
    assert "number" in response.json()
    assert not PhoneNumber.objects.exists()


def test_a_duplicate_in_the_same_workspace_is_a_400(api, workspace):
    f.PhoneNumberFactory(workspace=workspace, number="+14155550100", provider="twilio")
    response = api.post(API, {"number": "+14155550100", "provider": "twilio"}, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"number": [TAKEN]}
    assert PhoneNumber.objects.count() == 1


def test_a_number_of_another_workspace_is_refused_without_saying_whose(api, other_workspace):
    f.PhoneNumberFactory(workspace=other_workspace, number="+14155550100", provider="twilio", label="Their line")
    response = api.post(API, {"number": "+14155550100", "provider": "twilio"}, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"number": [TAKEN]}
    assert other_workspace.name not in response.content.decode()
    assert "Their line" not in response.content.decode()


def test_the_same_number_with_another_provider_is_another_number(api, workspace):
    f.PhoneNumberFactory(workspace=workspace, number="+14155550100", provider="twilio")
    response = api.post(API, {"number": "+14155550100", "provider": "loopback"}, content_type="application/json")
    assert response.status_code == 201


def test_changing_a_number_to_a_registered_one_is_a_400(api, workspace):
    f.PhoneNumberFactory(workspace=workspace, number="+14155550100", provider="twilio")
    mine = f.PhoneNumberFactory(workspace=workspace, number="+14155550101", provider="twilio")
    response = api.patch(f"{API}{mine.pk}/", {"number": "+14155550100"}, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"number": [TAKEN]}
    mine.refresh_from_db()
    assert mine.number == "+14155550101"


def test_another_workspaces_number_is_a_404(api, other_workspace):
    theirs = f.PhoneNumberFactory(workspace=other_workspace)
    assert api.get(f"{API}{theirs.pk}/").status_code == 404
    assert api.patch(f"{API}{theirs.pk}/", {"label": "mine now"}, content_type="application/json").status_code == 404
    assert api.delete(f"{API}{theirs.pk}/").status_code == 404
    assert api.get(API).json()["results"] == []
    theirs.refresh_from_db()
    assert theirs.label == ""


def test_a_reserved_number_cannot_be_deleted_or_repointed_while_its_run_is_armed(api, workspace):
    number = f.PhoneNumberFactory(workspace=workspace, number="+14155550160", direction="inbound", provider="twilio")
    run = armed_run_holding(number)
    assert api.get(f"{API}{number.pk}/").json()["reserved_by"] == str(run.pk)

    refused = api.delete(f"{API}{number.pk}/")
    assert refused.status_code == 400
    assert "armed run" in refused.json()["detail"]
    assert str(run.pk) in refused.json()["detail"]
    assert PhoneNumber.objects.filter(pk=number.pk).exists()

    for change in ({"number": "+14155550161"}, {"provider": "loopback"}, {"direction": "outbound"}):
        response = api.patch(f"{API}{number.pk}/", change, content_type="application/json")
        assert response.status_code == 400, change
        assert "armed run" in response.json()["detail"]
    number.refresh_from_db()
    assert (number.number, number.provider, number.direction) == ("+14155550160", "twilio", "inbound")

    # The label is no part of what the run waits on, and an edit never drops the reservation.
    relabelled = api.patch(f"{API}{number.pk}/", {"label": "Clinic line"}, content_type="application/json")
    assert relabelled.status_code == 200
    number.refresh_from_db()
    assert (number.label, number.reserved_by_id) == ("Clinic line", run.pk)


def test_once_the_run_has_ended_the_number_can_go(api, workspace):
    number = f.PhoneNumberFactory(workspace=workspace, direction="inbound")
    run = armed_run_holding(number)
    type(run).objects.filter(pk=run.pk).update(status="cancelled", stage="done")
    assert api.delete(f"{API}{number.pk}/").status_code == 204
    assert not PhoneNumber.objects.filter(pk=number.pk).exists()


def test_viewers_read_but_do_not_write(client, workspace):
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    number = f.PhoneNumberFactory(workspace=workspace)
    assert client.get(API).status_code == 200
    assert client.post(API, {"number": "+14155550199", "provider": "twilio"},
                       content_type="application/json").status_code == 403
    assert client.delete(f"{API}{number.pk}/").status_code == 403
    assert PhoneNumber.objects.filter(pk=number.pk).exists()


def test_the_schema_documents_phone_numbers(api):
    schema = api.get("/api/schema/?format=json").json()
    assert {"/api/v1/phone-numbers/", "/api/v1/phone-numbers/{id}/"} <= set(schema["paths"])
    properties = schema["components"]["schemas"]["PhoneNumber"]["properties"]
    assert set(properties) == {"id", "number", "direction", "provider", "label", "provider_sid", "reserved_by",
                               "created_at"}
    assert properties["reserved_by"]["readOnly"] is True


# The Phone numbers page --------------------------------------------------------------------------

def test_the_page_lists_the_workspaces_numbers_and_who_holds_them(member_client, workspace, other_workspace):
    free = f.PhoneNumberFactory(workspace=workspace, number="+14155550100", label="Caller ID")
    held = f.PhoneNumberFactory(workspace=workspace, number="+14155550160", direction="inbound")
    run = armed_run_holding(held)
    f.PhoneNumberFactory(workspace=other_workspace, number="+14155550999")
    page = member_client.get("/phone-numbers/").content.decode()
    assert free.number in page and "Caller ID" in page
    assert held.number in page and f'href="/runs/{run.pk}/"' in page
    assert "+14155550999" not in page
    assert 'href="/phone-numbers/"' in page  # the left nav
    assert f'href="/phone-numbers/{free.pk}/edit/"' in page


def test_a_member_adds_edits_and_deletes_a_number(member_client, workspace):
    response = member_client.post("/phone-numbers/new/", {
        "number": "+14155550100", "direction": "outbound", "provider": "twilio", "label": "Caller ID",
        "provider_sid": ""})
    assert response.status_code == 302
    number = PhoneNumber.objects.get(number="+14155550100")
    assert number.workspace == workspace and number.label == "Caller ID"

    response = member_client.post(f"/phone-numbers/{number.pk}/edit/", {
        "number": "+14155550101", "direction": "inbound", "provider": "twilio", "label": "Clinic line",
        "provider_sid": "PN1"})
    assert response.status_code == 302
    number.refresh_from_db()
    assert (number.number, number.direction, number.label) == ("+14155550101", "inbound", "Clinic line")

    assert member_client.post(f"/phone-numbers/{number.pk}/delete/").status_code == 302
    assert not PhoneNumber.objects.filter(pk=number.pk).exists()


def test_the_form_says_a_number_is_taken(member_client, other_workspace):
    f.PhoneNumberFactory(workspace=other_workspace, number="+14155550100", provider="twilio")
    response = member_client.post("/phone-numbers/new/", {
        "number": "+14155550100", "direction": "outbound", "provider": "twilio", "label": "", "provider_sid": ""})
    assert response.status_code == 200
    assert TAKEN in response.content.decode()
    assert other_workspace.name not in response.content.decode()
    assert PhoneNumber.objects.count() == 1


def test_the_page_keeps_a_reserved_number(member_client, workspace):
    number = f.PhoneNumberFactory(workspace=workspace, number="+14155550160", direction="inbound")
    run = armed_run_holding(number)

    confirm = member_client.get(f"/phone-numbers/{number.pk}/delete/").content.decode()
    assert "an armed run has reserved this number" in confirm and f'href="/runs/{run.pk}/"' in confirm
    assert member_client.post(f"/phone-numbers/{number.pk}/delete/").status_code == 409
    assert PhoneNumber.objects.filter(pk=number.pk).exists()

    response = member_client.post(f"/phone-numbers/{number.pk}/edit/", {
        "number": "+14155550161", "direction": "inbound", "provider": "loopback", "label": "", "provider_sid": ""})
    assert response.status_code == 200
    assert "armed run" in response.content.decode()
    number.refresh_from_db()
    assert (number.number, number.reserved_by_id) == ("+14155550160", run.pk)


def test_viewers_see_the_list_but_no_form(viewer_client, workspace):
    number = f.PhoneNumberFactory(workspace=workspace)
    page = viewer_client.get("/phone-numbers/")
    assert page.status_code == 200 and number.number in page.content.decode()
    assert "/phone-numbers/new/" not in page.content.decode()
    assert viewer_client.get("/phone-numbers/new/").status_code == 403
    assert viewer_client.get(f"/phone-numbers/{number.pk}/edit/").status_code == 403
    assert viewer_client.post(f"/phone-numbers/{number.pk}/delete/").status_code == 403
    assert PhoneNumber.objects.filter(pk=number.pk).exists()


def test_another_workspaces_number_pages_are_404(member_client, other_workspace):
    theirs = f.PhoneNumberFactory(workspace=other_workspace)
    assert member_client.get(f"/phone-numbers/{theirs.pk}/edit/").status_code == 404
    assert member_client.post(f"/phone-numbers/{theirs.pk}/delete/").status_code == 404
    assert PhoneNumber.objects.filter(pk=theirs.pk).exists()


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/phone-numbers/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_agent_form_points_to_the_phone_numbers_page(member_client):
    page = member_client.get("/agents/new/").content.decode()
    assert '<a href="/phone-numbers/">Phone numbers</a>' in page
