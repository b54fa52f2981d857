"""Telephony queries shared by the pages, the API and the services: phone numbers, who holds them,
and a run's call and its recording."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from assure.models import Workspace
from assure.tenancy import scoped
from runs.models import TERMINAL_STATUSES, Run
from telephony.models import Call, PhoneNumber, Provider

# A number is free for edits when no run reserves it, or the run that did has ended (its release
# is a doorbell away).
NUMBER_NOT_HELD = Q(reserved_by__isnull=True) | Q(reserved_by__status__in=TERMINAL_STATUSES)

# The loopback telephony writes a call's recording within seconds of its end, when it can.
LOOPBACK_RECORDING_WAIT = timedelta(seconds=60)
# Twilio posts the recording callback within minutes at most.
PROVIDER_RECORDING_WAIT = timedelta(minutes=15)


def phone_numbers_for(workspace: Workspace | None) -> QuerySet:
    return scoped(PhoneNumber, workspace).select_related("reserved_by").order_by("number")


def number_registered(*, provider: str, number: str, exclude_pk=None) -> bool:
    """Whether any workspace has this number with this provider: the provider routes a number's
    calls to one place, so it is registered once in the whole installation."""
    return PhoneNumber.objects.filter(provider=provider, number=number).exclude(pk=exclude_pk).exists()


def holding_run(phone_number: PhoneNumber) -> Run | None:
    """The armed run (not yet ended) that reserves ``phone_number``, if any."""
    if phone_number.reserved_by_id is None:
        return None
    return Run.objects.filter(pk=phone_number.reserved_by_id).exclude(status__in=TERMINAL_STATUSES).first()


def run_call(run: Run) -> Call | None:
    """The call of a voice run (None for chat runs and voice runs not yet dialled or armed)."""
    try:
        return run.call
    except Call.DoesNotExist:
        return None


def recorded_call(*, workspace: Workspace | None, run_id) -> Call | None:
    """The call of run ``run_id`` in ``workspace`` if its recording is stored; None otherwise (no
    such run in that workspace, a chat run, or no recording yet)."""
    return scoped(Call, workspace).filter(run_id=run_id).exclude(recording="").first()


def recording_state(call: Call, *, now=None) -> str:
    """What the run page says about a call's audio:

    - ``stored``: the recording is ours to play;
    - ``live``: the call is not over yet (recorded once it ends);
    - ``unanswered``: the call ended unanswered, so nothing was recorded;
    - ``processing``: the call ended moments ago and its recording is on its way;
    - ``unavailable``: it has not come and will not (the loopback telephony records only where
      espeak-ng is installed; a provider's callback this late will not come).
    """
    if call.recording:
        return "stored"
    if call.ended_at is None and not call.is_over:
        return "live"
    if call.answered_at is None:
        return "unanswered"
    now = now or timezone.now()
    wait = LOOPBACK_RECORDING_WAIT if call.provider == Provider.LOOPBACK else PROVIDER_RECORDING_WAIT
    if call.ended_at is not None and now - call.ended_at > wait:
        return "unavailable"
    return "processing"
