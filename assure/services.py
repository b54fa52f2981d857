from __future__ import annotations

import secrets

from django.db import transaction
from django.utils import timezone

from assure.models import ApiToken, Membership, Workspace, hash_api_key


@transaction.atomic
def workspace_create(*, name: str, slug: str, owner=None, max_parallel_runs: int | None = None) -> Workspace:
    workspace = Workspace(name=name, slug=slug)
    if max_parallel_runs is not None:
        workspace.max_parallel_runs = max_parallel_runs
    workspace.full_clean()
    workspace.save()
    if owner is not None:
        Membership.objects.create(workspace=workspace, user=owner, role=Membership.Role.OWNER)
    return workspace


def membership_set(*, workspace: Workspace, user, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
    return membership


def api_token_create(*, workspace: Workspace, name: str, created_by=None) -> tuple[ApiToken, str]:
    """Create a token; returns it with its key, which is never stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise ValueError("A token needs a name that says what uses it.")
    key = "aa_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        workspace=workspace,
        name=name,
        prefix=key[3 : 3 + ApiToken.PREFIX_LENGTH],
        key_hash=hash_api_key(key),
        created_by=created_by,
    )
    return token, key


def api_token_authenticate(*, key: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("workspace")
        .filter(key_hash=hash_api_key(key), revoked_at__isnull=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Record use at most once a minute: a busy CI token should not write on every request.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
