from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Prefetch, QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone

from assure.models import Workspace
from assure.tenancy import scoped
from runs import pagination
from runs.models import TERMINAL_STATUSES, Batch, CriterionResult, Run, ScheduleFiring, ToolInvocation, Turn

RECENT_WINDOW = timedelta(hours=1)
RECENT_LIMIT = 50


def runs_for(workspace: Workspace | None) -> QuerySet:
    return scoped(Run, workspace).select_related("scenario", "path")


def run_list(workspace: Workspace | None, *, status=None, scenario=None, path=None, batch=None) -> QuerySet:
    """The runs ``GET /api/v1/runs/`` lists, newest first (``pagination.CREATED``), each filter on an
    index of its own. Without the snapshot: a listed run does not show it, and it is most of a row."""
    runs = scoped(Run, workspace).defer("snapshot")
    filters = {"status": status, "scenario_id": scenario, "path_id": path, "batch_id": batch}
    return pagination.CREATED.order(runs.filter(**{name: value for name, value in filters.items() if value}))


def _with_names(runs: QuerySet) -> QuerySet:
    """``runs`` with their snapshot's scenario and path names (``scenario_name``, ``path_name``),
    read in the database, and without the snapshot: it is most of a row, and lists show only those."""
    return runs.defer("snapshot").annotate(scenario_name=KT("snapshot__scenario__name"),
                                           path_name=KT("snapshot__path__name"))


def run_detail_queryset(workspace: Workspace | None) -> QuerySet:
    return runs_for(workspace).prefetch_related(
        Prefetch("turns", queryset=Turn.objects.order_by("seq")),
        Prefetch("tool_invocations", queryset=ToolInvocation.objects.order_by("seq")),
        Prefetch("criteria_results", queryset=CriterionResult.objects.order_by("position")),
    )


def queue_for(workspace: Workspace, *, queued_shown: int | None = None) -> dict:
    """Everything running, what is queued (in the order it will start: the first ``queued_shown``
    of it, or all), and what finished in the last hour, across the workspace (``_with_names``).
    ``queued_total`` counts every queued run."""
    runs = _with_names(scoped(Run, workspace))
    queued = runs.filter(status=Run.Status.PENDING).order_by("created_at", "id")
    shown = list(queued if queued_shown is None else queued[:queued_shown])
    return {
        "paused": workspace.queue_paused,
        "max_parallel_runs": workspace.max_parallel_runs,
        "running": list(runs.filter(status=Run.Status.RUNNING).order_by("admitted_at", "created_at")),
        "queued": shown,
        "queued_total": queued.count() if queued_shown is not None and len(shown) == queued_shown else len(shown),
        "recent": list(
            runs.filter(status__in=TERMINAL_STATUSES, ended_at__gte=timezone.now() - RECENT_WINDOW)
            .order_by("-ended_at")[:RECENT_LIMIT]
        ),
    }


def batch_progress(batch_id) -> dict:
    counts = dict(Run.objects.filter(batch_id=batch_id).values_list("status").annotate(n=Count("id")).order_by())
    return {status: counts.get(status, 0) for status in Run.Status.values}


def latest_runs_by_path(paths) -> dict:
    """{path id: its most recent run} for the given paths (paths with no run are absent)."""
    from django.db.models import OuterRef, Subquery

    from scenarios.models import Path

    latest = Run.objects.filter(path=OuterRef("pk")).order_by("-created_at").values("id")[:1]
    ids = Path.objects.filter(pk__in=[p.pk for p in paths]).annotate(latest=Subquery(latest)).values_list("latest", flat=True)
    return {run.path_id: run for run in Run.objects.filter(pk__in=[i for i in ids if i])}


def latest_batch(scenario):
    from runs.models import Batch

    return Batch.objects.filter(scenario=scenario).order_by("-created_at").first()


def timeline(run: Run) -> list[dict]:
    """The stages of a run with the time each was reached (None: not yet, or skipped)."""
    reached = {}
    for stage, at in run.events.order_by("at", "id").values_list("to_stage", "at"):
        reached.setdefault(stage, at)
    return [{"stage": value, "label": label, "at": reached.get(value)} for value, label in Run.Stage.choices]


def transcript(run: Run) -> list[tuple[str, object]]:
    """Turns and tool invocations interleaved by time, as the live view shows them."""
    items = [("turn", t.started_ms, t.seq, t) for t in run.turns.order_by("seq")]
    items += [("tool", c.at_ms, c.seq, c) for c in run.tool_invocations.order_by("seq")]
    items.sort(key=lambda item: (item[1], 0 if item[0] == "turn" else 1, item[2]))
    return [(kind, obj) for kind, _, _, obj in items]


def results_for(workspace, *, scenario=None, verdict=None, status=None) -> QuerySet:
    """Finished runs, latest finished first (``pagination.ENDED``; ``_with_names``), each filter on an
    index of its own. Every transition to a terminal status sets ``ended_at``; a row without one
    (made by hand) has no place in an ordering by it, so the feed leaves it out."""
    if verdict and status and status != Run.Status.COMPLETED:
        # Only completed runs have a verdict (constraint run_verdict_only_when_completed): nothing
        # to read, where the read would walk every run of the verdict to find that out.
        return Run.objects.none()
    runs = _with_names(scoped(Run, workspace)).filter(status__in=TERMINAL_STATUSES, ended_at__isnull=False)
    if scenario:
        runs = runs.filter(scenario_id=scenario)
    if verdict:
        runs = runs.filter(verdict=verdict)
    if status:
        runs = runs.filter(status=status)
    return pagination.ENDED.order(runs)


def schedules_of_batches(batch_ids) -> dict:
    """{batch id: the schedule whose firing queued it} for those of ``batch_ids`` a schedule queued:
    the one way to find a batch's schedule (its ``ScheduleFiring``)."""
    firings = (ScheduleFiring.objects.filter(batch_id__in=list(batch_ids)).order_by()
               .select_related("schedule__scenario"))
    return {firing.batch_id: firing.schedule for firing in firings}


def schedule_of(batch: Batch):
    """The schedule whose firing queued ``batch``, or None."""
    return schedules_of_batches([batch.pk]).get(batch.pk)


def last_batches_of(schedule_ids) -> dict:
    """{schedule id: the batch its latest firing queued}, for schedules that queued one."""
    firings = (ScheduleFiring.objects.filter(schedule_id__in=list(schedule_ids), batch__isnull=False)
               .order_by("schedule_id", "-due_at").select_related("batch"))
    latest = {}
    for firing in firings:
        latest.setdefault(firing.schedule_id, firing.batch)
    return latest


def previous_scheduled_batch(batch: Batch, schedule) -> Batch | None:
    """The batch ``schedule`` queued before ``batch``, of the same scenario (a schedule moved to
    another scenario compares nothing across them): what a scheduled batch is compared with."""
    firing = (
        ScheduleFiring.objects.filter(schedule=schedule, batch__isnull=False, batch__scenario_id=batch.scenario_id,
                                      batch__created_at__lt=batch.created_at)
        .select_related("batch").order_by("-batch__created_at").first()
    )
    return firing.batch if firing else None
