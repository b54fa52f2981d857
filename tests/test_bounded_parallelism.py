"""Admission keeps the bound when many admitters race (threads here; worker processes in the
end-to-end tests)."""

import threading

import pytest
from django.db import connection

from runs import live, services
from runs.models import Run, RunEvent
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


def test_racing_admissions_never_exceed_the_bound(monkeypatch, workspace):
    monkeypatch.setattr(live, "ring", lambda task, *args: None)  # no workers here: admission only
    workspace.max_parallel_runs = 3
    workspace.queue_paused = True  # enqueue admits at once; hold the runs back so the threads race for them
    workspace.save()
    scenario = f.ScenarioFactory(workspace=workspace)
    paths = [f.PathFactory(scenario=scenario, name=f"p{i:02d}") for i in range(12)]
    created = [services.path_run(path=p) for p in paths]
    assert not Run.objects.filter(status="running").exists()
    type(workspace).objects.filter(pk=workspace.pk).update(queue_paused=False)
    errors = []
    barrier = threading.Barrier(6)

    def admit():
        try:
            barrier.wait()
            for _ in range(5):
                services.admit_pending_runs(workspace_id=workspace.pk)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=admit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    running = list(Run.objects.filter(status="running").order_by("created_at"))
    assert len(running) == 3
    assert [r.pk for r in running] == [r.pk for r in created[:3]]  # oldest first
    # A slot frees up: exactly the next oldest is admitted, as the cancel commits.
    services.run_cancel(run_id=running[0].pk)
    assert list(Run.objects.filter(status="running").order_by("created_at").values_list("pk", flat=True)) == [
        r.pk for r in created[1:4]]


def test_paused_queue_admits_nothing(monkeypatch, workspace):
    monkeypatch.setattr(live, "ring", lambda task, *args: None)
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    services.workspace_queue_pause(workspace=workspace)
    run = services.path_run(path=path)
    assert services.admit_pending_runs(workspace_id=workspace.pk) == []
    services.workspace_queue_resume(workspace=workspace)  # admits as it commits
    run.refresh_from_db()
    assert run.status == "running"


def test_a_terminal_run_never_changes(monkeypatch, workspace):
    monkeypatch.setattr(live, "ring", lambda task, *args: None)
    run = services.path_run(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)))
    assert services.run_cancel(run_id=run.pk) is True
    assert services.run_cancel(run_id=run.pk) is False
    assert services.run_fail(run_id=run.pk, reason="error", detail="late") is False
    assert services.admit_pending_runs(workspace_id=workspace.pk) == []
    run.refresh_from_db()
    assert (run.status, run.failure_reason) == ("cancelled", "")
    assert list(run.events.values_list("to_status", flat=True)) == ["pending", "running", "cancelled"]


def test_one_admission_takes_every_pending_run_that_fits(monkeypatch, settings, workspace):
    """More pending runs than one read chunk, some of a scenario with a bound of its own: one
    admission takes all that fit, oldest first, each with its event."""
    monkeypatch.setattr(live, "ring", lambda task, *args: None)
    settings.MAX_PARALLEL_RUNS_PER_WORKSPACE = 1010
    workspace.max_parallel_runs = 1010
    workspace.queue_paused = True
    workspace.save()
    free, bounded = f.ScenarioFactory(workspace=workspace), f.ScenarioFactory(workspace=workspace, max_parallel_runs=5)
    batch_free, _ = services.scenario_run_all(scenario=_with_paths(free, 1000))
    batch_bounded, _ = services.scenario_run_all(scenario=_with_paths(bounded, 20))
    type(workspace).objects.filter(pk=workspace.pk).update(queue_paused=False)

    admitted = services.admit_pending_runs(workspace_id=workspace.pk)

    assert len(admitted) == 1005
    assert Run.objects.filter(batch=batch_free, status="running").count() == 1000
    assert set(Run.objects.filter(batch=batch_bounded, status="running").values_list("pk", flat=True)) == set(
        Run.objects.filter(batch=batch_bounded).order_by("created_at", "id").values_list("pk", flat=True)[:5])
    assert RunEvent.objects.filter(run_id__in=admitted, to_stage="materializing").count() == 1005


def _with_paths(scenario, n: int):
    for i in range(n):
        f.PathFactory(scenario=scenario, name=f"p{i:03d}")
    return scenario
