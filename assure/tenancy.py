"""Workspace scoping: which workspace a request acts in, and the one helper that scopes queries.

Every view, API view, admin screen and task reaches tenant data through ``scoped()`` (or the
``for_workspace`` queryset method it calls), never through a bare ``Model.objects``.
"""

from __future__ import annotations

from django.db import models

from assure.models import ApiToken, Membership, Workspace

SESSION_KEY = "workspace_id"


def scoped(model_or_queryset, workspace: Workspace | None) -> models.QuerySet:
    """The objects of ``model_or_queryset`` that belong to ``workspace`` (none for None)."""
    queryset = (
        model_or_queryset._default_manager.all()
        if isinstance(model_or_queryset, type)
        else model_or_queryset
    )
    return queryset.for_workspace(workspace)


def user_workspaces(user) -> models.QuerySet:
    if not getattr(user, "is_authenticated", False) or user.pk is None:
        return Workspace.objects.none()
    return Workspace.objects.filter(memberships__user=user)


def membership_for(user, workspace: Workspace | None) -> Membership | None:
    if workspace is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        return None
    return Membership.objects.filter(user=user, workspace=workspace).select_related("workspace").first()


def session_workspace(request) -> Workspace | None:
    """The workspace the signed-in user chose (or their first), re-checked against membership."""
    user = request.user
    workspaces = user_workspaces(user)
    chosen = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    if chosen:
        workspace = workspaces.filter(pk=chosen).first()
        if workspace is not None:
            return workspace
    return workspaces.order_by("name").first()


def request_workspace(request) -> Workspace | None:
    """The workspace a request acts in: the API token's, or the signed-in user's current one."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiToken):
        return auth.workspace
    return getattr(request, "workspace", None) or session_workspace(request)


def switch_workspace(request, workspace: Workspace) -> None:
    if not user_workspaces(request.user).filter(pk=workspace.pk).exists():
        raise PermissionError("You are not a member of that workspace.")
    request.session[SESSION_KEY] = str(workspace.pk)
