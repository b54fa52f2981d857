from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Prefetch, QuerySet
from django.utils import timezone

from assure.models import Workspace
from assure.tenancy import scoped
from runs.models import TERMINAL_STATUSES, CriterionResult, Run, ToolInvocation, Turn

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
