"""A run whose worker was lost before its conversation began is re-queued automatically, once, as
a new run linked by ``retry_of`` and labelled; every other lost run stays as it ended."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from assure.services import api_token_create
from runs import services
from runs.models import TERMINAL_STATUSES, Run, RunEvent, Turn
from scenarios.models import Path
from tests import factories as f
from tests.support import CeleryWorker, FakeTarget, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 8  # one execute message (runs.dispatch.EXECUTE_CHUNK)


def kill_on_first_claim(claimed, worker: CeleryWorker, timeout: float = 30) -> None:
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if claimed.exists():
                worker.kill()
                return
    finally:
        connection.close()  # this thread's own


def claimed_then_killed(workspace, bot, test_redis_url):
    """Queue a batch, let a worker claim it and kill that worker while some of its runs are still
    materializing; (the path, the runs claimed and not yet live) or None if the kill came too late.

    The runs are claimed a few milliseconds before they go live, and the claim is watched from a
    thread of its own, started before the runs are admitted: on a busy machine that thread can miss
    the window, and the caller tries again with a new batch."""
    victim = CeleryWorker(redis_url=test_redis_url, name="victim")
    try:
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, target=target, criteria=[]),
                             script=[{"say": "hello"}, {"expect": "ok"}])
        path = Path.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk)
        services.workspace_queue_pause(workspace=workspace)
        originals = [services.path_run(path=path).pk for _ in range(RUNS)]
        claimed_not_live = Run.objects.filter(pk__in=originals, stage=Run.Stage.MATERIALIZING).exclude(worker="")
        watcher = threading.Thread(target=kill_on_first_claim, args=(claimed_not_live, victim, 15))
        watcher.start()
        services.workspace_queue_resume(workspace=workspace)  # admitted together: one message
        watcher.join(60)
        wait_for(lambda: Run.objects.filter(pk__in=originals).exclude(worker="").exists(), timeout=30,
                 message="the victim to claim a run")
        before_began = set(claimed_not_live.values_list("pk", flat=True))
        if victim.process.poll() is None or not before_began:  # every claimed run went live first
            wait_for(lambda: not Run.objects.filter(pk__in=originals).exclude(status__in=TERMINAL_STATUSES).exists(),
                     timeout=60, message="the missed batch to end")
            return None
        return path, before_began
    finally:
        victim.kill()


def test_a_worker_killed_before_its_runs_conversations_began_gets_each_retried_once(test_redis_url, workspace):
    """The victim claims a batch of runs and is killed while some are still materializing."""
    bot = FakeTarget(lambda message, n: (200, {"reply": "ok"}))
    survivor = None
    try:
        workspace.max_parallel_runs = RUNS
        workspace.save()
        for _ in range(3):
            killed = claimed_then_killed(workspace, bot, test_redis_url)
            if killed is not None:
                break
        assert killed is not None, "three times, every claimed run went live before the kill: nothing to test"
        path, before_began = killed
        survivor = CeleryWorker(redis_url=test_redis_url, name="survivor", beat=True)
        runs = Run.objects.filter(path=path)
        wait_for(lambda: runs.count() >= RUNS + len(before_began) and not runs.exclude(
            status__in=TERMINAL_STATUSES).exists(), timeout=60, message="the lost runs' retries to end")
    finally:
        if survivor:
            survivor.stop()
        bot.close()

    retries = {run.retry_of_id: run for run in Run.objects.filter(path=path, retry_of__isnull=False)}
    assert set(retries) == before_began  # one each, and none for any other run
    assert Run.objects.filter(path=path).count() == RUNS + len(before_began)
    for original_id, retry in retries.items():
        original = Run.objects.get(pk=original_id)
        assert (original.status, original.failure_reason) == ("failed", "error")
        assert "re-queued automatically" in original.failure_detail
        assert not Turn.objects.filter(run=original).exists()
        assert retry.auto_retry and (retry.status, retry.verdict) == ("completed", "passed"), retry.failure_detail
        assert retry.snapshot == original.snapshot
        first = RunEvent.objects.filter(run=retry).order_by("at", "id").first()
        assert first.detail == services.AUTO_RETRY_DETAIL
    # Nothing else was retried, and nothing was said twice for a run that had begun.
    assert not Run.objects.filter(path=path, auto_retry=True).exclude(retry_of__in=before_began).exists()
    assert not Run.objects.filter(retry_of__in=[r.pk for r in retries.values()]).exists()
    assert len(bot.requests) == Turn.objects.filter(run__workspace=workspace, speaker="caller").count()
    api = Client(HTTP_AUTHORIZATION=f"Token {api_token_create(workspace=workspace, name='tests')[1]}")
    retry = next(iter(retries.values()))
    body = api.get(f"/api/v1/runs/{retry.pk}/").json()
    assert (body["auto_retry"], body["retry_of"]) == (True, str(retry.retry_of_id))
    assert api.get(f"/api/v1/runs/{retry.retry_of_id}/").json()["auto_retry"] is False


# The rule, case by case, through the services and the sweep. The lost worker is a name: these runs
# are claimed and then left silent, as a killed worker leaves them.

GONE = "worker:gone:1:abc123"


def queued_and_claimed(path) -> Run:
    run = services.path_run(path=path)  # admitted right after its commit
    assert Run.objects.get(pk=run.pk).stage == Run.Stage.MATERIALIZING
    assert services.run_claim_many(run_ids=[run.pk], worker=GONE)
    return run


def silent(run_id) -> None:
    Run.objects.filter(pk=run_id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))


@pytest.fixture
def path(workspace):
    workspace.max_parallel_runs = 5
    workspace.save()
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace), script=[{"say": "hello"}])
    return Path.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk)


def test_an_automatic_retry_lost_in_turn_is_not_retried_again(path):
    original = queued_and_claimed(path)
    silent(original.pk)
    counts = services.sweep()
    assert (counts["lost"], counts["retried"]) == (1, 1)
    retry = Run.objects.get(retry_of=original)
    assert retry.auto_retry and retry.status == "running"  # admitted at once: a slot was free
    assert services.run_claim_many(run_ids=[retry.pk], worker=GONE)
    silent(retry.pk)
    counts = services.sweep()
    assert (counts["lost"], counts["retried"]) == (1, 0)
    retry.refresh_from_db()
    assert (retry.status, retry.failure_reason) == ("failed", "error") and "Safe to retry" in retry.failure_detail
    assert Run.objects.filter(path=path).count() == 2


def test_a_run_lost_once_it_went_live_is_not_retried_even_before_a_word(path):
    run = queued_and_claimed(path)
    assert services.run_go_live(run_id=run.pk, persona="p")
    silent(run.pk)
    counts = services.sweep()
    assert (counts["lost"], counts["retried"]) == (1, 0)
    assert Run.objects.get(pk=run.pk).status == "failed"
    assert not Run.objects.filter(retry_of=run).exists()


def test_a_lost_run_is_retried_once_however_often_it_is_reported_lost(path):
    run = queued_and_claimed(path)
    silent(run.pk)
    first = services.run_lose(run_id=run.pk, worker=GONE)
    second = services.run_lose(run_id=run.pk, worker=GONE)
    assert first[0] and first[1] is not None
    assert second == (False, None)
    assert Run.objects.filter(retry_of=run).count() == 1


def test_a_lost_run_of_a_batch_is_retried_in_its_batch_and_a_manual_retry_is_not_automatic(path):
    batch, runs = services.scenario_run_all(scenario=path.scenario)
    [run] = runs
    assert services.run_claim_many(run_ids=[run.pk], worker=GONE)
    silent(run.pk)
    services.sweep()
    retry = Run.objects.get(retry_of=run)
    assert retry.batch_id == batch.pk and retry.auto_retry
    services.run_cancel(run_id=retry.pk)
    by_hand = services.run_retry(run=Run.objects.get(pk=retry.pk))
    assert not by_hand.auto_retry


def test_the_run_pages_say_which_run_was_retried_automatically(path, member_client):
    run = queued_and_claimed(path)
    silent(run.pk)
    services.sweep()
    retry = Run.objects.get(retry_of=run)
    retry_page = member_client.get(reverse("runs:run-detail", args=[retry.pk])).content.decode()
    assert "automatic retry" in retry_page and "its worker was lost before the conversation began" in retry_page
    assert reverse("runs:run-detail", args=[run.pk]) in retry_page
    original_page = member_client.get(reverse("runs:run-detail", args=[run.pk])).content.decode()
    assert "Re-queued automatically as" in original_page
    assert reverse("runs:run-detail", args=[retry.pk]) in original_page
    assert "re-queued automatically" in original_page  # the failure detail says so too
