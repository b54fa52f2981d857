"""Everything that writes telephony state: calls, their provider callbacks, number reservations.

Provider requests (dialling, hanging up, downloading) are slow network I/O and never run inside a
database transaction; each write-back is guarded on what it read, so callbacks that arrive twice,
late or out of order change nothing they should not.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from runs import dispatch
from runs import services as run_services
from runs.failures import CallerVoiceUnavailable, PlatformError, RunFailure, TargetUnreachableFailure
from runs.models import Run
from scenarios.models import Target
from telephony.models import FINAL_CALL_STATUSES, Call, PhoneNumber, Provider
from telephony.providers import TelephonyError, provider_for
from telephony.selectors import NUMBER_NOT_HELD, holding_run, number_registered

logger = logging.getLogger(__name__)

# Fictional loopback numbers that answer as a busy line, no answer, and a failed call.
LOOPBACK_DEFAULT_CALLER_ID = "+15550150"

# Status-callback words that name a Call.Status differently.
CALLBACK_STATUS_ALIASES = {"initiated": Call.Status.QUEUED.value}
# Twilio's words for each way a call can fail before it is answered.
UNANSWERED = {
    "busy": "The target's line was busy",
    "no-answer": "Nobody answered the call",
    "failed": "The call could not be connected",
    "canceled": "The call was canceled before it was answered",
}
# ConversationRelay error codes that mean the caller's voice cannot be spoken.
VOICE_ERROR_CODES = {"64106", "64101", "64108"}
# Our websocket could not be reached from the provider.
UNREACHABLE_RELAY_CODES = {"64102", "39001"}


def provider_name_for(target: dict) -> str:
    """Loopback targets (the demo, rehearsals) live in the loopback telephony; others are called over
    the provider of the number we call from or reserve."""
    return Provider.LOOPBACK if target["kind"] in Target.LOOPBACK_KINDS else Provider.TWILIO


@dataclass
class Dial:
    call_id: str
    provider: str
    to: str
    from_: str


def call_prepare_outbound(*, run_id, snapshot: dict) -> Dial | None:
    """Write the run's call before dialling; None when it already exists (a redelivered start must
    never dial twice). Raises ``RunFailure`` when the run cannot be called from anywhere."""
    target, agent = snapshot["target"], snapshot["agent"]
    provider = provider_name_for(target)
    run = Run.objects.only("workspace_id").get(pk=run_id)
    numbers = PhoneNumber.objects.filter(workspace_id=run.workspace_id, direction=PhoneNumber.Direction.OUTBOUND,
                                         provider=provider)
    chosen = [n for n in agent.get("outbound_numbers") or [] if numbers.filter(number=n).exists()]
    if chosen:
        from_number = chosen[0]
    elif numbers.exists():
        from_number = numbers.order_by("number").values_list("number", flat=True).first()
    elif provider == Provider.LOOPBACK:
        from_number = LOOPBACK_DEFAULT_CALLER_ID
    else:
        raise PlatformError(
            "The agent has no outbound Twilio number to call from: add one under Phone numbers and pick it on the "
            "agent.")
    try:
        with transaction.atomic():
            call = Call.objects.create(workspace_id=run.workspace_id, run_id=run_id, provider=provider,
                                       direction=Call.Direction.OUTBOUND, from_number=from_number,
                                       to_number=target["phone_number"])
    except IntegrityError:
        return None
    return Dial(call_id=str(call.pk), provider=provider, to=call.to_number, from_=from_number)


def call_placed(*, call_id, sid: str) -> bool:
    """Record the provider's sid. False when the run ended while we dialled: hang up then."""
    Call.objects.filter(pk=call_id, sid__isnull=True).update(sid=sid)
    Call.objects.filter(pk=call_id, status=Call.Status.PLACING).update(status=Call.Status.QUEUED)
    return Run.objects.filter(call__pk=call_id, status=Run.Status.RUNNING).exists()


def call_placement_failed(*, call_id, error: TelephonyError) -> RunFailure:
    Call.objects.filter(pk=call_id).update(status=Call.Status.FAILED, error_code=str(error.code or ""),
                                           error_detail=str(error)[:2000], ended_at=timezone.now())
    if error.code == 21211 or (error.code and 21200 <= error.code < 21700):
        return TargetUnreachableFailure(f"The telephony provider refused the call: {error}. Check the target's "
                                        "phone number.")
    return PlatformError(f"The call could not be placed: {error}")


def attach_deadline(*, direction: str, window_seconds: int, ring_seconds: int):
    if direction == "inbound":
        return timezone.now() + timedelta(seconds=window_seconds)
    # Past ring + grace with no final status callback, the sweep ends the run (CALL_ANSWER_GRACE_SECONDS).
    return timezone.now() + timedelta(seconds=ring_seconds + settings.CALL_ANSWER_GRACE_SECONDS)


# Inbound ---------------------------------------------------------------------------------------

def number_reserve(*, run_id, provider: str) -> PhoneNumber:
    """Reserve a free inbound number of the run's workspace for this run, atomically.

    Steps: try each free number with a conditional update (the loser of a race moves on to the
    next); on loopback, where numbers are fictional and free, make a new one when none is left;
    on Twilio, say how to get more.
    """
    run = Run.objects.only("workspace_id").get(pk=run_id)
    free = PhoneNumber.objects.filter(workspace_id=run.workspace_id, direction=PhoneNumber.Direction.INBOUND,
                                      provider=provider, reserved_by__isnull=True).order_by("number")
    now = timezone.now()
    for number_id in free.values_list("pk", flat=True)[:50]:
        if PhoneNumber.objects.filter(pk=number_id, reserved_by__isnull=True).update(reserved_by=run_id, reserved_until=None):
            return PhoneNumber.objects.get(pk=number_id)
    if provider == Provider.LOOPBACK:
        for _ in range(20):
            candidate = f"+1555017{random.randrange(10**6):06d}"
            try:
                with transaction.atomic():
                    return PhoneNumber.objects.create(
                        workspace_id=run.workspace_id, number=candidate, direction=PhoneNumber.Direction.INBOUND,
                        provider=Provider.LOOPBACK, label="made for an inbound run", reserved_by_id=run_id,
                        created_at=now)
            except IntegrityError:
                continue
    count = PhoneNumber.objects.filter(workspace_id=run.workspace_id, direction=PhoneNumber.Direction.INBOUND,
                                       provider=provider).count()
    raise PlatformError(
        f"No free inbound {provider} number: all {count} are reserved by armed runs. Add an inbound number under "
        "Phone numbers, or lower the scenario's parallel runs." if count else
        f"The workspace has no inbound {provider} number to arm: add one under Phone numbers.")


def call_arm_inbound(*, run_id, snapshot: dict) -> tuple[Call, str] | None:
    """Reserve a number and write the armed call; None when already armed (a redelivered start)."""
    existing = Call.objects.filter(run_id=run_id).first()
    if existing is not None:
        return None
    provider = provider_name_for(snapshot["target"])
    number = number_reserve(run_id=run_id, provider=provider)
    run = Run.objects.only("workspace_id").get(pk=run_id)
    try:
        with transaction.atomic():
            call = Call.objects.create(workspace_id=run.workspace_id, run_id=run_id, provider=provider,
                                       direction=Call.Direction.INBOUND, status=Call.Status.ARMED,
                                       from_number=snapshot["target"].get("phone_number") or "",
                                       to_number=number.number)
    except IntegrityError:
        return None
    return call, provider


def call_answered(*, run_id) -> str:
    """How far the run's call got before its conversation should have begun: "answered" (an
    outbound call picked up), "taken" (an inbound call arrived on the number), or ""."""
    call = Call.objects.filter(run_id=run_id).only("direction", "answered_at", "sid").first()
    if call is None:
        return ""
    if call.direction == Call.Direction.INBOUND:
        return "taken" if call.sid else ""
    return "answered" if call.answered_at else ""


def numbers_release(*, run_id) -> None:
    PhoneNumber.objects.filter(reserved_by=run_id).update(reserved_by=None, reserved_until=None)


def inbound_match(*, provider: str, to_number: str, sid: str, from_number: str) -> Run | None:
    """The armed run waiting on the dialled number; it takes this call, and only this call."""
    number = PhoneNumber.objects.filter(provider=provider, number=to_number, reserved_by__isnull=False).first()
    if number is None:
        return None
    run_id = number.reserved_by_id
    if not Run.objects.filter(pk=run_id, status=Run.Status.RUNNING, stage=Run.Stage.LIVE, worker="").exists():
        return None
    taken = Call.objects.filter(run_id=run_id, sid__isnull=True, status=Call.Status.ARMED).update(
        sid=sid, from_number=from_number[:16], status=Call.Status.RINGING)
    return Run.objects.get(pk=run_id) if taken else None


# Callbacks -------------------------------------------------------------------------------------

def call_status_update(*, run_id, sid: str, status: str, sequence: int | None, sip: str = "") -> None:
    """A status callback: recorded once, applied only if newer than what we have; an unanswered
    end fails a run still waiting for its call as ``target_unreachable``. Without a run id (a
    number's own status callback, configured at the provider) the call is found by its sid."""
    # Twilio reports its ``initiated`` event as CallStatus=initiated, a word its call resource (and
    # our Call.Status) does not have: the call is still queued at its end. Dropped as unknown, it
    # left that sequence number missing from the call's history.
    status = CALLBACK_STATUS_ALIASES.get(status, status)
    if status not in Call.Status.values:
        return
    if run_id is None:
        run_id = Call.objects.filter(sid=sid).values_list("run_id", flat=True).first() if sid else None
        if run_id is None:
            return
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(run_id=run_id).first()
        if call is None or (call.sid and sid and call.sid != sid):
            return  # a call we do not know (or not this run's): answered 200 and forgotten
        seq = sequence if sequence is not None else call.last_sequence + 1
        entry = {"status": status, "sequence": seq, "at": timezone.now().isoformat(), "sip": sip}
        if any(e["status"] == status and e["sequence"] == seq for e in call.history):
            return  # a duplicate
        call.history = sorted([*call.history, entry], key=lambda e: e["sequence"])
        fields = ["history"]
        if not call.sid and sid:
            call.sid, fields = sid, [*fields, "sid"]
        if seq > call.last_sequence and not call.is_over:
            call.status, call.last_sequence = status, seq
            fields += ["status", "last_sequence"]
        if status == "in-progress" and call.answered_at is None:
            call.answered_at, fields = timezone.now(), [*fields, "answered_at"]
        if status in FINAL_CALL_STATUSES and call.ended_at is None:
            call.ended_at, fields = timezone.now(), [*fields, "ended_at"]
        call.save(update_fields=fields)
        _publish_call_changed(run_id)
    if status in UNANSWERED:
        words = f"{UNANSWERED[status]}{f' (SIP {sip})' if sip else ''}."
        _fail_waiting(run_id, TargetUnreachableFailure(f"{words} Check the target's phone number and that it is "
                                                       "accepting calls."))
    elif status == "completed":
        _fail_waiting(run_id, PlatformError(
            "The call ended before its conversation connected to AssureAgent. Check that PUBLIC_BASE_URL reaches this "
            "server's websocket (wss://…/ws/telephony/…/relay/). Safe to retry."))


def _publish_call_changed(run_id) -> None:
    """The run page shows its call: re-render it once the change is committed."""
    transaction.on_commit(lambda: dispatch.publish_run_changed(str(run_id)))


def _fail_waiting(run_id, failure: RunFailure) -> None:
    """Fail the run only while it still waits for its call: once the conversation has attached,
    it ends by itself when the call does."""
    if Run.objects.filter(pk=run_id, status=Run.Status.RUNNING, worker="").exists():
        run_services.run_fail(run_id=run_id, reason=failure.reason, detail=failure.detail)


def relay_session_ended(*, run_id, status: str, error_code: str, handoff: str = "") -> None:
    """The ``<Connect action>`` callback: how the ConversationRelay session ended."""
    if error_code:
        Call.objects.filter(run_id=run_id).update(error_code=error_code[:10])
    # The session's end is the call's end (the action answers with a hang-up); an inbound call's
    # status callbacks may not be configured, so this is where it is known to be over.
    Call.objects.filter(run_id=run_id, ended_at__isnull=True).update(ended_at=timezone.now())
    Call.objects.filter(run_id=run_id, status__in=[Call.Status.IN_PROGRESS, Call.Status.RINGING]).update(
        status=Call.Status.COMPLETED)
    _publish_call_changed(run_id)
    if status != "failed":
        return
    failure = relay_failure(error_code, "")
    run_services.run_fail(run_id=run_id, reason=failure.reason, detail=failure.detail)


def relay_failure(code: str, description: str) -> RunFailure:
    code = code or next((c for c in (*VOICE_ERROR_CODES, *UNREACHABLE_RELAY_CODES) if c in description), "")
    said = f" ({description})" if description else ""
    if code in VOICE_ERROR_CODES:
        return CallerVoiceUnavailable(f"The telephony provider could not speak with the agent's voice (error {code})"
                                      f"{said}. Pick a different voice on the agent.")
    if code in UNREACHABLE_RELAY_CODES:
        return PlatformError(f"The telephony provider could not reach AssureAgent's websocket (error {code}). Check "
                             "PUBLIC_BASE_URL. Safe to retry.")
    return PlatformError(f"The call's voice session failed (error {code or 'unknown'}){said}. Safe to retry.")


def recording_received(*, run_id, recording_sid: str, url: str, duration: str) -> str | None:
    """Remember the recording; returns the call id whose audio should be downloaded, once."""
    updated = Call.objects.filter(run_id=run_id, recording_sid="").update(
        recording_sid=recording_sid[:64], recording_duration_seconds=int(duration) if duration.isdigit() else None)
    if not updated:
        return None
    return str(Call.objects.filter(run_id=run_id).values_list("pk", flat=True).first())


def recording_download(*, call_id, url: str) -> None:
    """Fetch the audio from the provider into our storage ("audio finalized"). Network I/O first,
    then one guarded write."""
    call = Call.objects.filter(pk=call_id).first()
    if call is None or call.recording:
        return
    audio = provider_for(call.provider).download_recording(url)
    name = f"{call.run_id}.wav"
    call.recording.save(name, ContentFile(audio), save=False)
    if Call.objects.filter(pk=call_id, recording="").update(recording=call.recording.name):
        _publish_call_changed(call.run_id)  # "being processed" becomes the audio player


def call_hang_up(*, run_id) -> None:
    """The run ended: hang up its call if it is still up, release its number. Idempotent."""
    numbers_release(run_id=run_id)
    call = Call.objects.filter(run_id=run_id).first()
    if call is None or call.is_over:
        return
    if not call.sid:
        Call.objects.filter(pk=call.pk, sid__isnull=True).update(status=Call.Status.CANCELED, ended_at=timezone.now(),
                                                                 hung_up_by=Call.HungUpBy.PLATFORM)
        _publish_call_changed(run_id)
        return
    Call.objects.filter(pk=call.pk, hung_up_by="").update(hung_up_by=Call.HungUpBy.PLATFORM)
    answered = call.status == Call.Status.IN_PROGRESS or Run.objects.filter(pk=run_id, attached_at__isnull=False).exists()
    try:
        provider_for(call.provider).hang_up(call.sid, answered=answered)
    except TelephonyError as exc:
        logger.warning("could not hang up call %s of run %s: %s", call.sid, run_id, exc)


# Phone numbers (the Phone numbers page and the API) ---------------------------------------------

# What a person may change on a number; the reservation belongs to the inbound runs that take and
# release it, and is never written from a form.
NUMBER_EDITABLE_FIELDS = ("number", "direction", "provider", "provider_sid", "label")
# What an armed run relies on: the call it waits for arrives on this number, at this provider.
NUMBER_IDENTITY_FIELDS = ("number", "provider", "direction")
NUMBER_TAKEN_MESSAGE = "This number is already registered."


class NumberTaken(Exception):
    """The (provider, number) is registered already, in this workspace or another (not said which)."""

    def __init__(self):
        super().__init__(NUMBER_TAKEN_MESSAGE)


class NumberHeld(Exception):
    """An armed run reserves the number: it cannot be deleted, nor its identity changed, until it ends."""

    def __init__(self, *, run: Run | None, doing: str):
        self.run = run
        super().__init__(
            f"An armed run ({run.pk if run else 'unknown'}) has reserved this number and waits for a call on it, "
            f"so it cannot be {doing} now. Cancel that run or wait for it to end, then try again.")


def phone_number_save(*, phone_number: PhoneNumber) -> PhoneNumber:
    """Create or update a (validated) number.

    Steps: a new number is inserted; a clash with any workspace's number of the same provider
    raises ``NumberTaken``, also when it loses a race to the unique constraint. An existing number
    is written with one conditional update of its editable fields only (never the reservation an
    inbound run may have taken meanwhile); when its number, provider or direction change, the
    update holds only while no armed run reserves it, else ``NumberHeld``.
    """
    if phone_number._state.adding:
        if number_registered(provider=phone_number.provider, number=phone_number.number):
            raise NumberTaken()
        try:
            with transaction.atomic():
                phone_number.save(force_insert=True)
        except IntegrityError:
            raise NumberTaken() from None
        return phone_number
    values = {name: getattr(phone_number, name) for name in NUMBER_EDITABLE_FIELDS}
    stored = PhoneNumber.objects.filter(pk=phone_number.pk).values(*NUMBER_IDENTITY_FIELDS).first()
    if stored is None:
        raise PhoneNumber.DoesNotExist("The number was deleted meanwhile.")
    identity_changed = any(stored[name] != values[name] for name in NUMBER_IDENTITY_FIELDS)
    if identity_changed and number_registered(provider=values["provider"], number=values["number"],
                                              exclude_pk=phone_number.pk):
        raise NumberTaken()
    rows = PhoneNumber.objects.filter(pk=phone_number.pk)
    if identity_changed:
        rows = rows.filter(NUMBER_NOT_HELD)
    try:
        with transaction.atomic():
            updated = rows.update(**values)
    except IntegrityError:
        raise NumberTaken() from None
    if not updated:
        raise NumberHeld(run=holding_run(PhoneNumber.objects.get(pk=phone_number.pk)), doing="changed")
    return phone_number


def phone_number_delete(*, phone_number: PhoneNumber) -> None:
    """Delete a number unless an armed run reserves it (``NumberHeld``); one conditional delete."""
    deleted, _ = PhoneNumber.objects.filter(pk=phone_number.pk).filter(NUMBER_NOT_HELD).delete()
    if not deleted:
        current = PhoneNumber.objects.filter(pk=phone_number.pk).first()
        if current is not None:
            raise NumberHeld(run=holding_run(current), doing="deleted")
