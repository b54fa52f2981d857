"""Shared pieces of the v1 API: workspace-scoped viewsets and model validation in serializers."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import exceptions, serializers, viewsets

from assure.tenancy import request_workspace, scoped


class ModelCleanSerializer(serializers.ModelSerializer):
    """Runs the model's ``clean()`` (cross-field rules) on the object as it would be saved, so the
    API refuses what the admin and the UI refuse, with the same field messages."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        model = self.Meta.model
        instance = self.instance or model()
        probe = model(**{f.attname: getattr(instance, f.attname) for f in model._meta.concrete_fields})
        for name, value in attrs.items():
            setattr(probe, name, value)
        workspace = self.context.get("workspace")
        if workspace is not None and hasattr(probe, "workspace_id"):
            probe.workspace_id = workspace.pk
        try:
            probe.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from None
        # DRF checks a unique constraint only when every one of its fields is on the serializer, and
        # the workspace never is: (workspace, name) would end in an IntegrityError. A serializer
        # that declares ``validators = []`` checks uniqueness itself (DRF's own convention).
        if getattr(self.Meta, "validators", None) != []:
            probe._state.adding = self.instance is None
            self._check_unique_constraints(probe)
        return attrs

    def _check_unique_constraints(self, probe) -> None:
        model = type(probe)
        for constraint in model._meta.total_unique_constraints:
            try:
                constraint.validate(model, probe)
            except DjangoValidationError:
                *scope, field_name = constraint.fields
                owner = [
                    ("in this " if name == "workspace" else "of this ") + str(model._meta.get_field(name).verbose_name)
                    for name in scope
                ]
                field = model._meta.get_field(field_name)
                who = " ".join([f"Another {model._meta.verbose_name}", *owner])
                raise serializers.ValidationError({field_name: f"{who} already has this {field.verbose_name}."}) from None


class WorkspaceScopedField(serializers.PrimaryKeyRelatedField):
    """A reference to another object of the request's workspace; others read as not existing."""

    def get_queryset(self):
        return scoped(self.queryset, self.context.get("workspace"))


class WorkspaceViewSet(viewsets.ModelViewSet):
    """CRUD over the request's workspace only: another workspace's object is a 404."""

    model = None

    def get_queryset(self):
        return scoped(self.model, request_workspace(self.request))

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "workspace": request_workspace(self.request)}

    def perform_create(self, serializer):
        serializer.save(workspace=request_workspace(self.request))

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except (ProtectedError, RestrictedError) as exc:
            blocking = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
            users = sorted({str(obj) for obj in blocking})[:5]
            raise Conflict(f"{instance} is still used by: {', '.join(users)}. Change or delete those first.") from None


class Conflict(exceptions.APIException):
    status_code = 409
    default_code = "conflict"
