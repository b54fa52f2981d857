from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from assure.models import Membership, Workspace, validate_max_parallel_runs
from assure.tenancy import request_workspace


class WorkspaceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Workspace
        fields = ["id", "name", "slug", "max_parallel_runs", "queue_paused", "webhook_url", "webhook_secret"]
        read_only_fields = ["id", "slug"]
        extra_kwargs = {"webhook_secret": {"write_only": True}}

    def validate_max_parallel_runs(self, value):
        validate_max_parallel_runs(value)
        return value


class WorkspaceView(APIView):
    """The workspace of the API token (or of the signed-in user)."""

    @extend_schema(responses=WorkspaceSerializer)
    def get(self, request):
        return Response(WorkspaceSerializer(request_workspace(request)).data)

    @extend_schema(request=WorkspaceSerializer, responses=WorkspaceSerializer)
    def patch(self, request):
        workspace = request_workspace(request)
        membership = getattr(request, "membership", None)
        if membership is not None and membership.role not in (Membership.Role.OWNER, Membership.Role.ADMIN):
            self.permission_denied(request, message="Only a workspace owner or admin can change its settings.")
        serializer = WorkspaceSerializer(workspace, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data)
