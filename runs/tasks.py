from celery import shared_task

from runs import services


@shared_task(ignore_result=True)
def admit_runs(workspace_id: str) -> None:
    services.admit_pending_runs(workspace_id=workspace_id)


@shared_task(ignore_result=True)
def execute_run(run_id: str) -> None:
    """Hand the run to this process's conversation loop; returns at once."""
    from runs.executor import get_host

    get_host().submit(run_id)


@shared_task(ignore_result=True)
def sweep_runs() -> None:
    services.sweep()
