"""The database itself refuses a run whose status, stage and failure fields disagree."""

import pytest
from django.db import IntegrityError, transaction

from runs.models import _FAILURE_REASONS, Run, TERMINAL_STATUSES
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=False)


def test_choices_are_exactly_the_documented_values():
    assert Run.Status.values == ["pending", "running", "completed", "failed", "cancelled"]
    assert Run.Stage.values == ["queued", "materializing", "live", "finalizing", "done"]
    assert Run.FailureReason.values == [
        "target_unreachable", "caller_voice_unavailable", "tool_sync_pending",
        "duration_cap_no_progress", "inbound_timeout", "error",
    ]
    assert _FAILURE_REASONS == Run.FailureReason.values
    assert Run.Verdict.values == ["passed", "failed", "inconclusive"]
    assert set(TERMINAL_STATUSES) == {"completed", "failed", "cancelled"}
    assert set(Run.FAILURE_HELP) == set(Run.FailureReason.values)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "pending", "stage": "live"},
        {"status": "running", "stage": "queued"},
        {"status": "completed", "stage": "finalizing"},
        {"status": "failed", "stage": "done"},  # no reason
        {"status": "failed", "stage": "done", "failure_reason": "gremlins"},
        {"status": "completed", "stage": "done", "failure_reason": "error"},
        {"status": "running", "stage": "live", "verdict": "passed"},
    ],
)
def test_inconsistent_runs_are_refused_by_the_database(fields):
    run = RunFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.filter(pk=run.pk).update(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "running", "stage": "materializing"},
        {"status": "failed", "stage": "done", "failure_reason": "target_unreachable"},
        {"status": "completed", "stage": "done", "verdict": "failed"},
        {"status": "cancelled", "stage": "done"},
    ],
)
def test_consistent_runs_are_stored(fields):
    run = RunFactory()
    assert Run.objects.filter(pk=run.pk).update(**fields) == 1


def test_failure_help_names_what_to_check():
    run = RunFactory.build(status="failed", failure_reason="tool_sync_pending")
    assert "Functions panel" in run.failure_help
