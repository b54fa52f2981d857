import gc
import logging

from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from django.conf import settings

# runs.notify and runs.schedules import runs.dispatch, which imports this module: each only reads
# the other's names when called, so the cycle is harmless at import time.
from runs import notify, schedules, selectors, services
from runs.models import Batch, Run

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def admit_runs(workspace_id: str) -> None:
    services.admit_pending_runs(workspace_id=workspace_id)


def deliver_with_retries(task, deliver, what: str) -> None:
    """Call ``deliver()``; on a ``DeliveryError`` a retry may help with, retry ``task`` with backoff
    (5, 10, 20, 40 s), else log that ``what`` was not delivered (the message names no secret URL)."""
    try:
        deliver()
    except notify.DeliveryError as exc:
        if exc.retryable and task.request.retries < task.max_retries:
            raise task.retry(countdown=2 ** task.request.retries * 5) from None
        logger.warning("%s not delivered: %s", what, exc)


@shared_task(bind=True, ignore_result=True, max_retries=4)
def notify_run_finished(self, run_id: str) -> None:
    """The workspace's completion webhook; retried with backoff on network errors and 5xx."""
    run = Run.objects.select_related("workspace").filter(pk=run_id).first()
    if run is None or not run.workspace.webhook_url:
        return
    deliver_with_retries(self, lambda: notify.deliver(run), f"completion webhook for run {run_id}")


@shared_task(ignore_result=True)
def execute_runs(run_ids: list[str], offered: bool = False) -> None:
    """Hand several admitted runs to this process's conversation loop at once. Those a full process
    cannot take are offered once more to the others (``offered``): a copy is never offered again,
    so runs no process has room for cannot go round the processes."""
    # Imported here, not above: every process that queues a task imports this module (web, daphne),
    # and only a worker needs the conversation loop and its connectors.
    from runs import dispatch
    from runs.executor import get_host

    get_host().hand_over(run_ids, wait=settings.WORKER_HANDOVER_WAIT_SECONDS,
                         offer_rest=None if offered else dispatch.offer_runs)


@shared_task(ignore_result=True)
def stop_run(run_id: str) -> None:
    """A run ended: its channel's driver releases what it held (hangs up a call, frees a number)."""
    from runs.execution import driver_for  # a worker's, like runs.executor below

    channel = Run.objects.filter(pk=run_id).values_list("snapshot__scenario__channel", flat=True).first()
    if channel:
        driver_for(channel).stop(run_id)


@shared_task(ignore_result=True)
def sweep_runs() -> None:
    services.sweep()


@shared_task(ignore_result=True)
def fire_due_schedules() -> None:
    """Beat, every SCHEDULE_TICK_SECONDS: queue a batch for each schedule whose due time has come."""
    schedules.schedules_fire_due()


@shared_task(bind=True, ignore_result=True, max_retries=4)
def notify_batch_finished(self, batch_id: str) -> None:
    """A finished batch's news (``runs.notify.batch_news``), retried like the run webhook."""
    batch = Batch.objects.select_related("workspace", "scenario").filter(pk=batch_id).first()
    if batch is None:
        return
    first_try = self.request.retries == 0
    deliver_with_retries(self, lambda: notify.batch_news(batch, first_try=first_try),
                         f"batch.finished webhook for batch {batch_id}")


@shared_task(bind=True, ignore_result=True, max_retries=4)
def post_batch_to_slack(self, batch_id: str) -> None:
    """A scheduled batch's result to its schedule's Slack-compatible incoming webhook."""
    batch = Batch.objects.select_related("workspace", "scenario").filter(pk=batch_id).first()
    schedule = selectors.schedule_of(batch) if batch is not None else None
    if schedule is None or not schedule.slack_webhook_url:
        return
    deliver_with_retries(self, lambda: notify.deliver_batch_to_slack(batch, schedule),
                         f"Slack message for batch {batch_id}")


@worker_init.connect
def freeze_what_is_loaded(**kwargs) -> None:
    """The worker's main process (it takes tasks from the broker and hands them to the pool) keeps
    what it loaded at start for its whole life: frozen, the garbage collector's full passes skip
    it. They scanned ~200k objects and paused the process 150-300 ms each."""
    gc.collect()
    gc.freeze()


@worker_process_init.connect
def start_conversation_host(**kwargs) -> None:
    """Start each worker process's conversation loop before its first run, so a run never pays
    for importing the connectors and HTTP clients (over a second on a cold process); then freeze
    what is loaded, as the main process does, so full collections stop pausing the conversations."""
    from runs.executor import get_host

    get_host()
    gc.collect()
    gc.freeze()


@worker_process_shutdown.connect
def stop_conversation_host(**kwargs) -> None:
    """A worker shutting down lets its conversations finish for a short grace period, then ends the
    rest as ``failed / error`` at once rather than leaving them to the heartbeat watchdog."""
    from runs.executor import shutdown_host

    shutdown_host()
