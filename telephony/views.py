"""Provider webhooks: call status, the ConversationRelay session's end, recordings, incoming calls.

Each is CSRF-exempt, verifies ``X-Twilio-Signature`` over the exact public URL the provider called,
is idempotent, and answers 200 for unknown or stale runs so the provider stops retrying.
"""

from __future__ import annotations

import logging
import uuid

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from telephony import services, tasks
from telephony.providers import TelephonyError, provider_for
from telephony.twiml import hang_up_twiml, relay_twiml
from assure.doorbell import ring

logger = logging.getLogger(__name__)

TWIML = "text/xml"


def _verified(request: HttpRequest, provider_name: str):
    """The provider, if the request carries its valid signature; None otherwise."""
    try:
        provider = provider_for(provider_name)
    except TelephonyError:
        return None
    url = provider.callback_base_url.rstrip("/") + request.get_full_path()
    params = {key: request.POST.get(key) for key in request.POST}
    if not provider.signature_valid(url, params, request.headers.get("X-Twilio-Signature", "")):
        logger.warning("refused a %s webhook with a bad signature: %s", provider_name, request.path)
        return None
    return provider


def _run_id(request: HttpRequest) -> str | None:
    try:
        return str(uuid.UUID(request.GET.get("run", "")))
    except ValueError:
        return None


def _signed(view):
    """CSRF-exempt, POST only, and signed by the provider named in the URL."""

    @csrf_exempt
    @require_POST
    def wrapper(request, provider):
        verified = _verified(request, provider)
        if verified is None:
            return HttpResponseForbidden("bad signature")
        return view(request, verified)

    wrapper.__name__ = view.__name__
    return wrapper


@_signed
def status_callback(request, provider):
    sequence = request.POST.get("SequenceNumber", "")
    services.call_status_update(
        run_id=_run_id(request), sid=request.POST.get("CallSid", "")[:64], status=request.POST.get("CallStatus", ""),
        sequence=int(sequence) if sequence.isdigit() else None, sip=request.POST.get("SipResponseCode", "")[:8],
    )
    return HttpResponse(status=204)


@_signed
def connect_action(request, provider):
    """The ConversationRelay session ended; the call hangs up."""
    run_id = _run_id(request)
    if run_id:
        services.relay_session_ended(run_id=run_id, status=request.POST.get("SessionStatus", ""),
                                     error_code=request.POST.get("ErrorCode", "")[:10],
                                     handoff=request.POST.get("HandoffData", "")[:2000])
    return HttpResponse(hang_up_twiml(), content_type=TWIML)


@_signed
def recording_callback(request, provider):
    run_id = _run_id(request)
    if run_id and request.POST.get("RecordingStatus", "completed") == "completed":
        call_id = services.recording_received(
            run_id=run_id, recording_sid=request.POST.get("RecordingSid", ""),
            url=request.POST.get("RecordingUrl", ""), duration=request.POST.get("RecordingDuration", ""))
        if call_id:
            ring(tasks.download_recording, call_id, request.POST.get("RecordingUrl", ""))
    return HttpResponse(status=204)


@_signed
def incoming_call(request, provider):
    """A call to one of our numbers: connect it to the armed run waiting on that number, or decline."""
    run = services.inbound_match(provider=provider.name, to_number=request.POST.get("To", "")[:16],
                                 sid=request.POST.get("CallSid", "")[:64], from_number=request.POST.get("From", ""))
    if run is None:
        return HttpResponse(hang_up_twiml("This number is not expecting a call right now. Goodbye."), content_type=TWIML)
    twiml = relay_twiml(relay_url=provider.relay_url(), action_url=provider.webhook_url("connect", run=str(run.pk)),
                        run_id=str(run.pk), agent=run.snapshot["agent"],
                        recording_callback=provider.webhook_url("recording", run=str(run.pk)))
    return HttpResponse(twiml, content_type=TWIML)
