"""Group commit of transcript rows (``runs.writer``): rows of many conversations saved together,
each caller told whether its own row was saved, and one bad row failing only its own caller."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.db import DatabaseError, connection, transaction

from assure.models import Workspace
from runs import dispatch, execution, services, writer
from runs.evaluation import Result
from runs.models import CriterionResult, Run, ToolInvocation, Turn
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)  # the database threads see committed rows only


def turn(seq: int, text: str = "hello") -> dict:
    return {"seq": seq, "speaker": "target", "text": text, "started_ms": seq * 10, "ended_ms": seq * 10 + 5,
            "latency_ms": 5, "is_error": False}


def running_runs(workspace, n: int):
    scenario = f.ScenarioFactory(workspace=workspace)
    return [f.RunFactory(path=f.PathFactory(scenario=scenario), status="running", stage="live", worker="worker:test")
            for _ in range(n)]


def test_rows_of_many_conversations_are_saved_and_each_caller_hears_of_its_own(workspace):
    runs = running_runs(workspace, 3)
    services.run_cancel(run_id=runs[2].pk)  # ended: its rows must not land

    async def converse(run, n):
        return [await writer.writer().save(Turn, run.pk, turn(seq)) for seq in range(1, n + 1)]

    async def all_at_once():
        return await asyncio.gather(converse(runs[0], 5), converse(runs[1], 5), converse(runs[2], 2),
                                    writer.writer().save(ToolInvocation, runs[0].pk, {
                                        "seq": 1, "name": "end_call", "arguments": {"why": "done"},
                                        "result": {"ok": True}, "at_ms": 7, "duration_ms": 1, "status": "ok"}))

    first, second, cancelled, tool = async_to_sync(all_at_once)()

    assert (first, second, cancelled, tool) == ([True] * 5, [True] * 5, [False] * 2, True)
    for run in runs[:2]:
        assert list(Turn.objects.filter(run=run).order_by("seq").values_list("seq", "text")) == [
            (seq, "hello") for seq in range(1, 6)]
    assert not Turn.objects.filter(run=runs[2]).exists()
    assert ToolInvocation.objects.get(run=runs[0]).arguments == {"why": "done"}


def test_rows_that_arrive_together_share_one_flush(workspace):
    runs = running_runs(workspace, 20)

    async def together():
        return await asyncio.gather(*(writer.writer().save(Turn, run.pk, turn(1)) for run in runs))

    saved = async_to_sync(together)()

    assert saved == [True] * 20
    assert Turn.objects.filter(run__in=runs).count() == 20
    # All twenty were written by one flush: they share its created_at.
    assert Turn.objects.filter(run__in=runs).values("created_at").distinct().count() == 1


def test_a_row_that_breaks_a_constraint_fails_only_its_own_caller(workspace):
    good, bad = running_runs(workspace, 2)
    Turn.objects.create(run=bad, **turn(1, "already there"))

    async def together():
        return await asyncio.gather(writer.writer().save(Turn, good.pk, turn(1)),
                                    writer.writer().save(Turn, bad.pk, turn(1)),  # the same seq again
                                    return_exceptions=True)

    saved_good, saved_bad = async_to_sync(together)()

    assert saved_good is True
    assert isinstance(saved_bad, Exception)
    assert Turn.objects.get(run=good).text == "hello"
    assert Turn.objects.get(run=bad).text == "already there"


def test_stage_changes_of_many_conversations_share_a_flush_and_each_caller_hears_of_its_own(workspace, monkeypatch):
    runs = running_runs(workspace, 3)
    services.run_cancel(run_id=runs[2].pk)  # ended: its change is refused
    flushes = []
    write = writer.write_together
    monkeypatch.setattr(writer, "write_together", lambda items: flushes.append(len(items)) or write(items))

    async def together():
        return await asyncio.gather(*(writer.writer().call(services.run_finalize, run_id=run.pk) for run in runs))

    assert async_to_sync(together)() == [True, True, False]
    assert flushes == [3]
    assert [Run.objects.get(pk=run.pk).stage for run in runs] == ["finalizing", "finalizing", "done"]


def test_a_call_that_fails_undoes_only_its_own_writes_as_autocommit_would(workspace):
    broken, refused, fine = running_runs(workspace, 3)

    def finalize_then_break(run_id):
        services.run_finalize(run_id=run_id)
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    def finalize_then_refuse(run_id):
        services.run_finalize(run_id=run_id)
        raise ValueError("refused after finalizing")

    async def together():
        return await asyncio.gather(writer.writer().call(finalize_then_break, broken.pk),
                                    writer.writer().call(finalize_then_refuse, refused.pk),
                                    writer.writer().call(services.run_finalize, run_id=fine.pk),
                                    return_exceptions=True)

    outcomes = async_to_sync(together)()

    assert isinstance(outcomes[0], DatabaseError)
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] is True
    # A database error undoes the call's own writes (tried again alone, it broke again); any other
    # error keeps what the call wrote before raising, as it would without group commit.
    assert Run.objects.get(pk=broken.pk).stage == "live"
    assert Run.objects.get(pk=refused.pk).stage == "finalizing"
    assert Run.objects.get(pk=fine.pk).stage == "finalizing"


def test_work_made_together_is_done_once_per_flush_and_each_caller_gets_its_own_outcome(workspace):
    calls = []

    def double_all(items):
        calls.append(list(items))
        return [ValueError("odd") if item % 2 else item * 2 for item in items]

    async def together():
        return await asyncio.gather(*(writer.writer().call_together(double_all, item) for item in (2, 3, 4)),
                                    return_exceptions=True)

    doubled = async_to_sync(together)()

    assert calls == [[2, 3, 4]]
    assert doubled[0] == 4 and isinstance(doubled[1], ValueError) and doubled[2] == 8


def test_runs_claimed_together_go_to_one_executor_only(workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    runs = [f.RunFactory(path=f.PathFactory(scenario=scenario), status="running", stage="materializing", worker="")
            for _ in range(3)]
    ids = [str(run.pk) for run in runs]
    services.run_claim_many(run_ids=[ids[0]], worker="worker:first")

    assert sorted(services.run_claim_many(run_ids=ids, worker="worker:second")) == sorted(ids[1:])
    assert services.run_claim_many(run_ids=ids, worker="worker:third") == []
    assert dict(Run.objects.filter(pk__in=ids).values_list("pk", "worker")) == {
        runs[0].pk: "worker:first", runs[1].pk: "worker:second", runs[2].pk: "worker:second"}


@pytest.mark.parametrize("webhook_url", ["https://hooks.example.com/runs", ""])
def test_runs_ending_in_one_flush_admit_check_their_batch_and_read_the_webhook_once(workspace, monkeypatch,
                                                                                     webhook_url):
    Workspace.objects.filter(pk=workspace.pk).update(webhook_url=webhook_url)
    scenario = f.ScenarioFactory(workspace=workspace)
    batch = f.BatchFactory(workspace=workspace, scenario=scenario)
    runs = [f.RunFactory(path=f.PathFactory(scenario=scenario), batch=batch, status="running", stage="finalizing",
                         worker="worker:test") for _ in range(3)]
    admissions, checks, webhook_reads, notified = [], [], [], []
    admit, finish, notify = services.admit_pending_runs, services.batch_finish, services._notify_after_commit
    monkeypatch.setattr(services, "admit_pending_runs", lambda **kw: admissions.append(kw) or admit(**kw))
    monkeypatch.setattr(services, "batch_finish", lambda **kw: checks.append(kw) or finish(**kw))
    monkeypatch.setattr(services, "_notify_after_commit", lambda *a: webhook_reads.append(a) or notify(*a))
    monkeypatch.setattr(dispatch, "notify_run_finished", notified.append)

    async def together():
        # As a worker completes them: each with its results, in an atomic block of its own.
        return await asyncio.gather(*(writer.writer().call(execution._complete, run.pk, [], verdict="passed",
                                                           metrics={}) for run in runs))

    assert async_to_sync(together)() == [True] * 3
    assert admissions == [{"workspace_id": workspace.pk}]
    assert checks == [{"batch_id": batch.pk}]
    assert len(webhook_reads) == 1
    assert sorted(map(str, notified)) == (sorted(str(run.pk) for run in runs) if webhook_url else [])
    batch.refresh_from_db()
    assert batch.finished_at is not None


def test_only_the_change_that_completes_a_run_stores_its_criteria_results(workspace):
    finalizing, live = (f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)),
                                     status="running", stage=stage, worker="worker:test")
                        for stage in ("finalizing", "live"))
    results = [Result(name="Booked", kind="regex", outcome="passed", rationale="It said so.", evidence=[2]),
               Result(name="Polite", kind="regex", outcome="failed", rationale="It did not.", evidence=[])]

    def complete(run):
        return execution._complete(run.pk, results, verdict="failed", metrics={"turns": 2})

    assert complete(finalizing) is True
    assert complete(finalizing) is False  # completed already: a second set is never stored
    assert complete(live) is False
    assert list(CriterionResult.objects.filter(run=finalizing).order_by("position").values_list(
        "position", "name", "outcome", "evidence")) == [(0, "Booked", "passed", [2]), (1, "Polite", "failed", [])]
    assert not CriterionResult.objects.filter(run=live).exists()
    assert Run.objects.get(pk=live.pk).stage == "live"


def test_a_hook_that_fails_after_the_commit_neither_undoes_the_flush_nor_stops_the_other_hooks(workspace):
    runs = running_runs(workspace, 2)
    ran = []

    def finalize_with_a_failing_hook(run_id):
        transaction.on_commit(lambda: (_ for _ in ()).throw(DatabaseError("the push's query lost its connection")))
        transaction.on_commit(lambda: ran.append(run_id))
        return services.run_finalize(run_id=run_id)

    async def together():
        return await asyncio.gather(*(writer.writer().call(finalize_with_a_failing_hook, run.pk) for run in runs))

    assert async_to_sync(together)() == [True, True]
    assert sorted(map(str, ran)) == sorted(str(run.pk) for run in runs)
    assert [Run.objects.get(pk=run.pk).stage for run in runs] == ["finalizing", "finalizing"]


def test_an_error_inside_a_calls_own_atomic_block_reaches_its_caller_as_it_was(workspace):
    broken, fine = running_runs(workspace, 2)

    def finalize_then_fail_inside(run_id):
        services.run_finalize(run_id=run_id)
        with transaction.atomic(savepoint=False):
            raise TypeError("metrics that cannot be stored")

    async def together():
        return await asyncio.gather(writer.writer().call(finalize_then_fail_inside, broken.pk),
                                    writer.writer().call(services.run_finalize, run_id=fine.pk),
                                    return_exceptions=True)

    failed, finalized = async_to_sync(together)()

    assert isinstance(failed, TypeError) and finalized is True
    assert Run.objects.get(pk=broken.pk).stage == "live"  # its own block undid it, as it would alone
    assert Run.objects.get(pk=fine.pk).stage == "finalizing"


def test_runs_claimed_together_fail_alone_when_one_cannot_be_loaded(workspace, monkeypatch):
    scenario = f.ScenarioFactory(workspace=workspace)
    runs = []
    for _ in range(3):
        path = f.PathFactory(scenario=scenario)
        runs.append(f.RunFactory(path=path, snapshot=services.snapshot_of(path), status="running",
                                 stage="materializing", worker=""))
    unreadable = str(runs[1].pk)
    load = execution.load_prepared_many

    def load_unless_unreadable(run_ids):
        if unreadable in {str(run_id) for run_id in run_ids}:
            raise ValueError("a secret of this run's target cannot be decrypted")
        return load(run_ids)

    monkeypatch.setattr(execution, "load_prepared_many", load_unless_unreadable)

    outcomes = execution._claim_and_load([(str(run.pk), "worker:test") for run in runs])

    assert isinstance(outcomes[1], ValueError)
    assert [outcome.run_id for outcome in (outcomes[0], outcomes[2])] == [str(runs[0].pk), str(runs[2].pk)]
