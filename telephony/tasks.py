import logging

from celery import shared_task

from telephony import services
from telephony.providers import TelephonyError


@shared_task(bind=True, ignore_result=True, max_retries=4)
def download_recording(self, call_id: str, url: str) -> None:
    """Bring a call's recording into our storage; retried with backoff while the provider is away."""
    try:
        services.recording_download(call_id=call_id, url=url)
    except TelephonyError as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(countdown=2 ** self.request.retries * 5) from None
        logging.getLogger(__name__).warning("recording of call %s not downloaded: %s", call_id, exc)
