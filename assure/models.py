from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from assure.secrets import EncryptedTextField
from assure.validators import validate_http_url


class WorkspaceQuerySet(models.QuerySet):
    """Every tenant-owned model's queryset: ``Model.objects.for_workspace(ws)``.

    Each model names the path from itself to its workspace in ``workspace_path`` (``"workspace"``
    for models with the column, ``"run__workspace"`` for a run's turns), so one helper scopes
    every query, whatever the model.
    """

    def for_workspace(self, workspace: "Workspace | None"):
        if workspace is None:
            return self.none()
        return self.filter(**{self.model.workspace_path: workspace})

    def for_workspaces(self, workspaces):
        return self.filter(**{f"{self.model.workspace_path}__in": workspaces})


class WorkspaceOwned(models.Model):
    """Base of every model that belongs to a workspace directly."""

    workspace_path = "workspace"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("assure.Workspace", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        abstract = True

    def same_workspace_errors(self, **related) -> dict[str, str]:
        """Field errors for related objects that belong to another workspace."""
        errors = {}
        for field, obj in related.items():
            if obj is not None and self.workspace_id and obj.workspace_id != self.workspace_id:
                errors[field] = "Must belong to the same workspace."
        return errors


slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "Use 1–50 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


def default_max_parallel_runs() -> int:
    return settings.DEFAULT_WORKSPACE_MAX_PARALLEL_RUNS


def validate_max_parallel_runs(value: int) -> None:
    """A workspace asks for at most the operator's cap (admission clamps to it regardless). Not a
    field validator: the cap is a setting, and a migration would freeze today's value."""
    cap = settings.MAX_PARALLEL_RUNS_PER_WORKSPACE
    if value is not None and value > cap:
        raise ValidationError(
            f"At most {cap} parallel runs per workspace on this server (MAX_PARALLEL_RUNS_PER_WORKSPACE).",
            code="max_value",
        )


class Workspace(models.Model):
    workspace_path = "pk"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    max_parallel_runs = models.PositiveIntegerField(
        default=default_max_parallel_runs,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="At most this many runs of the workspace are past queued at once.",
    )
    queue_paused = models.BooleanField(
        default=False, help_text="A paused queue admits no new runs; live runs go on."
    )
    webhook_url = models.URLField(
        blank=True, validators=[validate_http_url], help_text="Receives a signed JSON POST when a run completes."
    )
    webhook_secret = EncryptedTextField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_parallel_runs__gte=1), name="workspace_max_parallel_runs_positive"
            )
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    workspace_path = "workspace"

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user_per_workspace")
        ]
        ordering = ["workspace__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"

    @property
    def can_edit(self) -> bool:
        return self.role != self.Role.VIEWER

    @property
    def can_manage(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.ADMIN)


WRITE_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.MEMBER)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A workspace API token. Only the key's SHA-256 is stored; the key is shown once."""

    workspace_path = "workspace"
    PREFIX_LENGTH = 8

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses this token, e.g. 'CI pipeline'.")
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False, help_text="First characters of the key, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
