from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Prefetch, QuerySet
from django.utils import timezone

from assure.models import Workspace
from assure.tenancy import scoped
from runs.models import TERMINAL_STATUSES, Batch, CriterionResult, Run, ScheduleFiring, ToolInvocation, Turn

RECENT_WINDOW = timedelta(hours=1)
RECENT_LIMIT = 50


def runs_for(workspace: Workspace | None) -> QuerySet:
    return scoped(Run, workspace).select_related("scenario", "path")


def run_detail_queryset(workspace: Workspace | None) -> QuerySet:
    return runs_for(workspace).prefetch_related(
        Prefetch("turns", queryset=Turn.objects.order_by("seq")),
        Prefetch("tool_invocations", queryset=ToolInvocation.objects.order_by("seq")),
        Prefetch("criteria_results", queryset=CriterionResult.objects.order_by("position")),
    )


def queue_for(workspace: Workspace) -> dict:
    """Everything running, queued, or recently finished across the workspace."""
    runs = runs_for(workspace)
    return {
        "paused": workspace.queue_paused,
        "max_parallel_runs": workspace.max_parallel_runs,
        "running": list(runs.filter(status=Run.Status.RUNNING).order_by("admitted_at", "created_at")),
        "queued": list(runs.filter(status=Run.Status.PENDING).order_by("created_at", "id")),
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
    runs = runs_for(workspace).filter(status__in=TERMINAL_STATUSES).order_by("-ended_at", "-created_at")
    if scenario:
        runs = runs.filter(scenario_id=scenario)
    if verdict:
        runs = runs.filter(verdict=verdict)
    if status:
        runs = runs.filter(status=status)
    return runs


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
