from __future__ import annotations



from django.conf import settings
from django.db import models
from django.utils import timezone

from assure.models import WorkspaceOwned, WorkspaceQuerySet


class Batch(WorkspaceOwned):
    """The runs of one "Run all paths", or of one path run more than once: every repetition of
    every path it ran (``runs.batches`` reads pass@k, flakiness and latency from them)."""

    MAX_REPEAT = 100

    scenario = models.ForeignKey("scenarios.Scenario", null=True, on_delete=models.SET_NULL, related_name="batches")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    repeat = models.PositiveSmallIntegerField(default=1, help_text="Runs of each path in this batch (1–100).")
    finished_at = models.DateTimeField(
        null=True, blank=True, help_text="When its last run ended; set once (runs.services.batch_finish).")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        indexes = [
            # A scenario's batches, newest first: its page, the trend, "the previous batch".
            models.Index(fields=["scenario", "-created_at"], name="batch_scenario_latest"),
            # The sweep looks for batches whose last run ended unnoticed: few are ever unfinished.
            models.Index(fields=["created_at"], condition=models.Q(finished_at__isnull=True), name="batch_unfinished"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(repeat__gte=1, repeat__lte=100), name="batch_repeat_1_to_100"),
        ]

    def __str__(self) -> str:
        return f"Batch {str(self.id)[:8]} of {self.scenario or 'a deleted scenario'}"


# Spelled out for the check constraint (a nested Meta cannot see Run.FailureReason); a test pins
# it to Run.FailureReason.values.
_FAILURE_REASONS = [
    "target_unreachable",
    "caller_voice_unavailable",
    "tool_sync_pending",
    "duration_cap_no_progress",
    "inbound_timeout",
    "error",
]


class Run(WorkspaceOwned):
    """One execution of one path. See DESIGN.md, "The life of a run"."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Stage(models.TextChoices):
        QUEUED = "queued", "Queued"
        MATERIALIZING = "materializing", "Materializing"
        LIVE = "live", "Live conversation"
        FINALIZING = "finalizing", "Finalizing"
        DONE = "done", "Done"

    class FailureReason(models.TextChoices):
        TARGET_UNREACHABLE = "target_unreachable", "Target unreachable"
        CALLER_VOICE_UNAVAILABLE = "caller_voice_unavailable", "Caller voice unavailable"
        TOOL_SYNC_PENDING = "tool_sync_pending", "Custom functions not synced"
        DURATION_CAP_NO_PROGRESS = "duration_cap_no_progress", "Duration cap reached"
        INBOUND_TIMEOUT = "inbound_timeout", "Inbound call did not arrive"
        ERROR = "error", "Platform error"

    class Verdict(models.TextChoices):
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        INCONCLUSIVE = "inconclusive", "Inconclusive"

    # What a user should check for each failure reason (RUNNING-A-TEST.md, "Why a run might fail").
    FAILURE_HELP = {
        FailureReason.TARGET_UNREACHABLE: "Target phone number wrong, or the target system isn't accepting calls.",
        FailureReason.CALLER_VOICE_UNAVAILABLE: "The voice configured on the agent is temporarily unavailable upstream. Pick a different voice.",
        FailureReason.TOOL_SYNC_PENDING: "Custom functions haven't synced yet. Check the Functions panel banner; click Retry if it's red.",
        FailureReason.DURATION_CAP_NO_PROGRESS: "The conversation hit the max duration without natural end. Either raise the cap on the agent, or add tighter end conditions to the scenario description.",
        FailureReason.INBOUND_TIMEOUT: "The inbound call did not arrive within the scenario's window. Check that your system dialled the reserved number.",
        FailureReason.ERROR: "Platform error. Surfaced in the run detail; safe to retry.",
    }

    # Set by the enqueueing service (not auto_now_add): it orders the queue, and the runs of one
    # batch get consecutive times in path order.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    scenario = models.ForeignKey("scenarios.Scenario", null=True, on_delete=models.SET_NULL, related_name="runs")
    path = models.ForeignKey("scenarios.Path", null=True, on_delete=models.SET_NULL, related_name="runs")
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    auto_retry = models.BooleanField(
        default=False, help_text="Re-queued automatically: the worker of the run it retries was lost before the "
                                 "conversation began.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    stage = models.CharField(max_length=15, choices=Stage.choices, default=Stage.QUEUED)
    failure_reason = models.CharField(max_length=30, choices=FailureReason.choices, blank=True)
    failure_detail = models.TextField(blank=True)
    verdict = models.CharField(max_length=15, choices=Verdict.choices, null=True, blank=True)
    snapshot = models.JSONField(
        default=dict, blank=True, help_text="Frozen copy of the scenario, path, agent and target at enqueue."
    )
    persona = models.TextField(blank=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the conversation went live.")
    ended_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(
        max_length=200, blank=True,
        help_text="The process holding the conversation; blank while a voice run waits for its call.")
    attach_by = models.DateTimeField(
        null=True, blank=True,
        help_text="A voice run waiting for its call (ringing, or armed for an inbound call) ends if it has not "
                  "connected by then.")
    attached_at = models.DateTimeField(null=True, blank=True, help_text="When the call's conversation connected.")
    metrics = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        # Lists page by position (runs/pagination.py): newest first by a time, then by id. Each
        # filter a list offers has an index of the workspace, the filter's column, then that
        # ordering: a page is one range read and a count reads the index alone, however deep
        # (bench/README.md, "Pages with many runs"). SQLite's planner has no statistics: it picks
        # the index that matches the most columns of the query, so each one names them all.
        _finished = models.Q(ended_at__isnull=False)
        indexes = [
            # Admission: the oldest pending runs of a workspace; slot counts of running ones. The
            # run list's status filter.
            models.Index(fields=["workspace", "status", "created_at", "id"], name="run_ws_status_created"),
            models.Index(fields=["scenario", "status"], name="run_scenario_status"),
            # Watchdogs scan running runs by heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat"),
            models.Index(fields=["path", "-created_at"], name="run_path_latest"),
            models.Index(fields=["batch", "status"], name="run_batch_status"),
            # The sweep: voice runs waiting for their call.
            models.Index(fields=["status", "attach_by"], name="run_status_attach_by"),
            # The run list (GET /api/v1/runs/), unfiltered and by scenario, path or batch.
            models.Index(fields=["workspace", "-created_at", "-id"], name="run_ws_created"),
            models.Index(fields=["workspace", "scenario", "-created_at", "-id"], name="run_ws_scenario_created"),
            models.Index(fields=["workspace", "path", "-created_at", "-id"], name="run_ws_path_created"),
            models.Index(fields=["workspace", "batch", "-created_at", "-id"], name="run_ws_batch_created"),
            # The results feed (and the queue's recently finished), unfiltered and by each filter.
            # Finished runs only: the heartbeats of live runs never write to these.
            models.Index(fields=["workspace", "-ended_at", "-id"], condition=_finished, name="run_ws_ended"),
            models.Index(fields=["workspace", "status", "-ended_at", "-id"], condition=_finished,
                         name="run_ws_status_ended"),
            models.Index(fields=["workspace", "verdict", "-ended_at", "-id"], condition=_finished,
                         name="run_ws_verdict_ended"),
            models.Index(fields=["workspace", "scenario", "-ended_at", "-id"], condition=_finished,
                         name="run_ws_scenario_ended"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(status="pending", stage="queued")
                    | models.Q(status="running", stage__in=["materializing", "live", "finalizing"])
                    | models.Q(status__in=["completed", "failed", "cancelled"], stage="done")
                ),
                name="run_status_matches_stage",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(status="failed", failure_reason__in=_FAILURE_REASONS)
                    | (~models.Q(status="failed") & models.Q(failure_reason=""))
                ),
                name="run_failure_reason_iff_failed",
            ),
            models.CheckConstraint(
                condition=models.Q(verdict__isnull=True) | models.Q(status="completed"),
                name="run_verdict_only_when_completed",
            ),
        ]

    def __str__(self) -> str:
        return f"Run {str(self.id)[:8]} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def failure_help(self) -> str:
        return self.FAILURE_HELP.get(self.failure_reason, "")


TERMINAL_STATUSES = (Run.Status.COMPLETED, Run.Status.FAILED, Run.Status.CANCELLED)


class RunChild(models.Model):
    """Rows that belong to a run, and so to its workspace through it."""

    workspace_path = "run__workspace"

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        abstract = True


class Turn(RunChild):
    class Speaker(models.TextChoices):
        CALLER = "caller", "Caller"
        TARGET = "target", "Target"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="turns")
    seq = models.PositiveIntegerField(help_text="1, 2, 3… within the run; clients resume from it.")
    speaker = models.CharField(max_length=10, choices=Speaker.choices)
    text = models.TextField(blank=True)
    started_ms = models.PositiveIntegerField(help_text="Milliseconds from the start of the conversation.")
    ended_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="For target turns: from the caller's last word to the target's reply."
    )
    is_error = models.BooleanField(default=False, help_text="The target failed to answer this turn.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="turn_unique_seq_per_run")]

    def __str__(self) -> str:
        return f"{self.seq}. {self.speaker}: {self.text[:60]}"


class ToolInvocation(RunChild):
    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tool_invocations")
    seq = models.PositiveIntegerField()
    name = models.CharField(max_length=64)
    arguments = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    at_ms = models.PositiveIntegerField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OK)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="tool_invocation_unique_seq_per_run")]

    def __str__(self) -> str:
        return f"{self.seq}. {self.name}"


class CriterionResult(RunChild):
    class Outcome(models.TextChoices):
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="criteria_results")
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=30)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    rationale = models.TextField(blank=True)
    evidence = models.JSONField(default=list, blank=True, help_text="Sequence numbers of the turns relied on.")
    judge_prompt = models.TextField(blank=True, help_text="The exact prompt sent to the LLM judge (bounded).")
    judge_answer = models.TextField(blank=True, help_text="The judge model's raw answer (bounded).")

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="criterion_result_unique_position_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.outcome}"


class RunEvent(RunChild):
    """Each transition of a run, with its time: the run's timeline."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(db_index=True)
    from_status = models.CharField(max_length=10, blank=True)
    to_status = models.CharField(max_length=10, choices=Run.Status.choices)
    from_stage = models.CharField(max_length=15, blank=True)
    to_stage = models.CharField(max_length=15, choices=Run.Stage.choices)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "at", "id"]
        indexes = [models.Index(fields=["run", "at"], name="run_event_run_at")]

    def __str__(self) -> str:
        return f"{self.from_stage or '∅'} → {self.to_stage} at {self.at:%H:%M:%S.%f}"




class ScheduleFiring(models.Model):
    """One due time of a schedule, fired: unique per (schedule, due time), so a due time queues at
    most one batch however many beat processes see it (``runs/schedules.py``). It is how a batch
    knows its schedule, and a schedule its batches: the schedule itself (``scenarios``) knows no run."""

    workspace_path = "schedule__workspace"

    schedule = models.ForeignKey("scenarios.Schedule", on_delete=models.CASCADE, related_name="firings")
    due_at = models.DateTimeField()
    fired_at = models.DateTimeField()
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="schedule_firings")
    detail = models.TextField(blank=True, help_text="Why no batch was queued, when none was.")

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        ordering = ["-due_at"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "due_at"], name="schedule_firing_once_per_due_time"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} due {self.due_at:%Y-%m-%d %H:%M}"
