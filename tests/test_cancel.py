"""A finished run never changes again: cancel leaves a completed run as it was, and a cancelled
run can never gain a transcript row, whoever still holds its conversation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from assure.services import api_token_create
from runs import services
from runs.models import Run, RunEvent, ToolInvocation, Turn
from runs.writer import save_rows
from tests import factories as f

pytestmark = pytest.mark.django_db

TURN = {"seq": 1, "speaker": "target", "text": "too late", "started_ms": 0, "ended_ms": 10,
        "latency_ms": None, "is_error": False}


def completed_run(workspace) -> Run:
    ended_at = timezone.now() - timedelta(minutes=5)
    return f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)),
                        status="completed", stage="done", verdict="passed", ended_at=ended_at)


def test_cancel_leaves_a_completed_run_as_it_was(workspace):
    run = completed_run(workspace)

    assert services.run_cancel(run_id=run.pk) is False

    after = Run.objects.get(pk=run.pk)
    assert (after.status, after.stage, after.verdict, after.ended_at) == ("completed", "done", "passed", run.ended_at)
    assert not RunEvent.objects.filter(run=run).exists()


def test_cancelling_a_completed_run_through_the_api_answers_with_it_unchanged(client, workspace):
    _, key = api_token_create(workspace=workspace, name="tests")
    run = completed_run(workspace)

    response = client.post(f"/api/v1/runs/{run.pk}/cancel/", HTTP_AUTHORIZATION=f"Token {key}")

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["verdict"]) == ("completed", "passed")
    assert Run.objects.get(pk=run.pk).status == "completed"


@pytest.mark.parametrize("model", [Turn, ToolInvocation], ids=["turn", "tool invocation"])
def test_a_cancelled_run_gains_no_transcript_row(workspace, model):
    run = f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)),
                       status="running", stage="live", worker="worker:test")
    row = TURN if model is Turn else {"seq": 1, "name": "end_call", "arguments": {}, "result": {},
                                      "at_ms": 0, "duration_ms": None, "status": "ok"}
    assert save_rows([(model, run.pk, row)]) == [True]  # while it runs, the row is saved

    assert services.run_cancel(run_id=run.pk) is True
    late = {**row, "seq": 2}

    assert save_rows([(model, run.pk, late)]) == [False]
    assert list(model.objects.filter(run=run).values_list("seq", flat=True)) == [1]
