"""The life of a run: every state change goes through one of these services.

Each transition is a conditional update on the run's current status (and stage) followed by a
run event; a caller that loses a race changes nothing and gets ``False``/``None`` back. A
terminal run (completed, failed, cancelled) never changes again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from assure.models import Workspace
from runs import dispatch, notify
from runs.inserts import insert_many, update_where
from runs.known import known
from runs.models import TERMINAL_STATUSES, Batch, Run, RunEvent
from scenarios.models import Path, Scenario

logger = logging.getLogger(__name__)

S = Run.Status
G = Run.Stage


class RunStateError(Exception):
    """A transition was asked of a run in a state that does not allow it."""


def _record(run_id, *, from_status: str, to_status: str, from_stage: str, to_stage: str, at, detail: str = "") -> None:
    # A plain INSERT: a worker records three of these per run, and the ORM's ``create`` compiled
    # its statement (and read the new id back) each time.
    insert_many(RunEvent, ("at", "from_status", "to_status", "from_stage", "to_stage", "detail"), [(run_id, {
        "at": at, "from_status": from_status, "to_status": to_status, "from_stage": from_stage,
        "to_stage": to_stage, "detail": detail})])


def _transition(run_id, *, from_status: str, from_stage: str | None, to_status: str, to_stage: str,
                detail: str = "", **fields) -> bool:
    """Move a run if, and only if, it is still in ``from_status`` (and ``from_stage``)."""
    now = timezone.now()
    lookup = {"pk": run_id, "status": from_status}
    if from_stage is not None:
        lookup["stage"] = from_stage
    # No savepoint of its own when nested (a flush of runs.writer, say): whoever holds the outer
    # block decides what an error undoes, and on PostgreSQL each savepoint is two more round trips.
    with transaction.atomic(savepoint=False):
        if from_stage is None:
            current = Run.objects.filter(**lookup).values_list("stage", flat=True).first()
            if current is None:
                return False
            lookup["stage"] = current
        changed = update_where(Run, lookup, {"status": to_status, "stage": to_stage, **fields})
        if changed != 1:
            return False
        _record(run_id, from_status=from_status, to_status=to_status, from_stage=lookup["stage"],
                to_stage=to_stage, at=now, detail=detail)
    # Every page that shows the run hears of each change, once it is committed; a new stage
    # cannot forget to tell them.
    transaction.on_commit(lambda: dispatch.publish_run_changed(run_id))
    if to_status in TERMINAL_STATUSES:
        _after_terminal(run_id, was_running=from_status == S.RUNNING)
    return True


class _Once:
    """An ``on_commit`` hook that a transaction needs only once, however many changes ask for it;
    ``fn`` is given the items each of them asked about."""

    def __init__(self, key: tuple, fn):
        self.key, self.fn = key, fn
        self.items: list = []
        self.ran = False

    def __call__(self):
        self.ran = True
        self.fn(self.items)


def _on_commit_once(key: tuple, fn, item=None) -> None:
    """``transaction.on_commit(fn)``, unless a hook of the same key is already due with this commit;
    ``item`` (if given) joins the items the hook's ``fn`` is called with.

    A worker's flush ends hundreds of runs of one workspace and batch in one transaction; each
    asked for the same admission and the same "is the batch finished?" check after it. Only a hook
    registered at this very savepoint is shared: one of an outer savepoint would keep the item of a
    change that is rolled back. (Django keeps the hooks as (savepoint ids, hook, robust) in
    ``connection.run_on_commit``.)
    """
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        # An atomic block without a savepoint (None here) is undone only with the one around it.
        current = set(connection.savepoint_ids) - {None}
        for savepoints, hook, _robust in connection.run_on_commit:
            # One that already ran (a test's captured hooks run without a commit) does not count.
            if isinstance(hook, _Once) and hook.key == key and not hook.ran and savepoints - {None} == current:
                if item is not None:
                    hook.items.append(item)
                return
    hook = _Once(key, fn)
    if item is not None:
        hook.items.append(item)
    transaction.on_commit(hook)  # outside a transaction it runs at once: its items are in first


def _after_terminal(run_id, *, was_running: bool) -> None:
    """A slot freed up: admit the next runs of the workspace; send the completion webhook; a voice
    run that got as far as its call releases it (hang up, free the number) through its driver; the
    last run of a batch to end finishes the batch."""
    facts = known([run_id])[str(run_id)]  # remembered by the worker that loaded the run
    workspace_id, batch_id, channel = facts.workspace_id, facts.batch_id, facts.channel
    _admit_after_commit(workspace_id)
    if batch_id is not None:
        _on_commit_once(("finish batch", batch_id), lambda _: _finish_batch_after_commit(batch_id))
    _on_commit_once(("notify", workspace_id), lambda run_ids: _notify_after_commit(workspace_id, run_ids),
                    item=run_id)
    if was_running and channel == "voice":
        transaction.on_commit(lambda: dispatch.stop_run(run_id))


def _notify_after_commit(workspace_id, run_ids: list) -> None:
    # One read of the workspace's webhook for all its runs that ended in one commit (a worker's
    # flush ends dozens), where each run's end read it again.
    try:
        webhook = Workspace.objects.filter(pk=workspace_id).exclude(webhook_url="").exists()
    except Exception:  # ask the tasks anyway: each reads the webhook again before it sends
        logger.warning("could not read the webhook of workspace %s", workspace_id, exc_info=True)
        webhook = True
    if webhook:
        for run_id in run_ids:
            dispatch.notify_run_finished(run_id)


def _finish_batch_after_commit(batch_id) -> None:
    # After the commit: of two runs of a batch ending at once in two transactions, a check made
    # inside each could see the other still running, and neither would finish the batch.
    try:
        batch_finish(batch_id=batch_id)
    except Exception:  # the run's end is committed; the sweep finishes the batch instead
        logger.warning("could not finish batch %s; the sweep will", batch_id, exc_info=True)


def batch_finish(*, batch_id) -> bool:
    """Mark the batch finished if every run of it has ended. Exactly one caller ever wins (the
    process that ended its last run, or the sweep): ``finished_at`` is set by a conditional update,
    and only the winner rings the ``batch.finished`` hook, once that is committed."""
    unended = Run.objects.filter(batch_id=OuterRef("pk")).exclude(status__in=TERMINAL_STATUSES)
    won = Batch.objects.filter(pk=batch_id, finished_at__isnull=True).exclude(Exists(unended)).update(
        finished_at=timezone.now()) == 1
    if won:
        batch = Batch.objects.select_related("scenario").get(pk=batch_id)
        transaction.on_commit(lambda: notify.batch_finished(batch), robust=True)
    return won


def snapshot_of(path: Path) -> dict:
    """A frozen copy of what a run is composed from; later edits do not change a queued run."""
    scenario = path.scenario
    agent, target = scenario.agent, scenario.target
    return {
        "scenario": {
            "id": str(scenario.id), "name": scenario.name, "description": scenario.description,
            "channel": scenario.channel, "direction": scenario.direction,
            "inbound_window_seconds": scenario.inbound_window_seconds, "criteria": scenario.criteria,
        },
        "path": {"id": str(path.id), "name": path.name, "narrative": path.narrative,
                 "script": path.script, "criteria": path.criteria},
        "agent": {
            "id": str(agent.id), "name": agent.name, "instructions": agent.instructions,
            "language": agent.language, "voice_provider": agent.voice_provider, "voice": agent.voice,
            "llm_base_url": agent.llm_base_url, "llm_model": agent.llm_model,
            "max_duration_seconds": agent.max_duration_seconds, "end_conditions": agent.end_conditions,
            "outbound_numbers": agent.outbound_numbers,
        },
        # Secrets (headers, API keys) are read from the live objects at execution, never copied. The
        # fingerprint lets execution check that the live headers are still the ones that belonged to
        # this URL's host when the run was queued (``runs.execution.load_prepared``).
        "target": {
            "id": str(target.id), "name": target.name, "channel": target.channel, "kind": target.kind,
            "url": target.url, "phone_number": target.phone_number,
            "request_template": target.request_template, "response_path": target.response_path,
            "model": target.model, "rehearse_with": str(target.rehearse_with_id) if target.rehearse_with_id else None,
            "dial_in_delay_seconds": target.dial_in_delay_seconds,
            "secrets_fingerprint": target.secrets_fingerprint(),
        },
    }


def _new_run(*, path: Path, batch: Batch | None, retry_of: Run | None, created_by, created_at) -> Run:
    run = Run.objects.create(
        workspace_id=path.workspace_id, scenario=path.scenario, path=path, batch=batch, retry_of=retry_of,
        snapshot=snapshot_of(path), created_by=created_by if getattr(created_by, "pk", None) else None,
        created_at=created_at,
    )
    _record(run.pk, from_status="", to_status=S.PENDING, from_stage="", to_stage=G.QUEUED, at=created_at)
    return run


def _queued_after_commit(runs) -> None:
    """Admit right after the commit, then tell the pages that show them which of these runs are
    still queued (a paused queue admits nothing, so no later change would). Admission first: it
    is what the enqueue → materializing latency waits for, and it announces the runs it admits."""
    run_ids = [str(run.pk) for run in runs]
    workspace_id = runs[0].workspace_id

    def admit_then_publish():
        admitted = {str(run_id) for run_id in _admit_now(workspace_id)}
        queued = [run_id for run_id in run_ids if run_id not in admitted]
        if not queued:
            return
        try:
            dispatch.publish_run_changed(*queued)
        except Exception:  # a page missing this catches up on its next resume; the runs are saved
            logger.warning("could not publish newly queued runs %s", queued, exc_info=True)

    transaction.on_commit(admit_then_publish)


def _admit_now(workspace_id) -> list:
    """Admit in this process: a Celery round trip here was most of the enqueue → materializing
    latency. Should it fail, a worker (or the sweep) does it instead."""
    try:
        return admit_pending_runs(workspace_id=workspace_id)
    except Exception:
        logger.warning("admission after commit failed; queued for a worker", exc_info=True)
        dispatch.admit_runs(workspace_id)
        return []


def _admit_after_commit(workspace_id) -> None:
    _on_commit_once(("admit", workspace_id), lambda _: _admit_now(workspace_id))


@transaction.atomic
def path_run(*, path: Path, created_by=None) -> Run:
    """Queue one run of ``path``."""
    run = _new_run(path=path, batch=None, retry_of=None, created_by=created_by, created_at=timezone.now())
    _queued_after_commit([run])
    return run


def _batch_enqueue(*, scenario: Scenario, paths: list[Path], repeat: int, created_by) -> tuple[Batch, list[Run]]:
    """Queue ``repeat`` runs of each of ``paths`` as one batch.

    Steps: check ``repeat``; create the batch; take each path's snapshot once (every repetition
    runs the very same snapshot, which is what makes their verdicts comparable); lay the runs out in
    rounds (every path once, then every path again…) with consecutive creation times, so a bounded
    queue gives each path its first result early; insert runs and their first events in bulk (up
    to 100 paths × 100 repeats); announce the last round, then admit.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= Batch.MAX_REPEAT:
        raise RunStateError(f"Repeat must be a whole number from 1 to {Batch.MAX_REPEAT}.")
    user = created_by if getattr(created_by, "pk", None) else None
    batch = Batch.objects.create(workspace_id=scenario.workspace_id, scenario=scenario, created_by=user, repeat=repeat)
    snapshots = {path.pk: snapshot_of(path) for path in paths}
    base = timezone.now()
    runs = []
    for _ in range(repeat):
        for path in paths:
            runs.append(Run(
                workspace_id=scenario.workspace_id, scenario=scenario, path=path, batch=batch,
                snapshot=snapshots[path.pk], created_by=user, created_at=base + timedelta(microseconds=len(runs)),
            ))
    Run.objects.bulk_create(runs, batch_size=500)
    RunEvent.objects.bulk_create([
        RunEvent(run_id=run.pk, at=run.created_at, from_status="", to_status=S.PENDING, from_stage="", to_stage=G.QUEUED)
        for run in runs
    ], batch_size=500)
    # Pages show each path's newest run and the batch's counts: the last round's pushes refresh
    # both, where a push per run of a 100 × 100 batch would only repeat them.
    _queued_after_commit(runs[-len(paths):])
    return batch, runs


@transaction.atomic
def path_run_repeated(*, path: Path, repeat: int, created_by=None) -> tuple[Batch, list[Run]]:
    """Queue ``repeat`` runs of ``path`` as one batch (a single run needs no batch: ``path_run``)."""
    return _batch_enqueue(scenario=path.scenario, paths=[path], repeat=repeat, created_by=created_by)


@transaction.atomic
def scenario_run_all(*, scenario: Scenario, created_by=None, repeat: int = 1) -> tuple[Batch, list[Run]]:
    """Queue every path of ``scenario``, ``repeat`` times each, as one batch, in path order. (A
    schedule's batch is linked to the schedule by its ``ScheduleFiring``, ``runs/schedules.py``.)"""
    paths = list(scenario.paths.select_related("scenario__agent", "scenario__target").order_by("created_at", "name"))
    if not paths:
        raise RunStateError("This scenario has no paths yet: add a path, then run it.")
    return _batch_enqueue(scenario=scenario, paths=paths, repeat=repeat, created_by=created_by)


@transaction.atomic
def run_retry(*, run: Run, created_by=None) -> Run:
    """A new run of the same path, pointing at ``run``. Only a finished run can be retried."""
    if run.status not in TERMINAL_STATUSES:
        raise RunStateError("Only a finished run can be retried; cancel it first.")
    if run.path is None:
        raise RunStateError("The path of this run was deleted, so it cannot be run again.")
    new = _new_run(path=run.path, batch=None, retry_of=run, created_by=created_by, created_at=timezone.now())
    _queued_after_commit([new])
    return new


def run_cancel(*, run_id) -> bool:
    """Cancel a pending or running run; idempotent. Returns whether this call cancelled it.

    A queued run is never picked up afterwards (admission only takes pending runs). A live run's
    holder sees the status on its next heartbeat and closes the session; a call is hung up by the
    voice driver as soon as the change is committed.
    """
    for status in (S.PENDING, S.RUNNING):
        if _transition(run_id, from_status=status, from_stage=None, to_status=S.CANCELLED, to_stage=G.DONE,
                       detail="cancelled by a user", ended_at=timezone.now()):
            return True
    return False


def run_fail(*, run_id, reason: str, detail: str) -> bool:
    """End a pending or running run as failed: the platform could not test."""
    if reason not in Run.FailureReason.values:
        raise ValueError(f"unknown failure reason {reason!r}")
    for status in (S.RUNNING, S.PENDING):
        if _transition(run_id, from_status=status, from_stage=None, to_status=S.FAILED, to_stage=G.DONE,
                       detail=f"{reason}: {detail}", failure_reason=reason, failure_detail=detail,
                       ended_at=timezone.now()):
            return True
    return False


AUTO_RETRY_DETAIL = "automatic retry: the worker was lost before the conversation began"


def run_lose(*, run_id, worker: str) -> tuple[bool, Run | None]:
    """End a running run whose holder stopped heartbeating as ``failed / error``; returns (whether
    this call ended it, the automatic retry it queued or None).

    A run lost before its conversation began is re-queued once, automatically, since nothing of it
    happened and anyone would retry it by hand. Before the conversation began means still
    ``materializing``: both drivers take a run live before a word is sent or a call is dialled.
    The retry is a new run of the same snapshot (what was queued, not the path as edited since), in
    the same batch, linked by ``retry_of`` and marked ``auto_retry``. Never more than once per
    original run: an automatic retry that is lost in turn stays failed. Every other lost run stays
    as it ended.

    Steps, in one transaction: read the run; if it may be retried, fail it with a conditional
    update guarded on ``materializing`` (two sweeps racing: one wins, one retry) and queue the
    retry; otherwise, or when it went live meanwhile, fail it as any lost run.
    """
    detail = f"The worker executing this run ({worker}) stopped responding."
    with transaction.atomic():
        run = Run.objects.filter(pk=run_id, status=S.RUNNING, stage=G.MATERIALIZING).order_by().first()
        retriable = (run is not None and not run.auto_retry and run.path_id is not None
                     and run.scenario_id is not None)
        if retriable and _transition(
            run_id, from_status=S.RUNNING, from_stage=G.MATERIALIZING, to_status=S.FAILED, to_stage=G.DONE,
            detail=f"{Run.FailureReason.ERROR}: {detail} Re-queued automatically.",
            failure_reason=Run.FailureReason.ERROR, ended_at=timezone.now(),
            failure_detail=f"{detail} The conversation had not begun, so it was re-queued automatically.",
        ):
            now = timezone.now()
            retry = Run.objects.create(
                workspace_id=run.workspace_id, scenario_id=run.scenario_id, path_id=run.path_id,
                batch_id=run.batch_id, retry_of=run, auto_retry=True, snapshot=run.snapshot,
                created_by_id=run.created_by_id, created_at=now,
            )
            _record(retry.pk, from_status="", to_status=S.PENDING, from_stage="", to_stage=G.QUEUED, at=now,
                    detail=AUTO_RETRY_DETAIL)
            _queued_after_commit([retry])
            return True, retry
    return run_fail(run_id=run_id, reason=Run.FailureReason.ERROR, detail=f"{detail} Safe to retry."), None


def run_claim_many(*, run_ids, worker: str) -> list[str]:
    """An executor takes admitted runs; returns the ids it got. Exactly one executor ever gets a
    run: the free ones are locked first (a concurrent claimer waits, then finds them taken), then
    taken with one update."""
    with transaction.atomic(savepoint=False):
        free = [str(pk) for pk in Run.objects.select_for_update().filter(
            pk__in=list(run_ids), status=S.RUNNING, stage=G.MATERIALIZING, worker="").order_by().values_list(
            "pk", flat=True)]
        if free:
            Run.objects.filter(pk__in=free).update(worker=worker, heartbeat_at=timezone.now())
    return free


def run_go_live(*, run_id, persona: str) -> bool:
    now = timezone.now()
    return _transition(run_id, from_status=S.RUNNING, from_stage=G.MATERIALIZING, to_status=S.RUNNING,
                       to_stage=G.LIVE, persona=persona, started_at=now, heartbeat_at=now)


def run_await_call(*, run_id, persona: str, attach_by, detail: str) -> bool:
    """A voice run goes live with its call placed (or its number armed) and waits for the call's
    conversation to attach wherever it lands; the worker lets go of it. Past ``attach_by`` the
    sweep ends it (no answer, or no inbound call within the window)."""
    now = timezone.now()
    return _transition(run_id, from_status=S.RUNNING, from_stage=G.MATERIALIZING, to_status=S.RUNNING,
                       to_stage=G.LIVE, detail=detail, persona=persona, started_at=now, heartbeat_at=now,
                       worker="", attach_by=attach_by)


def run_finalize(*, run_id) -> bool:
    return _transition(run_id, from_status=S.RUNNING, from_stage=G.LIVE, to_status=S.RUNNING, to_stage=G.FINALIZING)


def run_complete(*, run_id, verdict: str, metrics: dict) -> bool:
    return _transition(run_id, from_status=S.RUNNING, from_stage=G.FINALIZING, to_status=S.COMPLETED,
                       to_stage=G.DONE, verdict=verdict, metrics=metrics, ended_at=timezone.now())


def admit_pending_runs(*, workspace_id) -> list:
    """Admit the oldest pending runs of a workspace into free slots; returns the admitted ids.

    Steps: lock the workspace row (PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: the IMMEDIATE
    transaction holds the database write lock), so admissions of one workspace are serialized
    across every worker and process; count the runs past queued; walk the pending runs oldest
    first, skipping those whose scenario is at its own bound, and lock the chosen ones; move them
    all with one update and record their events with one insert. The bound therefore holds at
    every instant.
    """
    if not Run.objects.filter(workspace_id=workspace_id, status=S.PENDING).exists():
        # The common case when a run ends: nothing waits. Read outside a transaction: on SQLite
        # every transaction takes the write lock.
        return []
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().filter(pk=workspace_id).first()
        if workspace is None or workspace.queue_paused:
            return []
        active = Run.objects.filter(workspace_id=workspace_id, status=S.RUNNING)
        # The operator's cap bounds what a workspace asked for before the cap was lowered.
        limit = min(workspace.max_parallel_runs, settings.MAX_PARALLEL_RUNS_PER_WORKSPACE)
        free = limit - active.count()
        if free <= 0:
            return []
        per_scenario = dict(active.values_list("scenario_id").annotate(n=Count("id")).order_by())
        admitted = _choose_admitted(workspace_id, free, per_scenario)
        if admitted:
            now = timezone.now()
            Run.objects.filter(pk__in=admitted, status=S.PENDING).update(
                status=S.RUNNING, stage=G.MATERIALIZING, admitted_at=now, heartbeat_at=now)
            RunEvent.objects.bulk_create([
                RunEvent(run_id=run_id, at=now, from_status=S.PENDING, to_status=S.RUNNING,
                         from_stage=G.QUEUED, to_stage=G.MATERIALIZING)
                for run_id in admitted
            ])
            ids = [str(i) for i in admitted]
            transaction.on_commit(lambda: dispatch.execute_runs(ids))
        return admitted


ADMISSION_CHUNK = 200


def _choose_admitted(workspace_id, free: int, per_scenario: dict) -> list:
    """Up to ``free`` pending runs, oldest first, none past its scenario's own bound; locked.

    Read a chunk at a time by position (created_at, id), each chunk whole before the next: SQLite
    gives no isolation between a cursor and writes on the same connection, and a cursor left open
    over the rows being admitted skipped some of them.
    """
    chosen = []
    after = None
    while len(chosen) < free:
        pending = Run.objects.filter(workspace_id=workspace_id, status=S.PENDING)
        if after is not None:
            pending = pending.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1]))
        chunk = list(pending.order_by("created_at", "id").select_for_update(of=("self",))
                     .values_list("id", "scenario_id", "scenario__max_parallel_runs", "created_at")[:ADMISSION_CHUNK])
        for run_id, scenario_id, scenario_bound, _ in chunk:
            if len(chosen) >= free:
                break
            if scenario_bound is not None and per_scenario.get(scenario_id, 0) >= scenario_bound:
                continue
            per_scenario[scenario_id] = per_scenario.get(scenario_id, 0) + 1
            chosen.append(run_id)
        if len(chunk) < ADMISSION_CHUNK:
            break
        after = (chunk[-1][3], chunk[-1][0])
    return chosen


def workspace_queue_pause(*, workspace: Workspace) -> None:
    Workspace.objects.filter(pk=workspace.pk).update(queue_paused=True)
    workspace.queue_paused = True


def workspace_queue_resume(*, workspace: Workspace) -> None:
    Workspace.objects.filter(pk=workspace.pk).update(queue_paused=False)
    workspace.queue_paused = False
    _admit_after_commit(workspace.pk)


# Watchdogs -------------------------------------------------------------------------------------

DISPATCH_RETRY_SECONDS = 10
DURATION_GRACE_SECONDS = 15


def sweep() -> dict:
    """The periodic safety net: what a lost message or a dead worker left behind.

    - workspaces with pending runs and free slots get an admission pass;
    - admitted runs no executor claimed (their message was lost) are dispatched again — safe,
      since nothing of them has run yet;
    - runs whose executor stopped heartbeating end as ``failed / error``; those lost before their
      conversation began are re-queued once (``run_lose``);
    - live runs far past their agent's cap end as ``failed / duration_cap_no_progress`` (the
      executor normally ends them itself at the cap);
    - voice runs still waiting for their call past ``attach_by`` end as ``inbound_timeout``
      (inbound: no call arrived in the window) or ``target_unreachable`` (outbound: never answered);
    - batches whose runs have all ended are finished (``batch_finish``).
    """
    now = timezone.now()
    counts = {"admitted": 0, "redispatched": 0, "lost": 0, "retried": 0, "capped": 0, "unanswered": 0}
    for workspace_id in (
        Run.objects.filter(status=S.PENDING, workspace__queue_paused=False)
        .values_list("workspace_id", flat=True).distinct()
    ):
        counts["admitted"] += len(admit_pending_runs(workspace_id=workspace_id))
    unclaimed = Run.objects.filter(
        status=S.RUNNING, stage=G.MATERIALIZING, worker="",
        admitted_at__lt=now - timedelta(seconds=DISPATCH_RETRY_SECONDS),
    ).values_list("id", flat=True)
    for run_id in unclaimed:
        # Touch admitted_at so one lost message is re-sent once per period, not on every sweep.
        if Run.objects.filter(pk=run_id, worker="", status=S.RUNNING).update(admitted_at=now):
            dispatch.execute_runs([str(run_id)])
            counts["redispatched"] += 1
    lost = Run.objects.filter(
        status=S.RUNNING, heartbeat_at__lt=now - timedelta(seconds=settings.RUN_HEARTBEAT_TIMEOUT_SECONDS)
    ).exclude(worker="").values_list("id", "worker")
    for run_id, worker in lost:
        ended, retry = run_lose(run_id=run_id, worker=worker)
        counts["lost"] += ended
        counts["retried"] += retry is not None
    # A conversation's cap counts from when it began: the call connected, or the chat went live.
    for run_id, began, cap in Run.objects.filter(status=S.RUNNING, stage=G.LIVE).exclude(worker="").annotate(
        began=Coalesce("attached_at", "started_at")
    ).values_list("id", "began", "snapshot__agent__max_duration_seconds"):
        limit = (cap or 300) + DURATION_GRACE_SECONDS
        if began and began < now - timedelta(seconds=limit):
            if run_fail(run_id=run_id, reason=Run.FailureReason.DURATION_CAP_NO_PROGRESS,
                        detail=f"The conversation was still going after the agent's {cap}s cap."):
                counts["capped"] += 1
    from runs.execution import driver_for  # not at the top: execution imports this module
    from runs.failures import PlatformError

    for run_id, channel, direction, window in Run.objects.filter(
        status=S.RUNNING, stage=G.LIVE, worker="", attach_by__lt=now
    ).values_list("id", "snapshot__scenario__channel", "snapshot__scenario__direction",
                  "snapshot__scenario__inbound_window_seconds"):
        try:
            reason, detail = driver_for(channel).never_attached(str(run_id), direction=direction, window=window)
        except PlatformError as exc:  # no driver for the channel in this process
            reason, detail = exc.reason, exc.detail
        if run_fail(run_id=run_id, reason=reason, detail=detail):
            counts["unanswered"] += 1
    # A batch whose last run's end did not finish it (that process died right after the commit).
    unended = Run.objects.filter(batch_id=OuterRef("pk")).exclude(status__in=TERMINAL_STATUSES)
    counts["batches_finished"] = sum(
        batch_finish(batch_id=batch_id)
        for batch_id in Batch.objects.filter(finished_at__isnull=True).exclude(Exists(unended)).values_list("id", flat=True)
    )
    return counts
