from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from assure.api import WorkspaceSerializer
from assure.tenancy import request_workspace, scoped
from runs import selectors, services
from runs.models import CriterionResult, Run, ToolInvocation, Turn
from scenarios.models import Path, Scenario


class TurnSerializer(serializers.ModelSerializer):
    class Meta:
        model = Turn
        fields = ["seq", "speaker", "text", "started_ms", "ended_ms", "latency_ms", "is_error"]


class ToolInvocationSerializer(serializers.ModelSerializer):
    class Meta:
        model = ToolInvocation
        fields = ["seq", "name", "arguments", "result", "at_ms", "duration_ms", "status"]


class CriterionResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = CriterionResult
        fields = ["name", "kind", "outcome", "rationale", "evidence"]


class RunSerializer(serializers.ModelSerializer):
    failure_help = serializers.CharField(read_only=True)

    class Meta:
        model = Run
        fields = ["id", "path", "scenario", "batch", "retry_of", "status", "stage", "failure_reason", "failure_detail",
                  "failure_help", "verdict", "persona", "created_at", "started_at", "ended_at", "metrics"]
        read_only_fields = fields


@dataclass(frozen=True)
class RunDetailField:
    """A field another app adds to ``GET /api/v1/runs/{id}/`` (telephony: the run's ``call``).

    ``make_field`` returns a fresh read-only serializer field (a nested serializer, or a field
    typed with ``extend_schema_field``), so drf-spectacular documents it like any other;
    ``select_related`` names the relations it reads, joined into the detail query so the field
    costs no query of its own."""

    make_field: Callable[[], serializers.Field]
    select_related: tuple[str, ...] = ()


# Filled by the apps that extend a run (from their AppConfig.ready()); runs imports none of them.
_DETAIL_FIELDS: dict[str, RunDetailField] = {}


def register_run_detail_field(name: str, make_field: Callable[[], serializers.Field], *,
                              select_related: tuple[str, ...] = ()) -> None:
    """Add field ``name`` to the run detail. Registering a name again replaces it."""
    _DETAIL_FIELDS[name] = RunDetailField(make_field=make_field, select_related=tuple(select_related))


class RunDetailSerializer(RunSerializer):
    turns = TurnSerializer(many=True, read_only=True)
    tool_invocations = ToolInvocationSerializer(many=True, read_only=True)
    criteria = CriterionResultSerializer(source="criteria_results", many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["turns", "tool_invocations", "criteria"]
        read_only_fields = fields

    def get_fields(self):
        fields = super().get_fields()
        for name, extra in _DETAIL_FIELDS.items():
            fields[name] = extra.make_field()
        return fields


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = RunSerializer

    def get_queryset(self):
        workspace = request_workspace(self.request)
        if self.action == "retrieve":
            related = [name for extra in _DETAIL_FIELDS.values() for name in extra.select_related]
            return selectors.run_detail_queryset(workspace).select_related(*related)
        runs = selectors.runs_for(workspace).order_by("-created_at")
        params = self.request.query_params
        status_filter = params.get("status")
        if status_filter:
            if status_filter not in Run.Status.values:
                raise serializers.ValidationError({"status": f"Use one of: {', '.join(Run.Status.values)}."})
            runs = runs.filter(status=status_filter)
        for name in ("scenario", "path", "batch"):
            if params.get(name):
                try:
                    runs = runs.filter(**{f"{name}_id": serializers.UUIDField().to_internal_value(params[name])})
                except serializers.ValidationError:
                    raise serializers.ValidationError({name: "Must be an id (UUID)."}) from None
        return runs

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    @extend_schema(
        parameters=[OpenApiParameter(n, str) for n in ("status", "scenario", "path", "batch")],
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.get_object()
        services.run_cancel(run_id=run.pk)
        run.refresh_from_db()
        return Response(RunSerializer(run).data)

    @extend_schema(request=None, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        run = self.get_object()
        try:
            new = services.run_retry(run=run, created_by=request.user)
        except services.RunStateError as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response(RunSerializer(new).data, status=status.HTTP_201_CREATED)


class ScenarioRunAllView(APIView):
    @extend_schema(request=None, responses={201: inline_serializer("RunAll", {
        "batch": serializers.UUIDField(), "runs": RunSerializer(many=True)})})
    def post(self, request, pk):
        scenario = get_object_or_404(scoped(Scenario, request_workspace(request)), pk=pk)
        try:
            batch, runs = services.scenario_run_all(scenario=scenario, created_by=request.user)
        except services.RunStateError as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response({"batch": str(batch.pk), "runs": RunSerializer(runs, many=True).data}, status=status.HTTP_201_CREATED)


class PathRunView(APIView):
    @extend_schema(request=None, responses={201: RunSerializer})
    def post(self, request, pk):
        path = get_object_or_404(
            scoped(Path, request_workspace(request)).select_related("scenario__agent", "scenario__target"), pk=pk
        )
        run = services.path_run(path=path, created_by=request.user)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class QueueSerializer(serializers.Serializer):
    paused = serializers.BooleanField()
    max_parallel_runs = serializers.IntegerField()
    running = RunSerializer(many=True)
    queued = RunSerializer(many=True)
    recent = RunSerializer(many=True)


class QueueView(APIView):
    @extend_schema(responses=QueueSerializer)
    def get(self, request):
        return Response(QueueSerializer(selectors.queue_for(request_workspace(request))).data)


class QueuePauseView(APIView):
    @extend_schema(request=None, responses=WorkspaceSerializer)
    def post(self, request):
        workspace = request_workspace(request)
        services.workspace_queue_pause(workspace=workspace)
        return Response(WorkspaceSerializer(workspace).data)


class QueueResumeView(APIView):
    @extend_schema(request=None, responses=WorkspaceSerializer)
    def post(self, request):
        workspace = request_workspace(request)
        services.workspace_queue_resume(workspace=workspace)
        return Response(WorkspaceSerializer(workspace).data)
