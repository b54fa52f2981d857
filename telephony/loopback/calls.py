"""One simulated call: what was asked for, where it stands, and its witness timeline.

The timeline is the emulator's testimony of the call, for tests and benchmarks: a list of
``{"t_ms": <ms since the call was created, monotonic>, "event": <name>, …details}``. Event names:

- ``status:<status>`` each status change; ``hangup:requested`` (with ``reason``);
- ``twiml:relay`` / ``twiml:plain`` / ``twiml:invalid`` / ``twiml:unavailable`` what the call was told to do;
- ``ws:open``, ``ws:failed``, ``ws:closed`` (with ``by``) the ConversationRelay websocket;
- ``out:<type>`` a frame the emulator sent to the product, ``in:<type>`` a frame it received
  (``in:invalid`` for one it refused);
- ``caller_said`` (our caller's speech as played: ``text``, ``cut_off``), ``caller_pressed``,
  ``target_heard`` (what the far end was given), ``target_said`` (``text``, ``reported``),
  ``target_pressed``, ``target_hangup``, ``interrupt``;
- ``callback:<kind>`` a webhook sent (``http_status``, None when the product never answered).

``reply_gaps_ms`` holds, for each time the target finished speaking (the final ``prompt`` was sent),
the time until the product's next ``text`` token: the product's turn time as the far end lives it.
Texts in the timeline are cut at ``MAX_TEXT_CHARS`` and the timeline stops growing at
``MAX_TIMELINE_EVENTS`` (``timeline_truncated`` says so).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from telephony.loopback.far_ends import FarEnd

API_VERSION = "2010-04-01"
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
OUTCOMES = ("answer", "busy", "no-answer", "failed")
CALLBACK_EVENT_OF_STATUS = {
    "queued": "initiated",
    "ringing": "ringing",
    "in-progress": "answered",
    **{status: "completed" for status in TERMINAL_STATUSES},
}


@dataclass
class Destination:
    """Who is at the other end of a number, as the resolver decides.

    ``outcome``: ``answer`` (``far_end`` builds the party that answers), ``busy``, ``no-answer`` or
    ``failed`` (``sip_response_code`` overrides the SIP code reported, 404 by default).
    """

    outcome: str
    far_end: Callable[[], FarEnd] | None = None
    sip_response_code: int | None = None

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"Destination outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.outcome == "answer" and self.far_end is None:
            raise ValueError("An answering destination needs a far_end factory")


@dataclass(frozen=True)
class CallOptions:
    """The call-creation parameters the emulator honours (Twilio's names in comments)."""

    twiml: str | None = None  # Twiml
    url: str | None = None  # Url
    method: str = "POST"  # Method
    status_callback: str | None = None  # StatusCallback
    status_callback_events: frozenset[str] = frozenset({"completed"})  # StatusCallbackEvent
    status_callback_method: str = "POST"  # StatusCallbackMethod
    timeout_seconds: int = 60  # Timeout: how long it may ring
    time_limit_seconds: int = 4 * 3600  # TimeLimit: real seconds from answer
    record: bool = False  # Record
    recording_status_callback: str | None = None  # RecordingStatusCallback
    recording_status_callback_method: str = "POST"  # RecordingStatusCallbackMethod
    recording_status_callback_events: frozenset[str] = frozenset({"completed"})  # RecordingStatusCallbackEvent


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822(moment: datetime | None) -> str | None:
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000") if moment else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SimulatedCall:
    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str  # outbound-api | inbound
    options: CallOptions

    MAX_TIMELINE_EVENTS = 20_000
    MAX_TEXT_CHARS = 500
    MAX_SPEECH_ENTRIES = 1_000
    MAX_REPLY_GAPS = 10_000

    status: str = "queued"
    sip_response_code: int | None = None
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    recording_sid: str | None = None
    session: dict | None = None  # the ConversationRelay session's id and outcome
    timeline: list[dict] = field(default_factory=list)
    timeline_truncated: bool = False
    reply_gaps_ms: list[int] = field(default_factory=list)
    # (seconds since answer, "caller" | "target", text): who said what when, for the recording
    speech: list[tuple[float, str, str]] = field(default_factory=list)
    hangup_reason: str | None = None
    callback_sequence: int = 0

    def __post_init__(self):
        self._created_monotonic = time.monotonic()
        self._answered_monotonic: float | None = None
        self._ended_monotonic: float | None = None
        self.hangup = asyncio.Event()  # set by a REST hang-up/cancel or the time limit
        self.finished = asyncio.Event()  # set once the status is terminal

    # -- state --------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def set_status(self, status: str, *, sip_response_code: int | None = None) -> None:
        self.status = status
        self.updated_at = utc_now()
        if status == "in-progress":
            self.answered_at = self.updated_at
            self._answered_monotonic = time.monotonic()
        if status in TERMINAL_STATUSES:
            self.ended_at = self.updated_at
            self._ended_monotonic = time.monotonic()
            self.sip_response_code = sip_response_code
            self.finished.set()
        self.record(f"status:{status}")

    def request_hangup(self, reason: str) -> None:
        if self.hangup.is_set() or self.is_terminal:
            return
        self.hangup_reason = reason
        self.hangup.set()
        self.record("hangup:requested", reason=reason)

    async def sleep_unless_hung_up(self, seconds: float) -> bool:
        """Sleep; True if a hang-up was requested before the time was up."""
        try:
            await asyncio.wait_for(self.hangup.wait(), timeout=max(seconds, 0))
        except asyncio.TimeoutError:
            return self.hangup.is_set()
        return True

    def seconds_since_answer(self) -> float:
        if self._answered_monotonic is None:
            return 0.0
        return (self._ended_monotonic or time.monotonic()) - self._answered_monotonic

    def duration_seconds(self) -> int:
        """Whole seconds from answer to end (0 if never answered), as CallDuration reports it."""
        return round(self.seconds_since_answer())

    # -- witness ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int((time.monotonic() - self._created_monotonic) * 1000)

    def record(self, event: str, **details) -> None:
        if len(self.timeline) >= self.MAX_TIMELINE_EVENTS:
            self.timeline_truncated = True
            return
        for key, value in details.items():
            if isinstance(value, str) and len(value) > self.MAX_TEXT_CHARS:
                details[key] = value[: self.MAX_TEXT_CHARS] + "…"
        self.timeline.append({"t_ms": self.now_ms(), "event": event, **details})

    def add_speech(self, speaker: str, text: str, *, offset_seconds: float) -> None:
        """Note an utterance for the recording (``offset_seconds`` since answer)."""
        if len(self.speech) < self.MAX_SPEECH_ENTRIES:
            self.speech.append((offset_seconds, speaker, text))

    def add_reply_gap(self, milliseconds: int) -> None:
        if len(self.reply_gaps_ms) < self.MAX_REPLY_GAPS:
            self.reply_gaps_ms.append(milliseconds)

    def witness(self) -> dict:
        return {
            "sid": self.sid,
            "direction": self.direction,
            "from": self.from_,
            "to": self.to,
            "status": self.status,
            "sip_response_code": self.sip_response_code,
            "date_created": rfc2822(self.created_at),
            "answered_ms": self._ms_since_created(self._answered_monotonic),
            "ended_ms": self._ms_since_created(self._ended_monotonic),
            "duration": self.duration_seconds() if self.is_terminal else None,
            "hangup_reason": self.hangup_reason,
            "session": self.session,
            "recording_sid": self.recording_sid,
            "reply_gaps_ms": list(self.reply_gaps_ms),
            "timeline": list(self.timeline),
            "timeline_truncated": self.timeline_truncated,
        }

    def _ms_since_created(self, moment: float | None) -> int | None:
        return None if moment is None else int((moment - self._created_monotonic) * 1000)

    # -- Twilio's call resource ---------------------------------------------------------------

    def resource(self) -> dict:
        """The call as Twilio's REST API renders it (the keys twilio-python's CallInstance reads)."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "date_created": rfc2822(self.created_at),
            "date_updated": rfc2822(self.updated_at),
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": None,
            "status": self.status,
            "start_time": rfc2822(self.answered_at),
            "end_time": rfc2822(self.ended_at) if self.answered_at else None,
            "duration": str(self.duration_seconds()) if self.is_terminal and self.answered_at else None,
            "price": None,
            "price_unit": "USD",
            "direction": self.direction,
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "stir_verstat": None,
            "trunk_sid": None,
            "uri": f"{uri}.json",
            "subresource_uris": {
                "notifications": f"{uri}/Notifications.json",
                "recordings": f"{uri}/Recordings.json",
                "events": f"{uri}/Events.json",
                "streams": f"{uri}/Streams.json",
                "payments": f"{uri}/Payments.json",
                "siprec": f"{uri}/Siprec.json",
                "transcriptions": f"{uri}/Transcriptions.json",
                "user_defined_messages": f"{uri}/UserDefinedMessages.json",
                "user_defined_message_subscriptions": f"{uri}/UserDefinedMessageSubscriptions.json",
            },
        }

