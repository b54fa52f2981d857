from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from assure.api_base import ModelCleanSerializer, WorkspaceScopedField, WorkspaceViewSet
from assure.tenancy import request_workspace
from scenarios.models import Agent, Channel, CustomFunction, Path, Scenario, Schedule, Target, loopback_number
from scenarios import schedules, services


class AgentSerializer(ModelCleanSerializer):
    class Meta:
        model = Agent
        fields = ["id", "name", "instructions", "language", "voice_provider", "voice", "llm_base_url", "llm_model",
                  "llm_api_key", "max_duration_seconds", "end_conditions", "outbound_numbers", "created_at"]
        extra_kwargs = {"llm_api_key": {"write_only": True}}


class FunctionSerializer(ModelCleanSerializer):
    agent = WorkspaceScopedField(queryset=Agent.objects.all())

    class Meta:
        model = CustomFunction
        fields = ["id", "agent", "name", "description", "parameters", "url", "secret", "sync_status", "sync_error",
                  "synced_at", "created_at"]
        read_only_fields = ["sync_status", "sync_error", "synced_at"]
        extra_kwargs = {"secret": {"write_only": True}}


class TargetSerializer(ModelCleanSerializer):
    rehearse_with = WorkspaceScopedField(
        queryset=Target.objects.all(), required=False, allow_null=True,
        help_text="Rehearsal targets: the chat target (of this workspace) whose replies are spoken on a loopback call.")

    class Meta:
        model = Target
        fields = ["id", "name", "channel", "kind", "url", "phone_number", "rehearse_with", "dial_in_delay_seconds",
                  "headers", "request_template", "response_path", "model", "created_at"]
        extra_kwargs = {
            "headers": {"write_only": True},
            "phone_number": {"help_text": "E.164. Demo and rehearsal voice targets are assigned a fictional loopback "
                                          "number: what is sent for them is replaced."},
        }

    def validate(self, attrs):
        if self.instance is None:
            # A rehearsal target's number derives from its id: fix the id now, so the number
            # Target.clean() assigns is the one the saved target answers on.
            attrs["id"] = uuid.uuid4()
        attrs = super().validate(attrs)
        current = {name: attrs.get(name, getattr(self.instance, name, None)) for name in ("id", "channel", "kind")}
        if current["channel"] == Channel.VOICE and current["kind"] in Target.LOOPBACK_KINDS:
            attrs["phone_number"] = loopback_number(Target(**current))
        return attrs


class ScenarioSerializer(ModelCleanSerializer):
    agent = WorkspaceScopedField(queryset=Agent.objects.all())
    target = WorkspaceScopedField(queryset=Target.objects.all())

    class Meta:
        model = Scenario
        fields = ["id", "name", "description", "channel", "direction", "inbound_window_seconds", "agent", "target",
                  "max_parallel_runs", "criteria", "created_at"]


class PathSerializer(ModelCleanSerializer):
    scenario = WorkspaceScopedField(queryset=Scenario.objects.all())

    class Meta:
        model = Path
        fields = ["id", "scenario", "name", "narrative", "script", "criteria", "created_at"]


class AgentViewSet(WorkspaceViewSet):
    model = Agent
    serializer_class = AgentSerializer


class FunctionViewSet(WorkspaceViewSet):
    model = CustomFunction
    serializer_class = FunctionSerializer
    filterset_fields = ["agent", "sync_status"]

    def perform_create(self, serializer):
        super().perform_create(serializer)
        services.function_request_sync(function=serializer.instance)

    def perform_update(self, serializer):
        function = serializer.instance
        changed = [name for name, value in serializer.validated_data.items() if getattr(function, name) != value]
        services.function_mark_changed(function=function, changed_fields=changed)
        serializer.save()
        # A function that is not synced gets another try with every save, whatever changed.
        if function.sync_status != CustomFunction.SyncStatus.SYNCED:
            services.function_request_sync(function=function)

    @extend_schema(request=None, responses={202: FunctionSerializer})
    @action(detail=True, methods=["post"])
    def sync(self, request, pk=None):
        """Probe the function's webhook again: answers at once with the function `pending`; poll
        it for `synced` or `error` (with `sync_error` saying what to fix)."""
        function = self.get_object()
        services.function_request_sync(function=function)
        return Response(self.get_serializer(function).data, status=status.HTTP_202_ACCEPTED)


class TargetViewSet(WorkspaceViewSet):
    model = Target
    serializer_class = TargetSerializer
    filterset_fields = ["channel", "kind"]

    def perform_update(self, serializer):
        target = serializer.instance
        for name, value in serializer.validated_data.items():
            setattr(target, name, value)
        try:
            services.target_save(target=target, headers_given="headers" in serializer.validated_data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None


class ScenarioViewSet(WorkspaceViewSet):
    model = Scenario
    serializer_class = ScenarioSerializer
    filterset_fields = ["channel"]

    def get_queryset(self):
        return super().get_queryset().select_related("agent", "target")


class PathViewSet(WorkspaceViewSet):
    model = Path
    serializer_class = PathSerializer
    filterset_fields = ["scenario"]


class ScheduleSerializer(ModelCleanSerializer):
    scenario = WorkspaceScopedField(queryset=Scenario.objects.all())
    has_slack_webhook = serializers.SerializerMethodField(help_text="Whether a Slack webhook URL is set (it is "
                                                                    "write-only).")

    class Meta:
        model = Schedule
        fields = ["id", "scenario", "cron", "timezone", "enabled", "repeat", "slack_webhook_url", "has_slack_webhook",
                  "next_run_at", "disabled_reason", "created_at"]
        read_only_fields = ["next_run_at", "disabled_reason"]
        extra_kwargs = {"slack_webhook_url": {"write_only": True}}

    def get_has_slack_webhook(self, schedule) -> bool:
        return bool(schedule.slack_webhook_url)


class ScheduleViewSet(WorkspaceViewSet):
    """A scenario's schedules: each due time of ``cron`` (read in ``timezone``) queues a batch of every
    path, ``repeat`` times; ``next_run_at`` says when. At most every 5 minutes, at most 20 per scenario.
    (The runs app serves it, adding what the schedules queued: ``runs.api.ScheduleViewSet``.)"""

    model = Schedule
    serializer_class = ScheduleSerializer
    filterset_fields = ["scenario", "enabled"]

    def get_queryset(self):
        return super().get_queryset().select_related("scenario")

    def perform_create(self, serializer):
        schedule = Schedule(workspace=request_workspace(self.request), **serializer.validated_data)
        serializer.instance = schedules.schedule_save(schedule=schedule)

    def perform_update(self, serializer):
        schedule = serializer.instance
        for name, value in serializer.validated_data.items():
            setattr(schedule, name, value)
        schedules.schedule_save(schedule=schedule)
