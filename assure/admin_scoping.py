"""What every operator admin screen shares: workspace scoping, plus the helpers all of them use.

Superusers (the platform's operators) see and edit everything.
A staff user who is not a superuser works only inside the workspaces they are a member of, and
their role in each workspace decides what they may do there, not Django's model permissions:

- any membership: view;
- a role in the admin's ``write_roles`` (owner, admin, member for workspace data; owner and admin
  for the workspace itself, its memberships and its API tokens): add, change, delete.

Another workspace's objects are absent from their querysets, so the admin answers a request for
one as it answers for a deleted object (a redirect to the index), never with the object.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django import forms
from django.core.exceptions import PermissionDenied
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html

from assure.models import WRITE_ROLES, Membership
from assure.tenancy import user_workspaces

MANAGE_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


def workspace_id_of(obj):
    """The id of the workspace ``obj`` belongs to, following its model's ``workspace_path``."""
    *hops, last = obj.workspace_path.split("__")
    for hop in hops:
        obj = getattr(obj, hop)
    return obj.pk if last == "pk" else getattr(obj, f"{last}_id")


def workspace_roles(request) -> dict:
    """The user's role in each of their workspaces, by workspace id.

    Kept on the request: one admin page asks for permissions dozens of times (the sidebar alone
    asks four questions of every registered model).
    """
    if not hasattr(request, "_admin_workspace_roles"):
        request._admin_workspace_roles = dict(
            Membership.objects.filter(user=request.user).values_list("workspace_id", "role")
        )
    return request._admin_workspace_roles


class WorkspaceScopedMixin:
    """Scopes a ModelAdmin or an inline to the user's workspaces (see the module docstring).

    For an inline, Django passes the parent object as ``obj``; children share their parent's
    workspace, so the same checks apply.
    """

    write_roles: tuple[str, ...] = WRITE_ROLES
    # Fields only those who may change the object get to see (as inputs that never echo them).
    hidden_from_viewers: tuple[str, ...] = ()

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.for_workspaces(user_workspaces(request.user))

    def writable_workspace_ids(self, request) -> list:
        return [ws_id for ws_id, role in workspace_roles(request).items() if role in self.write_roles]

    def _has_role(self, request, obj, roles) -> bool:
        if request.user.is_superuser:
            return True
        user_roles = workspace_roles(request)
        if obj is None:
            return any(role in roles for role in user_roles.values())
        return user_roles.get(workspace_id_of(obj)) in roles

    def has_module_permission(self, request):
        return request.user.is_superuser or bool(workspace_roles(request))

    def has_view_permission(self, request, obj=None):
        return self._has_role(request, obj, Membership.Role.values)

    def has_add_permission(self, request, obj=None):
        return self._has_role(request, obj, self.write_roles)

    def has_change_permission(self, request, obj=None):
        return self._has_role(request, obj, self.write_roles)

    def has_delete_permission(self, request, obj=None):
        return self._has_role(request, obj, self.write_roles)

    def ensure_writable(self, request, obj) -> None:
        """Refuse to save an object into a workspace where the user may not write."""
        if not self._has_role(request, obj, self.write_roles):
            raise PermissionDenied

    def save_model(self, request, obj, form, change):
        self.ensure_writable(request, obj)
        super().save_model(request, obj, form, change)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        related = db_field.related_model
        if not request.user.is_superuser and hasattr(related, "workspace_path"):
            kwargs["queryset"] = related._default_manager.for_workspaces(self.writable_workspace_ids(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is not None and "workspace" in form.base_fields:
            # An object never moves to another workspace: its children (paths, functions, runs)
            # would stay behind. Disabled rather than read-only, because a disabled field stays in
            # the form, so unique constraints that include the workspace are still validated.
            form.base_fields["workspace"].disabled = True
        return form

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if self.has_change_permission(request, obj):
            return fields
        # A view-only page would print every field's value, secrets included.
        return [name for name in fields if name not in self.hidden_from_viewers]


class SameWorkspaceInlineFormSet(BaseInlineFormSet):
    """Inline children take their parent's workspace; the inline form has no workspace field."""

    def full_clean(self):
        # Set just before validation: on an add page, the parent's workspace is known only once
        # the parent form has been validated, and the models' clean() compares workspaces.
        for form in self.forms:
            form.instance.workspace_id = self.instance.workspace_id
        super().full_clean()


class SecretFieldsForm(forms.ModelForm):
    """Secrets render as empty password inputs; left blank, a secret keeps its stored value.

    A stored secret is never sent back to the browser. The price: a secret can be replaced here,
    not cleared.
    """

    secret_fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.secret_fields:
            field = self.fields.get(name)
            if field is None:  # view-only forms have no fields
                continue
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            if getattr(self.instance, name):
                field.help_text = f"{field.help_text} A value is stored: leave blank to keep it.".strip()

    def clean(self):
        cleaned_data = super().clean()
        for name in self.secret_fields:
            if name in self.fields and cleaned_data.get(name) == "":
                cleaned_data[name] = getattr(self.instance, name)
        return cleaned_data


def change_link(obj, text=None):
    """A link to ``obj``'s admin change page; None (shown as the empty value) for no object."""
    if obj is None:
        return None
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def changelist_link(model_label: str, text, **filters):
    """A link to the admin changelist of ``model_label`` ("runs.run"), filtered by ``filters``.

    By label rather than model class, so an earlier app can link to a later one's records
    without importing it.
    """
    app_label, model_name = model_label.lower().split(".")
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), text)


def pretty_json(value):
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))

