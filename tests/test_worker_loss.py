"""A worker killed mid-run: its run ends as failed / error once heartbeats stop, and is never
executed again behind the user's back (runs lost before their conversation began are retried:
``tests/test_auto_retry.py``)."""

import pytest

from runs import services
from runs.models import Run, Turn
from scenarios.models import Path
from tests import factories as f
from tests.support import CeleryWorker, FakeTarget, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_killed_worker_s_run_fails_as_error_after_the_heartbeat_window(test_redis_url, workspace):
    bot = FakeTarget(lambda message, n: (200, {"reply": "ok"}))
    victim = CeleryWorker(redis_url=test_redis_url, name="victim")
    survivor = None
    try:
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, target=target),
                             script=[{"say": "hello"}, {"pause_ms": 30000}, {"say": "still there?"}])
        run = services.path_run(path=Path.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk))
        wait_for(lambda: Turn.objects.filter(run=run).count() == 2, message="the run to go live")
        executor = Run.objects.get(pk=run.pk).worker
        assert executor
        victim.kill()
        # A new worker with beat: the sweep must notice the silence, not re-run the conversation.
        survivor = CeleryWorker(redis_url=test_redis_url, name="survivor", beat=True)
        ended = wait_for(lambda: (r := Run.objects.get(pk=run.pk)).status == "failed" and r, timeout=30,
                         message="the lost run to fail")
        assert ended.failure_reason == "error"
        assert "stopped responding" in ended.failure_detail and "Safe to retry" in ended.failure_detail
        assert ended.worker == executor
        assert Turn.objects.filter(run=run).count() == 2
        assert len(bot.requests) == 1
        # Its conversation had begun: it stays as it ended, with no automatic retry (one would be
        # queued in the same transaction that failed it).
        assert not Run.objects.filter(retry_of=run).exists() and Run.objects.filter(path=path).count() == 1
        assert not ended.auto_retry
    finally:
        victim.kill()
        if survivor:
            survivor.stop()
        bot.close()


def test_a_worker_shut_down_mid_run_ends_its_run_at_once_as_error(test_redis_url, workspace):
    import time

    bot = FakeTarget(lambda message, n: (200, {"reply": "ok"}))
    worker = CeleryWorker(redis_url=test_redis_url, name="leaving", env={"RUN_SHUTDOWN_GRACE_SECONDS": "1"})
    try:
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, target=target),
                             script=[{"say": "hello"}, {"pause_ms": 30000}, {"say": "still there?"}])
        run = services.path_run(path=Path.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk))
        wait_for(lambda: Turn.objects.filter(run=run).count() == 2, message="the run to go live")
        started = time.monotonic()
        worker.stop()  # SIGTERM: Celery's warm shutdown
        ended = Run.objects.get(pk=run.pk)
        assert ended.status == "failed" and ended.failure_reason == "error", ended.status
        assert "shut down mid-conversation" in ended.failure_detail
        assert time.monotonic() - started < 10  # not the heartbeat watchdog's 30 s
    finally:
        worker.kill()
        bot.close()
