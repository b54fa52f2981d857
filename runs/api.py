from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from assure.api import WorkspaceSerializer
from assure.tenancy import request_workspace, scoped
from runs import batches, selectors, services
from runs.models import Batch, CriterionResult, Run, ToolInvocation, Turn
from runs.pagination import RunPagination
from runs.save_as_path import SaveAsPathError, run_save_as_path
from scenarios import api as scenarios_api
from scenarios.api import PathSerializer
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
        fields = ["name", "kind", "outcome", "rationale", "evidence", "judge_prompt", "judge_answer"]


class RunSerializer(serializers.ModelSerializer):
    failure_help = serializers.CharField(read_only=True)

    class Meta:
        model = Run
        fields = ["id", "path", "scenario", "batch", "retry_of", "auto_retry", "status", "stage", "failure_reason",
                  "failure_detail", "failure_help", "verdict", "persona", "created_at", "started_at", "ended_at",
                  "metrics"]
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
    pagination_class = RunPagination

    def get_queryset(self):
        workspace = request_workspace(self.request)
        if self.action == "retrieve":
            related = [name for extra in _DETAIL_FIELDS.values() for name in extra.select_related]
            return selectors.run_detail_queryset(workspace).select_related(*related)
        if self.action != "list":  # cancel, retry: the run by id
            return selectors.runs_for(workspace)
        params = self.request.query_params
        status_filter = params.get("status")
        if status_filter and status_filter not in Run.Status.values:
            raise serializers.ValidationError({"status": f"Use one of: {', '.join(Run.Status.values)}."})
        filters = {}
        for name in ("scenario", "path", "batch"):
            if params.get(name):
                try:
                    filters[name] = serializers.UUIDField().to_internal_value(params[name])
                except serializers.ValidationError:
                    raise serializers.ValidationError({name: "Must be an id (UUID)."}) from None
        return selectors.run_list(workspace, status=status_filter or None, **filters)

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    @extend_schema(
        parameters=[OpenApiParameter(n, str) for n in ("status", "scenario", "path", "batch")],
        description="Runs, newest first. Page with the `next` and `previous` links (cursor links: each run once, in "
                    "order, while new runs are created), or with `limit` and `offset`.",
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


class RepeatSerializer(serializers.Serializer):
    repeat = serializers.IntegerField(
        min_value=1, max_value=Batch.MAX_REPEAT, default=1,
        help_text=f"Runs of each path (1–{Batch.MAX_REPEAT}); more than one makes a batch whose paths report "
                  "pass@k, pass^k and flakiness.")


def _repeat(request) -> int:
    try:
        data = request.data
    except exceptions.UnsupportedMediaType:
        # These actions took no body before ``repeat``: an empty form post (what many HTTP clients
        # send for a bare POST) still runs once. A form that says something is refused: JSON only.
        if request._request.POST or request._request.FILES:
            raise
        data = {}
    parsed = RepeatSerializer(data=data)
    parsed.is_valid(raise_exception=True)
    return parsed.validated_data["repeat"]


RunBatchSerializer = inline_serializer("RunBatch", {"batch": serializers.UUIDField(), "runs": RunSerializer(many=True)})


class ScenarioRunAllView(APIView):
    @extend_schema(request=RepeatSerializer, responses={201: RunBatchSerializer})
    def post(self, request, pk):
        scenario = get_object_or_404(scoped(Scenario, request_workspace(request)), pk=pk)
        repeat = _repeat(request)
        try:
            batch, runs = services.scenario_run_all(scenario=scenario, created_by=request.user, repeat=repeat)
        except services.RunStateError as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response({"batch": str(batch.pk), "runs": RunSerializer(runs, many=True).data}, status=status.HTTP_201_CREATED)


class PathRunView(APIView):
    @extend_schema(request=RepeatSerializer, responses={201: PolymorphicProxySerializer(
        "PathRunResult", serializers=[RunSerializer, RunBatchSerializer], resource_type_field_name=None)},
        description="One run (`repeat` 1, the default) answers the run; more answer the batch and its runs.")
    def post(self, request, pk):
        path = get_object_or_404(
            scoped(Path, request_workspace(request)).select_related("scenario__agent", "scenario__target"), pk=pk
        )
        repeat = _repeat(request)
        if repeat == 1:
            run = services.path_run(path=path, created_by=request.user)
            return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)
        batch, runs = services.path_run_repeated(path=path, repeat=repeat, created_by=request.user)
        return Response({"batch": str(batch.pk), "runs": RunSerializer(runs, many=True).data}, status=status.HTTP_201_CREATED)


# Batches: the shapes ``runs.batches`` returns, declared for the API's schema.

class BatchCountsSerializer(serializers.Serializer):
    runs = serializers.IntegerField()
    pending = serializers.IntegerField()
    running = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Platform failures (status failed).")
    cancelled = serializers.IntegerField()
    passed = serializers.IntegerField()
    failed_verdict = serializers.IntegerField(help_text="Completed runs judged failed.")
    inconclusive = serializers.IntegerField()


class BatchSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    scenario = serializers.UUIDField(allow_null=True)
    scenario_name = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    repeat = serializers.IntegerField()
    finished = serializers.BooleanField(help_text="Every run has ended.")
    finished_at = serializers.DateTimeField(allow_null=True)
    schedule = serializers.UUIDField(allow_null=True, help_text="The schedule that queued it, if one did.")
    counts = BatchCountsSerializer()
    pass_rate = serializers.FloatField(allow_null=True, help_text="Passed / judged (completed) runs; null if none.")
    latency_ms_p50 = serializers.IntegerField(allow_null=True)
    latency_ms_p90 = serializers.IntegerField(allow_null=True)


class BatchRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(Run.Status.choices)
    verdict = serializers.ChoiceField(Run.Verdict.choices, allow_null=True)
    failure_reason = serializers.ChoiceField(Run.FailureReason.choices, allow_null=True)
    retry_of = serializers.UUIDField(allow_null=True)
    auto_retry = serializers.BooleanField()


class FailedCriterionSerializer(serializers.Serializer):
    run = serializers.UUIDField()
    name = serializers.CharField()
    outcome = serializers.ChoiceField(CriterionResult.Outcome.choices)
    rationale = serializers.CharField()
    evidence = serializers.ListField(child=serializers.IntegerField(), help_text="Turn numbers relied on.")


class BatchPathSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    runs = BatchRunSerializer(many=True)
    total = serializers.IntegerField(help_text="Judged (completed) runs.")
    passes = serializers.IntegerField()
    pass_rate = serializers.FloatField(allow_null=True)
    pass_at_k = serializers.BooleanField(allow_null=True, help_text="At least one judged run passed.")
    pass_all_k = serializers.BooleanField(allow_null=True, help_text="Every judged run passed (pass^k).")
    flaky = serializers.BooleanField(help_text="Runs of the same path snapshot disagree on the verdict.")
    platform_failures = serializers.IntegerField()
    latency_ms_p50 = serializers.IntegerField(allow_null=True)
    latency_ms_p90 = serializers.IntegerField(allow_null=True)
    failed_criteria = FailedCriterionSerializer(many=True, help_text="The first 20; failed_criteria_total counts all.")
    failed_criteria_total = serializers.IntegerField()


class BatchDetailSerializer(BatchSummarySerializer):
    paths = BatchPathSerializer(many=True)


class PathRecordSerializer(serializers.Serializer):
    passes = serializers.IntegerField()
    total = serializers.IntegerField()
    pass_rate = serializers.FloatField(allow_null=True)


class EvidenceTurnSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    speaker = serializers.CharField()
    text = serializers.CharField()


class CriterionSideSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(CriterionResult.Outcome.choices)
    rationale = serializers.CharField()
    run = serializers.UUIDField()
    evidence_turns = EvidenceTurnSerializer(many=True)
    outcomes = serializers.DictField(child=serializers.IntegerField(), help_text="Outcome counts over the runs.")


class CriterionChangeSerializer(serializers.Serializer):
    name = serializers.CharField()
    before = CriterionSideSerializer(allow_null=True)
    after = CriterionSideSerializer(allow_null=True)


class PathChangeSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    before = PathRecordSerializer()
    after = PathRecordSerializer()
    criteria = CriterionChangeSerializer(many=True)


class LatencyChangeSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    p50_before = serializers.IntegerField(allow_null=True)
    p50_after = serializers.IntegerField(allow_null=True)
    p90_before = serializers.IntegerField(allow_null=True)
    p90_after = serializers.IntegerField(allow_null=True)


class NotComparedSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    reason = serializers.CharField()


class BatchComparisonSerializer(serializers.Serializer):
    batch = serializers.UUIDField()
    to = serializers.UUIDField(help_text="The batch compared with (before).")
    newly_failing = PathChangeSerializer(many=True)
    fixed = PathChangeSerializer(many=True)
    still_failing = PathChangeSerializer(many=True)
    flaky = PathChangeSerializer(many=True)
    unchanged_passing = PathChangeSerializer(many=True)
    latency = LatencyChangeSerializer(many=True)
    not_compared = NotComparedSerializer(many=True)


def _uuid_param(request, name: str):
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return serializers.UUIDField().to_internal_value(value)
    except serializers.ValidationError:
        raise serializers.ValidationError({name: ["Must be an id (UUID)."]}) from None


class BatchViewSet(viewsets.GenericViewSet):
    """Batches: every repetition of the paths one "Run all paths" (or one repeated path run) queued."""

    serializer_class = BatchSummarySerializer

    def get_queryset(self):
        return batches.batches_of(request_workspace(self.request))

    @extend_schema(parameters=[OpenApiParameter("scenario", OpenApiTypes.UUID)],
                   responses=BatchSummarySerializer(many=True))
    def list(self, request):
        scenario = _uuid_param(request, "scenario")
        queryset = self.get_queryset()
        if scenario is not None:
            queryset = queryset.filter(scenario_id=scenario)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(batches.batch_summaries(page))

    @extend_schema(responses=BatchDetailSerializer)
    def retrieve(self, request, pk=None):
        return Response(batches.batch_detail(self.get_object()))

    @extend_schema(parameters=[OpenApiParameter(
        "to", OpenApiTypes.UUID, description="The batch to compare with; by default the previous batch of the "
                                             "same scenario.")], responses=BatchComparisonSerializer)
    @action(detail=True, methods=["get"])
    def compare(self, request, pk=None):
        batch = self.get_object()
        to_id = _uuid_param(request, "to")
        to = get_object_or_404(self.get_queryset(), pk=to_id) if to_id is not None else None
        try:
            return Response(batches.batch_compare(batch, to))
        except batches.NoComparison as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None


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


class SaveAsPathSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=200,
                                 help_text='Default: "<path> (saved from run <id>)".')


class RunSaveAsPathView(APIView):
    @extend_schema(request=SaveAsPathSerializer, responses={201: PathSerializer}, description=(
        "A new path of the run's scenario replaying the finished run: the caller's turns become `say` steps, "
        "the target's `expect` steps (its words, case and spacing ignored: loosen them as needed)."))
    def post(self, request, pk):
        run = get_object_or_404(scoped(Run, request_workspace(request)), pk=pk)
        parsed = SaveAsPathSerializer(data=request.data)
        parsed.is_valid(raise_exception=True)
        try:
            path = run_save_as_path(run=run, name=parsed.validated_data.get("name"))
        except SaveAsPathError as exc:
            raise serializers.ValidationError(exc.detail) from None
        return Response(PathSerializer(path).data, status=status.HTTP_201_CREATED)


class ScheduleSerializer(scenarios_api.ScheduleSerializer):
    last_batch = serializers.SerializerMethodField(help_text="The batch the schedule's latest firing queued, or null.")

    class Meta(scenarios_api.ScheduleSerializer.Meta):
        fields = [*scenarios_api.ScheduleSerializer.Meta.fields, "last_batch"]

    def get_last_batch(self, schedule) -> str | None:
        # One query for the whole page of a list (the list serializer's instances), not one per row.
        last_batches = self.context.setdefault("last_batches", {})
        if schedule.pk not in last_batches:
            page = getattr(self.parent, "instance", None) or [schedule]
            found = selectors.last_batches_of([item.pk for item in page])
            last_batches.update({item.pk: found.get(item.pk) for item in page})
        batch = last_batches.get(schedule.pk)
        return str(batch.pk) if batch is not None else None


class ScheduleViewSet(scenarios_api.ScheduleViewSet):
    __doc__ = scenarios_api.ScheduleViewSet.__doc__
    serializer_class = ScheduleSerializer
