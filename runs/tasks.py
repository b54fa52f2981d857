from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown

from runs import services


@shared_task(ignore_result=True)
def admit_runs(workspace_id: str) -> None:
    services.admit_pending_runs(workspace_id=workspace_id)


@shared_task(bind=True, ignore_result=True, max_retries=4)
def notify_run_finished(self, run_id: str) -> None:
    """The workspace's completion webhook; retried with backoff on network errors and 5xx."""
    import logging

    from runs.models import Run
    from runs.notify import DeliveryError, deliver

    run = Run.objects.select_related("workspace").filter(pk=run_id).first()
    if run is None or not run.workspace.webhook_url:
        return
    try:
        deliver(run)
    except DeliveryError as exc:
        if exc.retryable and self.request.retries < self.max_retries:
            raise self.retry(countdown=2 ** self.request.retries * 5) from None
        logging.getLogger(__name__).warning("completion webhook for run %s not delivered: %s", run_id, exc)


@shared_task(ignore_result=True)
def execute_runs(run_ids: list[str]) -> None:
    """Hand several admitted runs to this process's conversation loop at once."""
    from runs.executor import get_host

    host = get_host()
    for run_id in run_ids:
        host.submit(run_id)


@shared_task(ignore_result=True)
def stop_run(run_id: str) -> None:
    """A run ended: its channel's driver releases what it held (hangs up a call, frees a number)."""
    from runs.execution import driver_for
    from runs.models import Run

    channel = Run.objects.filter(pk=run_id).values_list("snapshot__scenario__channel", flat=True).first()
    if channel:
        driver_for(channel).stop(run_id)


@shared_task(ignore_result=True)
def sweep_runs() -> None:
    services.sweep()


@worker_process_init.connect
def start_conversation_host(**kwargs) -> None:
    """Start each worker process's conversation loop before its first run, so a run never pays
    for importing the connectors and HTTP clients (over a second on a cold process)."""
    from runs.executor import get_host

    get_host()


@worker_process_shutdown.connect
def stop_conversation_host(**kwargs) -> None:
    """A worker shutting down lets its conversations finish for a short grace period, then ends the
    rest as ``failed / error`` at once rather than leaving them to the heartbeat watchdog."""
    from runs.executor import shutdown_host

    shutdown_host()
