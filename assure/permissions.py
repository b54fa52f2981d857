from rest_framework import permissions

from assure.models import ApiToken, WRITE_ROLES
from assure.tenancy import membership_for, request_workspace


class IsWorkspaceMember(permissions.BasePermission):
    """Signed in with a workspace: viewers read; owners, admins, members and API tokens write."""

    message = "Sign in as a member of a workspace, or use a workspace API token."

    def has_permission(self, request, view) -> bool:
        workspace = request_workspace(request)
        if workspace is None:
            return False
        if isinstance(request.auth, ApiToken) or request.method in permissions.SAFE_METHODS:
            return True
        membership = getattr(request, "membership", None) or membership_for(request.user, workspace)
        return membership is not None and membership.role in WRITE_ROLES
