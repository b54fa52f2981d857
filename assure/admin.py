from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import models

from assure.admin_scoping import (
    MANAGE_ROLES,
    SecretFieldsForm,
    WorkspaceScopedMixin,
    changelist_link,
)
from assure.models import ApiToken, Membership, Workspace, validate_max_parallel_runs
from assure.services import (
    api_token_create,
    api_token_revoke,
    membership_delete,
    membership_removal_error,
    membership_set,
)


class WorkspaceForm(SecretFieldsForm):
    secret_fields = ("webhook_secret",)

    def clean_max_parallel_runs(self):
        value = self.cleaned_data.get("max_parallel_runs")
        validate_max_parallel_runs(value)
        return value


@admin.register(Workspace)
class WorkspaceAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    form = WorkspaceForm
    write_roles = MANAGE_ROLES
    hidden_from_viewers = ("webhook_secret",)
    list_display = ["name", "slug", "max_parallel_runs", "queue_paused", "members", "created_at"]
    list_filter = ["queue_paused"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    # A webhook typed without a scheme is meant to be https (Django 6's default too).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    # Creating and deleting tenants is the platform operators' job.
    def has_add_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    @admin.display(description="members")
    def members(self, obj):
        return changelist_link("assure.membership", "Members", workspace__id__exact=obj.pk)


class MembershipForm(forms.ModelForm):
    def clean(self):
        cleaned = super().clean()
        # Demoting the last owner is refused here, on the form, rather than failing in save_model.
        role = cleaned.get("role")
        if self.instance.pk is not None and role and role != Membership.Role.OWNER:
            error = membership_removal_error(memberships=[Membership.objects.get(pk=self.instance.pk)])
            if error is not None:
                raise error
        return cleaned


@admin.register(Membership)
class MembershipAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    form = MembershipForm
    write_roles = MANAGE_ROLES
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "role"]
    search_fields = ["user__username", "user__email", "workspace__name"]
    list_select_related = ["user", "workspace"]

    def get_readonly_fields(self, request, obj=None):
        # A membership is one user in one workspace; only its role changes.
        return ("user",) if obj is not None else ()

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            # Workspace managers pick among the people they already work with; listing every
            # account would show them other tenants' users. Operators add newcomers.
            kwargs["queryset"] = (
                get_user_model()
                .objects.filter(memberships__workspace__in=self.writable_workspace_ids(request))
                .distinct()
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        self.ensure_writable(request, obj)
        obj.pk = membership_set(workspace=obj.workspace, user=obj.user, role=obj.role).pk

    def get_deleted_objects(self, objs, request):
        # The delete page and the bulk action both ask this first: a removal that would leave a
        # workspace without its owner is shown as protected, so nothing is deleted.
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        error = membership_removal_error(memberships=list(objs))
        if error is not None:
            protected = [*protected, error.message]
        return deleted, model_count, perms_needed, protected

    def delete_model(self, request, obj):
        membership_delete(memberships=[obj])

    def delete_queryset(self, request, queryset):
        membership_delete(memberships=queryset)


class TokenStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    write_roles = MANAGE_ROLES
    list_display = ["name", "prefix", "workspace", "is_active", "created_by", "created_at", "last_used_at"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), TokenStatusFilter]
    search_fields = ["name", "prefix", "workspace__name"]
    list_select_related = ["workspace", "created_by"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["workspace", "name"]
        return ["name", "workspace", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("workspace", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")

    @admin.display(boolean=True, description="active")
    def is_active(self, obj):
        return obj.is_active

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        self.ensure_writable(request, obj)
        token, key = api_token_create(workspace=obj.workspace, name=obj.name, created_by=request.user)
        # The admin goes on with ``obj`` (history entry, redirect): make it the service's token.
        obj.pk = token.pk
        obj.refresh_from_db()
        obj._state.adding = False
        messages.success(request, f"Copy this key now; it will not be shown again: {key}")

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        # The selection may include tokens of workspaces the user only views.
        if not request.user.is_superuser:
            queryset = queryset.filter(workspace__in=self.writable_workspace_ids(request))
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            api_token_revoke(token=token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)
