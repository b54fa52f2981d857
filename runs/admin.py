"""Runs and what they record, read-only.

A run's state moves only through the engine's services (guarded transitions, events, pushes to
the live view); an edit here would bypass all of them. So nobody adds or changes these rows in
the admin, and only operators (superusers) delete them.
"""

from django.contrib import admin

from assure.admin_scoping import WorkspaceScopedMixin, change_link, changelist_link, pretty_json
from runs.models import Batch, CriterionResult, Run, RunEvent, ScheduleFiring, ToolInvocation, Turn


class RecordAdminMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


class RecordInline(RecordAdminMixin, WorkspaceScopedMixin, admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False

    # A run's records go when the run goes, never one by one from its page.
    def has_delete_permission(self, request, obj=None):
        return False


class TurnInline(RecordInline):
    model = Turn
    fields = readonly_fields = ["seq", "speaker", "text", "started_ms", "ended_ms", "latency_ms", "is_error"]


class ToolInvocationInline(RecordInline):
    model = ToolInvocation
    fields = readonly_fields = ["seq", "name", "arguments", "result", "at_ms", "duration_ms", "status"]


class CriterionResultInline(RecordInline):
    model = CriterionResult
    fields = readonly_fields = ["position", "name", "kind", "outcome", "rationale", "evidence"]


class RunEventInline(RecordInline):
    model = RunEvent
    fields = readonly_fields = ["at", "from_status", "to_status", "from_stage", "to_stage", "detail"]


class RunLinkMixin:
    @admin.display(description="run", ordering="run__created_at")
    def run_link(self, obj):
        return change_link(obj.run)


@admin.register(Batch)
class BatchAdmin(RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["__str__", "workspace", "scenario_link", "created_by", "created_at", "repeat", "finished_at", "runs"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["scenario__name"]
    list_select_related = ["workspace", "scenario", "created_by"]
    fields = readonly_fields = ["workspace", "scenario_link", "created_by", "created_at", "repeat", "finished_at", "runs"]

    @admin.display(description="scenario", ordering="scenario__name")
    def scenario_link(self, obj):
        return change_link(obj.scenario)

    @admin.display(description="runs")
    def runs(self, obj):
        return changelist_link("runs.run", "Runs", batch__id__exact=obj.pk)


@admin.register(Run)
class RunAdmin(RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    inlines = [TurnInline, ToolInvocationInline, CriterionResultInline, RunEventInline]
    list_display = [
        "__str__", "workspace", "scenario_link", "path_link", "status", "stage", "verdict", "failure_reason",
        "created_at", "ended_at",
    ]
    list_filter = [
        ("workspace", admin.RelatedOnlyFieldListFilter), "status", "stage", "failure_reason", "verdict",
        "scenario__channel",
    ]
    search_fields = ["scenario__name", "path__name", "persona", "failure_detail", "worker"]
    list_select_related = ["workspace", "scenario", "path"]
    date_hierarchy = "created_at"
    fieldsets = [
        (None, {"fields": [
            "workspace", "scenario_link", "path_link", "batch_link", "retry_of_link", "auto_retry", "retries",
            "created_by",
        ]}),
        ("State", {"fields": [
            "status", "stage", "verdict", "failure_reason", "failure_detail", "failure_help",
        ]}),
        ("Timing", {"fields": ["created_at", "admitted_at", "started_at", "ended_at", "heartbeat_at", "worker",
                               "attach_by", "attached_at"]}),
        ("Composition", {"fields": ["persona", "snapshot_json", "metrics_json"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @admin.display(description="scenario", ordering="scenario__name")
    def scenario_link(self, obj):
        return change_link(obj.scenario)

    @admin.display(description="path", ordering="path__name")
    def path_link(self, obj):
        return change_link(obj.path)

    @admin.display(description="batch")
    def batch_link(self, obj):
        return change_link(obj.batch)

    @admin.display(description="retry of")
    def retry_of_link(self, obj):
        return change_link(obj.retry_of)

    @admin.display(description="retries")
    def retries(self, obj):
        return changelist_link("runs.run", "Retries of this run", retry_of__id__exact=obj.pk)

    @admin.display(description="what to check")
    def failure_help(self, obj):
        return obj.failure_help or None

    @admin.display(description="snapshot")
    def snapshot_json(self, obj):
        return pretty_json(obj.snapshot)

    @admin.display(description="metrics")
    def metrics_json(self, obj):
        return pretty_json(obj.metrics)


@admin.register(Turn)
class TurnAdmin(RunLinkMixin, RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["__str__", "run_link", "speaker", "latency_ms", "is_error", "created_at"]
    list_filter = [("run__workspace", admin.RelatedOnlyFieldListFilter), "speaker", "is_error"]
    search_fields = ["text"]
    list_select_related = ["run"]
    fields = readonly_fields = [
        "run_link", "seq", "speaker", "text", "started_ms", "ended_ms", "latency_ms", "is_error", "created_at",
    ]


@admin.register(ToolInvocation)
class ToolInvocationAdmin(RunLinkMixin, RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["__str__", "run_link", "name", "status", "at_ms", "duration_ms", "created_at"]
    list_filter = [("run__workspace", admin.RelatedOnlyFieldListFilter), "status"]
    search_fields = ["name"]
    list_select_related = ["run"]
    fields = readonly_fields = [
        "run_link", "seq", "name", "arguments", "result", "at_ms", "duration_ms", "status", "created_at",
    ]


@admin.register(CriterionResult)
class CriterionResultAdmin(RunLinkMixin, RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["__str__", "run_link", "kind", "outcome"]
    list_filter = [("run__workspace", admin.RelatedOnlyFieldListFilter), "outcome", "kind"]
    search_fields = ["name", "rationale"]
    list_select_related = ["run"]
    fields = readonly_fields = ["run_link", "position", "name", "kind", "outcome", "rationale", "evidence",
                                "judge_prompt", "judge_answer"]


@admin.register(RunEvent)
class RunEventAdmin(RunLinkMixin, RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["__str__", "run_link", "to_status", "to_stage", "at"]
    list_filter = [("run__workspace", admin.RelatedOnlyFieldListFilter), "to_status", "to_stage"]
    search_fields = ["detail"]
    list_select_related = ["run"]
    fields = readonly_fields = ["run_link", "at", "from_status", "to_status", "from_stage", "to_stage", "detail"]


@admin.register(ScheduleFiring)
class ScheduleFiringAdmin(RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    """What each due time of a schedule queued: written by the beat task only."""

    list_display = ["__str__", "schedule_link", "due_at", "fired_at", "batch_link", "detail"]
    list_filter = [("schedule__workspace", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["schedule__scenario__name", "detail"]
    list_select_related = ["schedule__scenario", "batch"]
    fields = readonly_fields = ["schedule_link", "due_at", "fired_at", "batch_link", "detail"]

    @admin.display(description="schedule")
    def schedule_link(self, obj):
        return change_link(obj.schedule)

    @admin.display(description="batch")
    def batch_link(self, obj):
        return change_link(obj.batch)
