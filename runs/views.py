"""Pages for running tests. Thin: parse, call one service or selector, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_POST

from assure.tenancy import scoped
from runs import batches, pagination, save_as_path, selectors, services
from runs.models import Batch, Run
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


RECENT_BATCHES = 10


@login_required
def scenario_detail(request, pk):
    scenario = get_object_or_404(scoped(Scenario, request.workspace).select_related("agent", "target"), pk=pk)
    context = scenario_context(scenario)
    trend = batches.scenario_trend(scenario)
    context.update(trend=trend, recent_batches=trend[::-1][:RECENT_BATCHES],
                   more_batches=len(trend) > RECENT_BATCHES, max_repeat=Batch.MAX_REPEAT)
    return render(request, "runs/scenario_detail.html", context)


def _repeat(request):
    """The form's ``repeat`` (blank: 1). Anything but a whole number is passed on as None, for the
    service to refuse with the rule's own words."""
    try:
        return int((request.POST.get("repeat") or "1").strip())
    except ValueError:
        return None


@login_required
@require_POST
def scenario_run_all(request, pk):
    _require_edit(request)
    scenario = get_object_or_404(scoped(Scenario, request.workspace), pk=pk)
    try:
        batch, runs = services.scenario_run_all(scenario=scenario, created_by=request.user, repeat=_repeat(request))
    except services.RunStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Queued {len(runs)} runs. They continue server-side; you can leave this page.")
    return HttpResponseRedirect(reverse("runs:scenario-detail", args=[scenario.pk]))


@login_required
def path_detail(request, pk):
    path = get_object_or_404(scoped(Path, request.workspace).select_related("scenario"), pk=pk)
    runs = scoped(Run, request.workspace).filter(path=path).order_by("-created_at")[:20]
    return render(request, "runs/path_detail.html", {"path": path, "scenario": path.scenario, "runs": runs,
                                                     "max_repeat": Batch.MAX_REPEAT})


@login_required
@require_POST
def path_run(request, pk):
    _require_edit(request)
    path = get_object_or_404(scoped(Path, request.workspace).select_related("scenario__agent", "scenario__target"), pk=pk)
    repeat = _repeat(request)
    if repeat == 1:
        run = services.path_run(path=path, created_by=request.user)
        return _back(request, reverse("runs:run-detail", args=[run.pk]))
    try:
        batch, runs = services.path_run_repeated(path=path, repeat=repeat, created_by=request.user)
    except services.RunStateError as exc:
        messages.error(request, str(exc))
        return _back(request, reverse("runs:path-detail", args=[path.pk]))
    messages.success(request, f"Queued {len(runs)} runs of {path.name}.")
    return HttpResponseRedirect(reverse("runs:batch-detail", args=[batch.pk]))


@login_required
def batch_detail(request, pk):
    batch = get_object_or_404(batches.batches_of(request.workspace), pk=pk)
    context = {"batch": batch, "detail": batches.batch_detail(batch), "previous": batches.previous_batch(batch)}
    if request.htmx:  # the page refreshes its body while runs are still going
        return render(request, "runs/partials/batch_body.html", context)
    return render(request, "runs/batch_detail.html", context)


COMPARISON_GROUPS = [
    ("newly_failing", "Newly failing", "Did not fail every time before; fails every time now."),
    ("fixed", "Fixed", "Did not pass every time before; passes every time now."),
    ("still_failing", "Still failing", "Failed every time before, and still does."),
    ("flaky", "Flaky", "Its runs disagree now: some pass, some do not."),
]


@login_required
def batch_compare(request, pk):
    workspace_batches = batches.batches_of(request.workspace)
    batch = get_object_or_404(workspace_batches, pk=pk)
    to = None
    if request.GET.get("to"):
        try:
            to = workspace_batches.filter(pk=request.GET["to"]).first()
        except ValidationError:  # not an id
            to = None
        if to is None:
            raise Http404("No such batch in this workspace.")
    try:
        comparison, problem = batches.batch_compare(batch, to), None
    except batches.NoComparison as exc:
        comparison, problem = None, str(exc)
    if comparison is not None:
        to = workspace_batches.get(pk=comparison["to"])
    others = workspace_batches.filter(scenario_id=batch.scenario_id).exclude(pk=batch.pk)[:50] if batch.scenario_id else []
    return render(request, "runs/batch_compare.html", {
        "batch": batch, "to": to, "comparison": comparison, "problem": problem, "others": others,
        "groups": [
            (key, title, meaning, comparison[key]) for key, title, meaning in COMPARISON_GROUPS
        ] if comparison else [],
    })


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


@login_required
@require_POST
def run_save_as_path(request, pk):
    """Save a finished run as a new path, then open the path's edit page to loosen what it expects."""
    _require_edit(request)
    run = get_object_or_404(scoped(Run, request.workspace), pk=pk)
    try:
        path = save_as_path.run_save_as_path(run=run)
    except save_as_path.SaveAsPathError as exc:
        messages.error(request, " ".join(str(m) for messages_ in exc.detail.values()
                                         for m in (messages_ if isinstance(messages_, list) else [messages_])))
        if request.htmx:
            return HttpResponse(status=204, headers={"HX-Refresh": "true"})
        return HttpResponseRedirect(reverse("runs:run-detail", args=[run.pk]))
    messages.success(request, f"Saved as the path “{path.name}”. Its expect steps are the target's exact "
                              "words: loosen them where the words may vary.")
    edit = reverse("scenarios:path-update", args=[path.pk])
    if request.htmx:
        return HttpResponse(status=204, headers={"HX-Redirect": edit})
    return HttpResponseRedirect(edit)


# The queue page lists this many queued runs, the next to start; a larger queue is counted, not
# listed (the page re-renders on every change while runs go on).
QUEUED_SHOWN = 100


def queue_context(workspace) -> dict:
    queue = selectors.queue_for(workspace, queued_shown=QUEUED_SHOWN)
    return {
        "queue": queue,
        "sections": [
            ("Running", "running", queue["running"], "Nothing is running.", 0),
            ("Queued", "queued", queue["queued"], "Nothing is waiting.", queue["queued_total"] - len(queue["queued"])),
            ("Recently finished", "recent", queue["recent"], "No run finished in the last hour.", 0),
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


RESULTS_PAGE_SIZE = 50


@login_required
def results(request):
    params = request.GET
    verdict = params.get("verdict") if params.get("verdict") in Run.Verdict.values else None
    status = params.get("status") if params.get("status") in Run.Status.values else None
    scenarios = scoped(Scenario, request.workspace).order_by("name")
    scenario = next((str(s.pk) for s in scenarios if str(s.pk) == params.get("scenario")), None)
    filters = {"scenario": scenario, "verdict": verdict, "status": status}
    cursor = None
    if params.get("cursor"):
        try:
            cursor = pagination.decode_cursor(params["cursor"])
        except pagination.InvalidCursor:
            # A link cut short or edited: the feed only reads, so the newest page (saying so) is
            # more use to whoever followed it than an error page.
            messages.warning(request, "That page link is not one this feed made: showing the latest results.")
    runs = selectors.results_for(request.workspace, **filters)
    page = pagination.keyset_page(runs, pagination.ENDED, cursor, RESULTS_PAGE_SIZE)
    kept = {name: value for name, value in filters.items() if value}

    def link(at: pagination.Cursor | None) -> str | None:
        return f"?{urlencode({**kept, 'cursor': pagination.encode_cursor(at)})}" if at else None

    return render(request, "runs/results.html", {
        "page": page, "scenarios": scenarios, "filters": filters,
        "newest": f"?{urlencode(kept)}" if cursor else None, "newer": link(page.newer), "older": link(page.older),
        "verdicts": Run.Verdict.choices, "statuses": [(s, l) for s, l in Run.Status.choices if s in ("completed", "failed", "cancelled")],
    })
