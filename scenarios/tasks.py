from celery import shared_task

from scenarios import services
from scenarios.models import CustomFunction


@shared_task(ignore_result=True)
def sync_function(function_id: str) -> None:
    """Probe the function's webhook (``services.function_sync``); queued by ``function_request_sync``."""
    try:
        services.function_sync(function_id=function_id)
    except CustomFunction.DoesNotExist:
        pass  # deleted since the sync was requested: nothing left to sync


@shared_task(ignore_result=True)
def resync_stale_functions() -> None:
    services.functions_resync_stale()
