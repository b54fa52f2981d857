import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from assure.models import ApiToken
from assure.services import api_token_authenticate, api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db


def test_create_api_token_prints_the_key_once_and_stores_only_its_hash(workspace, client):
    out, err = StringIO(), StringIO()
    call_command("create_api_token", workspace.slug, "--name", "CI pipeline", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert key.startswith("aa_") and len(key) > 40
    assert "will not be shown again" in err.getvalue()
    token = ApiToken.objects.get()
    assert token.name == "CI pipeline"
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(ApiToken.objects.values().get())  # nowhere in the row
    assert client.get("/api/v1/workspace/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200


def test_create_api_token_for_an_unknown_workspace_says_which_exist(workspace):
    with pytest.raises(CommandError, match=rf"No workspace with slug 'nope'. Known workspaces: {workspace.slug}"):
        call_command("create_api_token", "nope", "--name", "x")
    assert not ApiToken.objects.exists()


def test_token_needs_a_name(workspace):
    with pytest.raises(CommandError, match="needs a name"):
        call_command("create_api_token", workspace.slug, "--name", "  ")


def test_revoked_token_no_longer_authenticates(workspace, client):
    token, key = api_token_create(workspace=workspace, name="old")
    assert api_token_authenticate(key=key) == token
    api_token_revoke(token=token)
    assert api_token_authenticate(key=key) is None
    assert client.get("/api/v1/workspace/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 401


def test_last_use_is_recorded(workspace):
    token, key = api_token_create(workspace=workspace, name="ci")
    assert token.last_used_at is None
    api_token_authenticate(key=key)
    token.refresh_from_db()
    assert token.last_used_at is not None
