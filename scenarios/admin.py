from django.contrib import admin

from assure.admin_scoping import (
    SameWorkspaceInlineFormSet,
    SecretFieldsForm,
    WorkspaceScopedMixin,
    change_link,
    changelist_link,
)
from scenarios.forms import TargetHeadersForm
from scenarios.models import Agent, CustomFunction, Path, Scenario, Schedule, Target
from scenarios import schedules, services
from scenarios.services import SYNC_RELEVANT_FIELDS

# Set by the sync service, never by hand: a function is usable only once its webhook is synced.
SYNC_FIELDS = ("sync_status", "sync_error", "synced_at")


class AgentForm(SecretFieldsForm):
    secret_fields = ("llm_api_key",)


class CustomFunctionForm(SecretFieldsForm):
    secret_fields = ("secret",)

    def save(self, commit=True):
        # Compare with the stored row: a blank secret input or a reformatted JSON schema shows up
        # in changed_data without changing anything.
        if self.instance.pk:
            stored = CustomFunction.objects.filter(pk=self.instance.pk).first()
            if stored is not None:
                changed = [name for name in SYNC_RELEVANT_FIELDS if getattr(stored, name) != getattr(self.instance, name)]
                services.function_mark_changed(function=self.instance, changed_fields=changed)
        return super().save(commit)


def request_sync_unless_synced(function: CustomFunction) -> None:
    """After a save: a function that is not synced (new, changed, or still in error) is probed again."""
    if function.sync_status != CustomFunction.SyncStatus.SYNCED:
        services.function_request_sync(function=function)


class CustomFunctionInline(WorkspaceScopedMixin, admin.StackedInline):
    model = CustomFunction
    form = CustomFunctionForm
    formset = SameWorkspaceInlineFormSet
    hidden_from_viewers = ("secret",)
    fields = ["name", "description", "parameters", "url", "secret", *SYNC_FIELDS]
    readonly_fields = SYNC_FIELDS
    extra = 0
    show_change_link = True


@admin.register(Agent)
class AgentAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    form = AgentForm
    hidden_from_viewers = ("llm_api_key",)
    inlines = [CustomFunctionInline]
    list_display = ["name", "workspace", "language", "voice_provider", "voice", "llm_model", "max_duration_seconds"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "voice_provider", "language"]
    search_fields = ["name", "instructions"]
    list_select_related = ["workspace"]

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is CustomFunction:
            for function in [*formset.new_objects, *(obj for obj, _ in formset.changed_objects)]:
                request_sync_unless_synced(function)


@admin.register(CustomFunction)
class CustomFunctionAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    form = CustomFunctionForm
    hidden_from_viewers = ("secret",)
    list_display = ["name", "agent_link", "workspace", "sync_status", "synced_at", "url"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "sync_status"]
    search_fields = ["name", "description", "url", "agent__name"]
    list_select_related = ["agent", "workspace"]
    readonly_fields = [*SYNC_FIELDS, "updated_at"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        request_sync_unless_synced(obj)

    @admin.display(description="agent", ordering="agent__name")
    def agent_link(self, obj):
        return change_link(obj.agent)


@admin.register(Target)
class TargetAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    # Headers carry the target's credentials: an input that never shows them, for those who edit
    # the target; nowhere else.
    form = TargetHeadersForm
    hidden_from_viewers = ("headers",)
    list_display = ["name", "workspace", "channel", "kind", "endpoint"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "channel", "kind"]
    search_fields = ["name", "url", "phone_number"]
    list_select_related = ["workspace"]

    def save_model(self, request, obj, form, change):
        self.ensure_writable(request, obj)
        services.target_save(target=obj, headers_given=form.headers_given)

    @admin.display(description="endpoint")
    def endpoint(self, obj):
        return obj.phone_number or obj.url or None


class PathInline(WorkspaceScopedMixin, admin.StackedInline):
    model = Path
    formset = SameWorkspaceInlineFormSet
    fields = ["name", "narrative", "script", "criteria"]
    extra = 0
    show_change_link = True


@admin.register(Scenario)
class ScenarioAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    inlines = [PathInline]
    list_display = ["name", "workspace", "channel", "direction", "agent_link", "target_link", "runs"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "channel", "direction"]
    search_fields = ["name", "description", "agent__name", "target__name"]
    list_select_related = ["workspace", "agent", "target"]

    def get_readonly_fields(self, request, obj=None):
        return ["runs"] if obj is not None else []

    @admin.display(description="agent", ordering="agent__name")
    def agent_link(self, obj):
        return change_link(obj.agent)

    @admin.display(description="target", ordering="target__name")
    def target_link(self, obj):
        return change_link(obj.target)

    @admin.display(description="runs")
    def runs(self, obj):
        return changelist_link("runs.run", "Runs", scenario__id__exact=obj.pk)


@admin.register(Path)
class PathAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["name", "scenario_link", "workspace", "created_at", "runs"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "scenario__channel"]
    search_fields = ["name", "narrative", "scenario__name"]
    list_select_related = ["workspace", "scenario"]

    def get_readonly_fields(self, request, obj=None):
        return ["runs"] if obj is not None else []

    @admin.display(description="scenario", ordering="scenario__name")
    def scenario_link(self, obj):
        return change_link(obj.scenario)

    @admin.display(description="runs")
    def runs(self, obj):
        return changelist_link("runs.run", "Runs", path__id__exact=obj.pk)


class ScheduleForm(SecretFieldsForm):
    secret_fields = ("slack_webhook_url",)


@admin.register(Schedule)
class ScheduleAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    form = ScheduleForm
    hidden_from_viewers = ("slack_webhook_url",)
    list_display = ["__str__", "scenario_link", "workspace", "enabled", "repeat", "next_run_at"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "enabled"]
    search_fields = ["cron", "timezone", "scenario__name"]
    list_select_related = ["workspace", "scenario"]
    readonly_fields = ["next_run_at", "disabled_reason", "firings"]

    def save_model(self, request, obj, form, change):
        # The next due time follows from the cron, the time zone and enabled: the service sets it.
        self.ensure_writable(request, obj)
        schedules.schedule_save(schedule=obj)

    @admin.display(description="scenario", ordering="scenario__name")
    def scenario_link(self, obj):
        return change_link(obj.scenario)

    @admin.display(description="firings")
    def firings(self, obj):
        # By name, like a path's runs: what each due time queued is recorded by the runs app.
        return changelist_link("runs.schedulefiring", "Firings", schedule__id__exact=obj.pk)
