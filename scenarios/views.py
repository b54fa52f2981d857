"""Authoring pages: agents and their custom functions, targets, scenarios and paths.

Every query goes through ``scoped(…, request.workspace)``, so another workspace's object is a 404
like a missing one. Viewers read; every page that changes something answers them 403, whatever
the method. Validation is the models' (through the ModelForms in ``scenarios/forms.py``).

The scenario page itself (``/scenarios/<id>/``: paths, Run all paths, live statuses) lives in
``runs/views.py``; the pages here link to it by path and return to it after saving.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, ProtectedError, RestrictedError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views import generic
from django.views.decorators.http import require_POST

from assure.tenancy import scoped
from scenarios import schedules, selectors
from scenarios.cron import MIN_INTERVAL_MINUTES, known_timezones
from scenarios.forms import AgentForm, FunctionForm, PathForm, ScenarioForm, ScheduleForm, TargetForm
from scenarios.models import Agent, CustomFunction, Path, Scenario, Schedule, Target


def can_edit(request) -> bool:
    membership = getattr(request, "membership", None)
    return membership is not None and membership.can_edit


def require_editor(request) -> None:
    if not can_edit(request):
        raise PermissionDenied("Viewers can read this workspace but not change it.")


def scenario_url(scenario_id) -> str:
    # By path, not reverse("runs:scenario-detail"): the page belongs to runs/, and these pages must
    # work whether or not it is installed.
    return f"/scenarios/{scenario_id}/"


# Shared view classes -------------------------------------------------------------------------------


class ScopedMixin(LoginRequiredMixin):
    model: type

    def get_queryset(self):
        return scoped(self.model, self.request.workspace)


class EditorMixin(ScopedMixin):
    """A page that changes data: signed-in viewers get 403 for GET and POST alike."""

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            require_editor(request)
        return super().dispatch(request, *args, **kwargs)


class FormPageMixin(EditorMixin):
    """Create and edit pages: one template, the workspace passed to the form, saved atomically."""

    template_name = "scenarios/form.html"
    noun = ""  # "agent", shown in headings and messages

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        kwargs["workspace"] = self.request.workspace
        return kwargs

    def form_valid(self, form):
        creating = form.instance._state.adding
        with transaction.atomic():
            self.object = form.save()
            self.after_save(self.object)
        verb = "created" if creating else "saved"
        messages.success(self.request, f"{self.noun.capitalize()} “{self.object}” {verb}.")
        return redirect(self.get_success_url())

    def after_save(self, obj) -> None:
        """Further changes that belong to the same transaction as the save."""

    def get_object(self, queryset=None):
        obj = super().get_object(queryset)
        # The form writes what was posted onto the object before validating it; headings keep
        # the stored name even when the posted one is rejected.
        self.stored_name = str(obj)
        return obj

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        editing = self.object is not None and not self.object._state.adding
        context.update(
            page_title=f"Edit {self.noun} “{self.stored_name}”" if editing else f"New {self.noun}",
            submit_label="Save changes" if editing else f"Create {self.noun}",
            cancel_url=self.get_cancel_url(),
            noun=self.noun,
        )
        return context

    def get_cancel_url(self) -> str:
        return self.get_success_url()


def crumbs(*pairs) -> list[dict]:
    return [{"label": label, "url": url} for label, url in pairs]


class DeletePageMixin(EditorMixin):
    """Confirm on GET, delete on POST. A delete the database refuses (a RESTRICT or PROTECT
    foreign key) re-renders the page saying what is in the way, instead of a 500."""

    template_name = "scenarios/confirm_delete.html"
    noun = ""

    def blocked_by(self):
        """Objects that keep this one from being deleted (shown on the confirm page)."""
        return []

    def consequences(self) -> list[str]:
        """What else goes with it, in plain words."""
        return []

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            noun=self.noun,
            blocked_by=list(self.blocked_by()),
            consequences=self.consequences(),
            cancel_url=self.get_cancel_url(),
        )
        return context

    def get_cancel_url(self) -> str:
        return self.get_success_url()

    def form_valid(self, form):
        name = str(self.object)
        success_url = self.get_success_url()
        try:
            with transaction.atomic():
                self.object.delete()
        except (RestrictedError, ProtectedError):
            context = self.get_context_data(form=form, delete_refused=True)
            return self.render_to_response(context, status=409)
        messages.success(self.request, f"{self.noun.capitalize()} “{name}” deleted.")
        return redirect(success_url)


def scenarios_using(workspace, **lookup):
    return scoped(Scenario, workspace).filter(**lookup).order_by("name")


# Agents --------------------------------------------------------------------------------------------


class AgentList(ScopedMixin, generic.ListView):
    model = Agent
    template_name = "scenarios/agent_list.html"
    context_object_name = "agents"

    def get_queryset(self):
        return super().get_queryset().annotate(
            function_count=Count("functions", distinct=True), scenario_count=Count("scenarios", distinct=True)
        )


class AgentDetail(ScopedMixin, generic.DetailView):
    """The agent's settings and its functions panel; htmx polls and Retry swap just the panel."""

    model = Agent
    context_object_name = "agent"

    def get_template_names(self):
        if self.request.htmx and self.request.htmx.target == "functions-panel":
            return ["scenarios/partials/functions_panel.html"]
        return ["scenarios/agent_detail.html"]

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(functions_panel_context(self.object))
        context["used_by"] = scenarios_using(self.request.workspace, agent=self.object)
        return context


def functions_panel_context(agent: Agent) -> dict:
    """What the functions panel shows: each function, and one banner for all of them.

    Red when any function failed to sync (with the most recent error), amber when any is still
    pending, green otherwise (also for no functions: nothing keeps a run from starting).
    """
    functions = list(scoped(CustomFunction, agent.workspace).filter(agent=agent).order_by("name"))
    failed = [f for f in functions if f.sync_status == CustomFunction.SyncStatus.ERROR]
    pending = [f for f in functions if f.sync_status == CustomFunction.SyncStatus.PENDING]
    if failed:
        sync_state = "error"
    elif pending:
        sync_state = "pending"
    else:
        sync_state = "synced"
    return {
        "agent": agent,
        "functions": functions,
        "sync_state": sync_state,
        "failed_count": len(failed),
        "pending_count": len(pending),
        "latest_failure": max(failed, key=lambda f: f.updated_at) if failed else None,
    }


class AgentFormMixin(FormPageMixin):
    model = Agent
    form_class = AgentForm
    noun = "agent"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(("Agents", reverse("scenarios:agent-list")))
        return context


class AgentCreate(AgentFormMixin, generic.CreateView):

    def get_success_url(self):
        return reverse("scenarios:agent-detail", args=[self.object.pk])

    def get_cancel_url(self):
        return reverse("scenarios:agent-list")


class AgentUpdate(AgentFormMixin, generic.UpdateView):

    def get_success_url(self):
        return reverse("scenarios:agent-detail", args=[self.object.pk])


class AgentDelete(DeletePageMixin, generic.DeleteView):
    model = Agent
    noun = "agent"

    def blocked_by(self):
        return scenarios_using(self.request.workspace, agent=self.object)

    def consequences(self):
        count = self.object.functions.count()
        return [f"Its {count} custom function{'s' if count != 1 else ''} will be deleted with it."] if count else []

    def get_success_url(self):
        return reverse("scenarios:agent-list")

    def get_cancel_url(self):
        return reverse("scenarios:agent-detail", args=[self.object.pk])


# Custom functions ----------------------------------------------------------------------------------


def request_sync(function: CustomFunction) -> None:
    # Imported here, not at module level: the sync service is owned by scenarios/services.py and
    # these pages must import (and be testable) on their own.
    from scenarios.services import function_request_sync

    function_request_sync(function=function)


class FunctionFormMixin(FormPageMixin):
    model = CustomFunction
    form_class = FunctionForm
    noun = "function"

    def after_save(self, function):
        # Any change may change what the webhook answers: probe it again, in the background.
        request_sync(function)

    def get_success_url(self):
        return reverse("scenarios:agent-detail", args=[self.agent.pk])

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(
            ("Agents", reverse("scenarios:agent-list")),
            (self.agent.name, reverse("scenarios:agent-detail", args=[self.agent.pk])),
        )
        context["intro"] = (
            "A tool the simulated caller can call. Saving probes its webhook in the background; "
            "runs of this agent start once it is synced."
        )
        return context


class FunctionCreate(FunctionFormMixin, generic.CreateView):
    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            self.agent = get_object_or_404(scoped(Agent, request.workspace), pk=kwargs["pk"])
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        kwargs["instance"] = CustomFunction(agent=self.agent, workspace=self.request.workspace)
        return kwargs


class FunctionUpdate(FunctionFormMixin, generic.UpdateView):
    def get_object(self, queryset=None):
        function = super().get_object(queryset)
        self.agent = function.agent
        return function


class FunctionDelete(DeletePageMixin, generic.DeleteView):
    model = CustomFunction
    noun = "function"

    def get_success_url(self):
        return reverse("scenarios:agent-detail", args=[self.object.agent_id])


@login_required
@require_POST
def function_retry_sync(request, pk):
    """Queue a sync for every function of the agent that is not synced (the panel's Retry)."""
    require_editor(request)
    agent = get_object_or_404(scoped(Agent, request.workspace), pk=pk)
    functions = list(
        scoped(CustomFunction, request.workspace).filter(agent=agent).exclude(sync_status=CustomFunction.SyncStatus.SYNCED)
    )
    with transaction.atomic():
        for function in functions:
            request_sync(function)
    if request.htmx:
        return render(request, "scenarios/partials/functions_panel.html", functions_panel_context(agent))
    if functions:
        messages.success(request, f"Sync queued for {len(functions)} function{'s' if len(functions) != 1 else ''}.")
    else:
        messages.info(request, "Every function is already synced.")
    return redirect("scenarios:agent-detail", pk=agent.pk)


# Targets -------------------------------------------------------------------------------------------


class TargetList(ScopedMixin, generic.ListView):
    model = Target
    template_name = "scenarios/target_list.html"
    context_object_name = "targets"

    def get_queryset(self):
        return super().get_queryset().select_related("rehearse_with").annotate(scenario_count=Count("scenarios"))


class TargetFormMixin(FormPageMixin):
    model = Target
    form_class = TargetForm
    noun = "target"

    def get_success_url(self):
        return reverse("scenarios:target-list")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(("Targets", reverse("scenarios:target-list")))
        context["intro"] = (
            "The system under test: a phone number for voice, or a chat endpoint. "
            "The built-in demo target works offline."
        )
        return context


class TargetCreate(TargetFormMixin, generic.CreateView):
    pass


class TargetUpdate(TargetFormMixin, generic.UpdateView):
    pass


class TargetDelete(DeletePageMixin, generic.DeleteView):
    model = Target
    noun = "target"

    def blocked_by(self):
        return scenarios_using(self.request.workspace, target=self.object)

    def get_success_url(self):
        return reverse("scenarios:target-list")


# Scenarios -----------------------------------------------------------------------------------------


class ScenarioList(ScopedMixin, generic.ListView):
    model = Scenario
    template_name = "scenarios/scenario_list.html"
    context_object_name = "scenarios"

    def get_queryset(self):
        return super().get_queryset().select_related("agent", "target").annotate(path_count=Count("paths"))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if not context["scenarios"]:
            # The empty state walks a new user through what a scenario needs first.
            context["has_agents"] = scoped(Agent, self.request.workspace).exists()
            context["has_targets"] = scoped(Target, self.request.workspace).exists()
        return context


class ScenarioFormMixin(FormPageMixin):
    model = Scenario
    form_class = ScenarioForm
    noun = "scenario"

    def get_success_url(self):
        return scenario_url(self.object.pk)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(("Scenarios", reverse("scenarios:scenario-list")))
        if self.object is not None:
            context["breadcrumbs"] += crumbs((self.stored_name, scenario_url(self.object.pk)))
        # A scenario needs both; say which is missing rather than offer an empty choice.
        workspace, missing = self.request.workspace, []
        if not scoped(Agent, workspace).exists():
            missing.append({"label": "an agent", "url": reverse("scenarios:agent-create")})
        if not scoped(Target, workspace).exists():
            missing.append({"label": "a target", "url": reverse("scenarios:target-create")})
        context["missing"] = missing
        return context


class ScenarioCreate(ScenarioFormMixin, generic.CreateView):
    def get_cancel_url(self):
        return reverse("scenarios:scenario-list")


class ScenarioUpdate(ScenarioFormMixin, generic.UpdateView):
    pass


class ScenarioDelete(DeletePageMixin, generic.DeleteView):
    model = Scenario
    noun = "scenario"

    def consequences(self):
        count = self.object.paths.count()
        paths = f"Its {count} path{'s' if count != 1 else ''} will be deleted with it." if count else ""
        scheduled = self.object.schedules.count()
        schedules_ = (f"Its {scheduled} schedule{'s' if scheduled != 1 else ''} will be deleted with it: nothing runs "
                      "it by itself any more." if scheduled else "")
        return [p for p in [paths, schedules_, "Past runs and their results are kept."] if p]

    def get_success_url(self):
        return reverse("scenarios:scenario-list")

    def get_cancel_url(self):
        return scenario_url(self.object.pk)


# Paths ---------------------------------------------------------------------------------------------


class PathFormMixin(FormPageMixin):
    model = Path
    form_class = PathForm
    noun = "path"

    def get_success_url(self):
        return scenario_url(self.scenario.pk)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(
            ("Scenarios", reverse("scenarios:scenario-list")),
            (self.scenario.name, scenario_url(self.scenario.pk)),
        )
        context["intro"] = (
            "One narrative through the scenario: who calls, what they want, how they behave. "
            "Add a script of steps for a deterministic caller."
        )
        return context


class PathCreate(PathFormMixin, generic.CreateView):
    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            self.scenario = get_object_or_404(scoped(Scenario, request.workspace), pk=kwargs["pk"])
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        kwargs["instance"] = Path(scenario=self.scenario, workspace=self.request.workspace)
        return kwargs


class PathUpdate(PathFormMixin, generic.UpdateView):
    def get_object(self, queryset=None):
        path = super().get_object(queryset)
        self.scenario = path.scenario
        return path


class PathDelete(DeletePageMixin, generic.DeleteView):
    model = Path
    noun = "path"

    def consequences(self):
        return ["Past runs of this path and their results are kept."]

    def get_success_url(self):
        return scenario_url(self.object.scenario_id)


# Schedules: a panel of the scenario page, loaded and updated by htmx -----------------------------


def schedules_panel_context(scenario: Scenario, form: ScheduleForm | None = None) -> dict:
    return {
        "scenario": scenario,
        "schedules": list(selectors.schedules_of(scenario)),
        "schedule_form": form or ScheduleForm(initial={"timezone": "UTC", "repeat": 1}),
        "timezones": known_timezones(),
        "min_interval_minutes": MIN_INTERVAL_MINUTES,
    }


def render_schedules_panel(request, scenario: Scenario, form: ScheduleForm | None = None, *, notice: str = ""):
    if request.htmx:
        return render(request, "scenarios/partials/schedules.html", schedules_panel_context(scenario, form))
    # Without htmx (a plain form post), back to the scenario page, which loads the panel again.
    if form is not None and form.errors:
        messages.error(request, "The schedule was not saved: " + "; ".join(
            f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()))
    elif notice:
        messages.success(request, notice)
    return redirect(scenario_url(scenario.pk))


@login_required
def schedules_panel(request, pk):
    scenario = get_object_or_404(scoped(Scenario, request.workspace), pk=pk)
    return render(request, "scenarios/partials/schedules.html", schedules_panel_context(scenario))


@login_required
@require_POST
def schedule_create(request, pk):
    require_editor(request)
    scenario = get_object_or_404(scoped(Scenario, request.workspace), pk=pk)
    form = ScheduleForm(request.POST, instance=Schedule(workspace=request.workspace, scenario=scenario))
    if not form.is_valid():
        return render_schedules_panel(request, scenario, form)
    schedules.schedule_save(schedule=form.instance)
    return render_schedules_panel(request, scenario, notice="Schedule added.")


@login_required
@require_POST
def schedule_set_enabled(request, pk):
    require_editor(request)
    schedule = get_object_or_404(scoped(Schedule, request.workspace).select_related("scenario"), pk=pk)
    enabled = request.POST.get("enabled") == "true"
    schedules.schedule_set_enabled(schedule=schedule, enabled=enabled)
    return render_schedules_panel(request, schedule.scenario,
                                  notice=f"Schedule {schedule.cron} {'enabled' if enabled else 'disabled'}.")


@login_required
@require_POST
def schedule_delete(request, pk):
    require_editor(request)
    schedule = get_object_or_404(scoped(Schedule, request.workspace).select_related("scenario"), pk=pk)
    scenario = schedule.scenario
    schedules.schedule_delete(schedule=schedule)
    return render_schedules_panel(request, scenario, notice=f"Schedule {schedule.cron} deleted.")

