from __future__ import annotations

import secrets

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models.functions import Cast
from django.db.models.lookups import Exact
from django.utils import timezone

from assure.models import ApiToken, Membership, Workspace, hash_api_key, validate_max_parallel_runs
from assure.secrets import SecretUnreadable, encrypted_fields, is_current, reencrypt


@transaction.atomic
def workspace_create(*, name: str, slug: str, owner=None, max_parallel_runs: int | None = None) -> Workspace:
    workspace = Workspace(name=name, slug=slug)
    if max_parallel_runs is not None:
        workspace.max_parallel_runs = max_parallel_runs
    workspace.full_clean()
    validate_max_parallel_runs(workspace.max_parallel_runs)
    workspace.save()
    if owner is not None:
        Membership.objects.create(workspace=workspace, user=owner, role=Membership.Role.OWNER)
    return workspace


class LastOwnerError(ValidationError):
    """The change would leave a workspace without an owner."""


def membership_removal_error(*, memberships) -> LastOwnerError | None:
    """Why removing (or demoting) ``memberships`` is refused: it would leave a workspace that has
    owners with none. ``None`` when it may go ahead."""
    leaving = {}
    for membership in memberships:
        if membership.role == Membership.Role.OWNER:
            leaving.setdefault(membership.workspace_id, set()).add(membership.pk)
    for workspace_id, owner_ids in leaving.items():
        others = Membership.objects.filter(workspace_id=workspace_id, role=Membership.Role.OWNER).exclude(pk__in=owner_ids)
        if not others.exists():
            name = Workspace.objects.filter(pk=workspace_id).values_list("name", flat=True).first()
            return LastOwnerError(
                f"{name} would have no owner left: make another member its owner first.", code="last_owner"
            )
    return None


def _lock_workspaces(workspace_ids) -> None:
    # Serializes owner changes of a workspace: two admins each demoting one of two owners at once
    # must not both succeed.
    list(Workspace.objects.select_for_update().filter(pk__in=set(workspace_ids)).values_list("pk"))


@transaction.atomic
def membership_set(*, workspace: Workspace, user, role: str) -> Membership:
    """Give ``user`` ``role`` in ``workspace``; the last owner cannot be demoted."""
    _lock_workspaces([workspace.pk])
    current = Membership.objects.filter(workspace=workspace, user=user).first()
    if current is not None and role != Membership.Role.OWNER:
        error = membership_removal_error(memberships=[current])
        if error is not None:
            raise error
    membership, _ = Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def membership_delete(*, memberships) -> None:
    """Remove ``memberships``; refused as a whole if a workspace would lose its last owner."""
    memberships = list(memberships)
    _lock_workspaces(m.workspace_id for m in memberships)
    error = membership_removal_error(memberships=memberships)
    if error is not None:
        raise error
    Membership.objects.filter(pk__in=[m.pk for m in memberships]).delete()


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


@dataclass
class SecretsRotation:
    """What ``secrets_rotate`` did to one encrypted field."""

    label: str  # "scenarios.Target.headers"
    reencrypted: int = 0
    current: int = 0  # already encrypted with the first key
    unreadable: list = field(default_factory=list)  # primary keys of rows no key decrypts


def secrets_rotate() -> list[SecretsRotation]:
    """Re-encrypt every stored secret with the first of ASSURE_SECRET_KEYS. Steps, per encrypted field:

    1. Read the stored tokens as they are (cast to plain text, so nothing is decrypted).
    2. A token the first key decrypts is current and left alone: running again changes nothing.
    3. Any other is re-encrypted with the first key and written back only if the row still holds
       the token read; an edit saved meanwhile was encrypted with the first key already.
    4. A token no key decrypts is reported (its row's id), never changed.
    """
    report = []
    for model, secret_field in encrypted_fields():
        rotation = SecretsRotation(label=f"{model._meta.label}.{secret_field.name}")
        raw = Cast(secret_field.attname, output_field=models.TextField())
        rows = model._base_manager.annotate(token=raw).exclude(token="").values_list("pk", "token")
        for pk, token in rows.iterator():
            if is_current(token):
                rotation.current += 1
                continue
            try:
                rotated = reencrypt(token, what=rotation.label)
            except SecretUnreadable:
                rotation.unreadable.append(pk)
                continue
            still_there = model._base_manager.filter(Exact(raw, token), pk=pk)
            # A plain-text value: the field would encrypt the token a second time.
            if still_there.update(**{secret_field.attname: models.Value(rotated, output_field=models.TextField())}):
                rotation.reencrypted += 1
        report.append(rotation)
    return report
