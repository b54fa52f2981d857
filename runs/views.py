"""Pages for running tests. Thin: parse, call one service or selector, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from assure.tenancy import scoped
from runs import selectors, services
from runs.models import Run
from scenarios.models import Path, Scenario


def _require_edit(request) -> None:
    membership = request.membership
    if membership is None or not membership.can_edit:
        raise PermissionDenied("Viewers can look, not run or change.")


def _back(request, default: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(default)


def scenario_context(scenario: Scenario) -> dict:
    paths = list(scenario.paths.order_by("created_at", "name"))
    latest = selectors.latest_runs_by_path(paths)
    batch = selectors.latest_batch(scenario)
    return {
        "scenario": scenario,
        "rows": [{"path": p, "run": latest.get(p.pk)} for p in paths],
        "batch": batch,
        "progress": selectors.batch_progress(batch.pk) if batch else None,
    }


@login_required
def scenario_detail(request, pk):
    scenario = get_object_or_404(scoped(Scenario, request.workspace).select_related("agent", "target"), pk=pk)
    return render(request, "runs/scenario_detail.html", scenario_context(scenario))


@login_required
@require_POST
def scenario_run_all(request, pk):
    _require_edit(request)
    scenario = get_object_or_404(scoped(Scenario, request.workspace), pk=pk)
    try:
        batch, runs = services.scenario_run_all(scenario=scenario, created_by=request.user)
    except services.RunStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Queued {len(runs)} runs. They continue server-side; you can leave this page.")
    return HttpResponseRedirect(reverse("runs:scenario-detail", args=[scenario.pk]))


@login_required
def path_detail(request, pk):
    path = get_object_or_404(scoped(Path, request.workspace).select_related("scenario"), pk=pk)
    runs = scoped(Run, request.workspace).filter(path=path).order_by("-created_at")[:20]
    return render(request, "runs/path_detail.html", {"path": path, "scenario": path.scenario, "runs": runs})


@login_required
@require_POST
def path_run(request, pk):
    _require_edit(request)
    path = get_object_or_404(scoped(Path, request.workspace).select_related("scenario__agent", "scenario__target"), pk=pk)
    run = services.path_run(path=path, created_by=request.user)
    return _back(request, reverse("runs:run-detail", args=[run.pk]))


@login_required
def run_detail(request, pk):
    run = get_object_or_404(selectors.run_detail_queryset(request.workspace), pk=pk)
    return render(request, "runs/run_detail.html", run_context(run))


def run_context(run: Run) -> dict:
    # The page resumes its websocket from the last rows it shows, so the sequence numbers come from
    # the very rows rendered: a turn saved between two queries would otherwise arrive twice.
    items = selectors.transcript(run)
    turns = [obj for kind, obj in items if kind == "turn"]
    return {
        "run": run,
        "timeline": selectors.timeline(run),
        "items": items,
        "last_turn_seq": max((t.seq for t in turns), default=0),
        "last_tool_seq": max((obj.seq for kind, obj in items if kind == "tool"), default=0),
        "last_latency": next((t.latency_ms for t in sorted(turns, key=lambda t: t.seq, reverse=True)
                              if t.latency_ms is not None), None),
    }


@login_required
@require_POST
def run_cancel(request, pk):
    _require_edit(request)
    run = get_object_or_404(scoped(Run, request.workspace), pk=pk)
    if services.run_cancel(run_id=run.pk):
        messages.success(request, "Run cancelled.")
    if request.htmx:
        return HttpResponse(status=204, headers={"HX-Refresh": "true"})
    return _back(request, reverse("runs:run-detail", args=[run.pk]))


@login_required
@require_POST
def run_retry(request, pk):
    _require_edit(request)
    run = get_object_or_404(scoped(Run, request.workspace).select_related("path__scenario__agent", "path__scenario__target"), pk=pk)
    try:
        new = services.run_retry(run=run, created_by=request.user)
    except services.RunStateError as exc:
        messages.error(request, str(exc))
        if request.htmx:
            return HttpResponse(status=204, headers={"HX-Refresh": "true"})
        return _back(request, reverse("runs:run-detail", args=[run.pk]))
    if request.htmx:
        return HttpResponse(status=204, headers={"HX-Redirect": reverse("runs:run-detail", args=[new.pk])})
    return _back(request, reverse("runs:run-detail", args=[new.pk]))


def queue_context(workspace) -> dict:
    queue = selectors.queue_for(workspace)
    return {
        "queue": queue,
        "sections": [
            ("Running", "running", queue["running"], "Nothing is running."),
            ("Queued", "queued", queue["queued"], "Nothing is waiting."),
            ("Recently finished", "recent", queue["recent"], "No run finished in the last hour."),
        ],
    }


@login_required
def queue(request):
    if request.workspace is None:
        raise PermissionDenied("You are not a member of any workspace.")
    context = queue_context(request.workspace)
    context["can_edit"] = bool(request.membership and request.membership.can_edit)
    return render(request, "runs/queue.html", context)


@login_required
@require_POST
def queue_pause(request):
    _require_edit(request)
    services.workspace_queue_pause(workspace=request.workspace)
    messages.success(request, "Queue paused: queued runs wait; live runs go on.")
    return HttpResponseRedirect(reverse("runs:queue"))


@login_required
@require_POST
def queue_resume(request):
    _require_edit(request)
    services.workspace_queue_resume(workspace=request.workspace)
    messages.success(request, "Queue resumed.")
    return HttpResponseRedirect(reverse("runs:queue"))


@login_required
def results(request):
    params = request.GET
    verdict = params.get("verdict") if params.get("verdict") in Run.Verdict.values else None
    status = params.get("status") if params.get("status") in Run.Status.values else None
    scenarios = scoped(Scenario, request.workspace).order_by("name")
    scenario = next((str(s.pk) for s in scenarios if str(s.pk) == params.get("scenario")), None)
    runs = selectors.results_for(request.workspace, scenario=scenario, verdict=verdict, status=status)
    page = Paginator(runs, 50).get_page(params.get("page"))
    return render(request, "runs/results.html", {
        "page": page, "scenarios": scenarios, "filters": {"scenario": scenario, "verdict": verdict, "status": status},
        "verdicts": Run.Verdict.choices, "statuses": [(s, l) for s, l in Run.Status.choices if s in ("completed", "failed", "cancelled")],
    })
