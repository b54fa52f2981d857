"""``LoopbackTwilio``: a local process that behaves like Twilio for the calls the product places.

It serves the subset of Twilio's REST API that twilio-python uses to place and hang up calls,
sends the signed webhooks Twilio would send, opens the ConversationRelay websocket to the product
(``relay.py``) and plays the far end of each call (``far_ends.py``). Nothing in it needs the
database: who answers a number is decided by the ``resolve`` callable it is given.

Reaching it with the real SDK
-----------------------------
twilio-python builds every Calls/Recordings URL from the ``api`` domain's ``base_url``, read at
request time, so this is enough::

    client = Client(account_sid, auth_token)
    client.api.base_url = "http://127.0.0.1:<port>"   # what start_in_thread() returned

Leave ``TWILIO_EDGE`` / ``TWILIO_REGION`` (and the ``edge``/``region`` arguments) unset: with
either, the SDK rewrites the URL's host into ``api.<edge>.<region>.twilio.com`` form, which breaks
a local address. Other domains (``client.lookups`` …) are not emulated.

The REST subset (form-encoded requests, JSON answers, HTTP Basic auth ``account_sid:auth_token``)
-------------------------------------------------------------------------------------------------
- ``POST /2010-04-01/Accounts/{sid}/Calls.json``: ``To``, ``From``, ``Twiml`` or ``Url`` (+
  ``Method``), ``StatusCallback``, ``StatusCallbackEvent`` (repeated or space-separated),
  ``StatusCallbackMethod``, ``Timeout``, ``TimeLimit``, ``Record``, ``RecordingStatusCallback``
  (+ ``Method`` / ``Event``). Other parameters are accepted and ignored. Answers 201 with the call.
- ``GET`` / ``POST .../Calls/{CallSid}.json``: fetch; ``Status=completed`` hangs up (a queued or
  ringing call is then canceled), ``Status=canceled`` stops a queued or ringing call and is ignored
  on a live one, as Twilio does. The answer waits up to ``UPDATE_SETTLE_SECONDS`` for the call to end
  so it shows the final status.
- ``GET .../Recordings/{RecordingSid}`` or ``….wav``: the WAV (``recording.py``).
Errors have Twilio's shape ``{"code", "message", "more_info", "status"}``, so the SDK raises
``TwilioRestException`` with that ``code``: 401/20003 bad credentials (also for another account's
path), 404/20404 unknown call or recording, 400/21201 / 21213 missing ``To`` / ``From``, 400/21211
``To`` not E.164, 400/21212 ``From`` not E.164 (Twilio's code for a bad caller ID), 400/21205 no
``Twiml``/``Url`` or a URL that is not absolute http(s), 400/32018 ``Twiml`` over 4000 characters (Twilio's code for that limit), 400/21200 a method
other than GET/POST, 400/20001 other bad values, 503/20429 beyond ``MAX_LIVE_CALLS`` live calls.

Emulator-only endpoints (Basic auth too)
----------------------------------------
- ``POST /loopback/dial-in``: a far end calls one of our numbers. Form: ``To`` (our number),
  ``From`` (the far end's), ``Url`` (our number's voice webhook), optional ``StatusCallback``
  (gets ``completed`` only, like a number's status callback) and ``Delay`` (real seconds before
  dialling, at most ``MAX_DIAL_IN_DELAY_SECONDS``). Answers 202 ``{"sid": "CA…"}``.
- ``GET /loopback/calls`` and ``GET /loopback/calls/{CallSid}``: the witness of each call
  (``calls.py``): statuses, timeline of frames and speech, ``reply_gaps_ms``.

Who answers: ``resolve(far_end_number, our_number)``
----------------------------------------------------
Outbound calls resolve ``(To, From)``; dial-ins resolve ``(From, To)``: the first argument is always
the far end's number. It returns a ``Destination``; it may be a plain function (run in a worker
thread, so it may use the Django ORM) or a coroutine function. It has ``RESOLVE_TIMEOUT_SECONDS``;
if it fails, the call fails (SIP 500). A dial-in whose far end does not ``answer`` fails.

An outbound call
----------------
``queued`` (callback ``initiated``) → ``RINGING_DELAY_SECONDS`` → ``ringing`` → then by outcome:
``answer`` after ``RING_SECONDS`` → ``in-progress`` (``answered``); ``busy`` after
``BUSY_SIGNAL_SECONDS`` → ``busy`` (SIP 486); ``no-answer`` after min(``Timeout``,
``NO_ANSWER_SECONDS``) → ``no-answer`` (487). ``failed`` ends right after ``initiated``, without
ringing, as ``failed`` (the Destination's SIP code, else 404). A cancel while queued or ringing →
``canceled`` (487). These durations are multiplied by ``speech_scale``; ``TimeLimit`` (default four
hours, counted from answer) and ``Delay`` are real seconds.

Once answered, the call follows its TwiML (inline, or fetched from ``Url`` with the voice-webhook
fields). ``<Connect><ConversationRelay>`` runs a ``RelaySession`` with the far end; when it ends the
``<Connect action>`` URL (if any) is requested with ``SessionId, SessionStatus, SessionDuration``
(+ ``HandoffData``, ``ErrorCode``); the TwiML it answers is not followed: the call then completes
(SIP 200). Any other TwiML is played briefly (``<Say>`` as our caller's speech, ``<Pause>``) up to a
``<Hangup>``/``<Reject>`` or its end, and the call completes. TwiML that cannot be fetched or read
ends the call as completed too (Twilio would say "an application error has occurred" first).

Status callbacks carry ``CallSid, AccountSid, From, To, Called, Caller, Direction, CallStatus,
SequenceNumber, Timestamp, CallbackSource, ApiVersion`` (+ ``CallDuration`` and
``SipResponseCode`` on ``completed``), one call's in order (``webhooks.py``). With ``Record=true``,
a ``recordings_dir`` and espeak-ng, an answered call's two-channel recording is written after it
ends and ``RecordingStatusCallback`` gets ``completed`` (``RecordingChannels`` is always 2).

Limits: request bodies of ``MAX_REQUEST_BYTES``, ``MAX_LIVE_CALLS`` live calls, the last
``MAX_FINISHED_CALLS`` finished calls kept for the witness endpoints, websocket frames of 64 KB.
Stopping the emulator cancels live calls without further callbacks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import hmac
import inspect
import logging
import re
import threading
from pathlib import Path
from typing import Awaitable, Callable, Union
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from telephony.loopback import recording
from telephony.loopback.calls import (
    API_VERSION,
    CALLBACK_EVENT_OF_STATUS,
    CallOptions,
    Destination,
    SimulatedCall,
    new_sid,
    rfc2822,
    utc_now,
)
from telephony.loopback.far_ends import FarEnd
from telephony.loopback.relay import RelaySession, SessionOutcome, WORD_SECONDS, MIN_UTTERANCE_SECONDS
from telephony.loopback.twiml import PlainTwiml, RecordingStart, RelaySettings, TwimlError, parse_twiml
from telephony.loopback.webhooks import CallbackQueue, WebhookAnswer, WebhookClient

__all__ = ["Destination", "LoopbackTwilio"]

log = logging.getLogger(__name__)

Resolver = Callable[[str, str], Union[Destination, Awaitable[Destination]]]

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
RECORDING_NAME_RE = re.compile(r"^(RE[0-9a-f]{32})(\.wav)?$")
CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")

RINGING_DELAY_SECONDS = 0.2
RING_SECONDS = 1.0
BUSY_SIGNAL_SECONDS = 0.5
NO_ANSWER_SECONDS = 2.0
MAX_PAUSE_SECONDS = 30.0

MAX_REQUEST_BYTES = 1024 * 1024
MAX_TWIML_PARAM_CHARS = 4000
MAX_LIVE_CALLS = 500
MAX_FINISHED_CALLS = 1000
MAX_TIME_LIMIT_SECONDS = 24 * 3600
MAX_RING_TIMEOUT_SECONDS = 600
MAX_DIAL_IN_DELAY_SECONDS = 3600
RESOLVE_TIMEOUT_SECONDS = 30.0
UPDATE_SETTLE_SECONDS = 2.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0


class _BadRequest(Exception):
    def __init__(self, code: int, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status=status,
    )


class LoopbackTwilio:
    """The emulator. ``resolve(far_end_number, our_number)`` decides who answers (see above);
    ``speech_scale`` multiplies every simulated duration (speech, endpointing, ringing, thinking:
    tests use about 0.02); ``recordings_dir`` (None: no recordings) receives ``<RecordingSid>.wav``;
    ``public_url`` is the base URL others reach it on, for ``RecordingUrl`` (default: the address it
    serves on; when its ``app`` is served by someone else and no ``public_url`` is given, the
    ``RecordingUrl`` is a path without a host).

    Serve it with ``start_in_thread()`` (tests) or ``await serve(host, port)`` (a management
    command), once per instance.
    """

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        resolve: Resolver,
        speech_scale: float = 1.0,
        recordings_dir: Path | None = None,
        public_url: str | None = None,
    ):
        if speech_scale <= 0:
            raise ValueError("speech_scale must be positive")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._resolve = resolve
        self.speech_scale = speech_scale
        self.recordings_dir = Path(recordings_dir) if recordings_dir is not None else None
        self._public_url = public_url.rstrip("/") if public_url else None
        self._served_url: str | None = None

        self._calls: dict[str, SimulatedCall] = {}
        self._callbacks: dict[str, CallbackQueue] = {}
        self._tasks: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None
        self._webhooks: WebhookClient | None = None
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_no_espeak = False

    # -- serving ------------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The aiohttp application (built once; serve it once)."""
        if self._app is None:
            app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._guard])
            account = f"/{API_VERSION}/Accounts/{{account_sid}}"
            app.router.add_post(f"{account}/Calls.json", self._create_call)
            app.router.add_get(f"{account}/Calls/{{call_sid}}.json", self._fetch_call)
            app.router.add_post(f"{account}/Calls/{{call_sid}}.json", self._update_call)
            app.router.add_post(f"{account}/Calls/{{call_sid}}/Recordings.json", self._start_recording)
            app.router.add_get(f"{account}/Recordings/{{recording}}", self._fetch_recording)
            app.router.add_post("/loopback/dial-in", self._dial_in)
            app.router.add_get("/loopback/calls", self._list_witnesses)
            app.router.add_get("/loopback/calls/{call_sid}", self._fetch_witness)
            app.on_startup.append(self._on_startup)
            app.on_shutdown.append(self._on_shutdown)
            app.on_cleanup.append(self._on_cleanup)
            self._app = app
        return self._app

    @property
    def base_url(self) -> str | None:
        """Where the emulator is served (``public_url`` if given)."""
        return self._public_url or self._served_url

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a thread of its own, with its own event loop; returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("The emulator is already running")
        started: concurrent.futures.Future[str] = concurrent.futures.Future()

        def serve_forever() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                started.set_result(loop.run_until_complete(self._start_serving(host, port)))
            except BaseException as error:  # report any failure to the starting thread
                started.set_exception(error)
                loop.close()
                return
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._stop_serving())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=serve_forever, name="loopback-twilio", daemon=True)
        self._thread.start()
        try:
            return started.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise

    def stop(self) -> None:
        """Stop serving from the thread ``start_in_thread`` started; live calls are cut off."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=SHUTDOWN_TIMEOUT_SECONDS + 10)
        self._thread = None

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on the running event loop until cancelled."""
        await self._start_serving(host, port)
        try:
            await asyncio.Event().wait()
        finally:
            await self._stop_serving()

    async def _start_serving(self, host: str, port: int) -> str:
        if self._served_url is not None:
            raise RuntimeError("An emulator serves once; make a new LoopbackTwilio to serve again")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        url_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        self._served_url = f"http://{url_host}:{bound_port}"
        log.info("Loopback telephony serving on %s", self._served_url)
        return self._served_url

    async def _stop_serving(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_startup(self, app: web.Application) -> None:
        # No cap on connections: every live call holds one for its websocket and its webhooks need
        # more. With aiohttp's default cap of 100, the 101st connection waited for a call to end, so
        # at 100 simultaneous calls webhooks went unanswered for 15 s (bench/README.md, Voice).
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                           timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._webhooks = WebhookClient(session=self._http, auth_token=self._auth_token)

    async def _on_shutdown(self, app: web.Application) -> None:
        for queue in self._callbacks.values():
            queue.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = self._webhooks = None

    # -- HTTP: authentication and errors ------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        account = request.match_info.get("account_sid")
        if not self._authenticated(request) or (account is not None and account != self.account_sid):
            response = twilio_error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        try:
            return await handler(request)
        except _BadRequest as error:
            return twilio_error(error.status, error.code, error.message)
        except web.HTTPNotFound:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(username, self.account_sid) & hmac.compare_digest(password, self._auth_token)

    # -- HTTP: Twilio's REST subset -----------------------------------------------------------

    async def _create_call(self, request: web.Request) -> web.Response:
        form = await request.post()
        to, from_ = _e164(form, "To", missing=21201, invalid=21211), _e164(form, "From", missing=21213, invalid=21212)
        twiml, url = form.get("Twiml") or None, form.get("Url") or None
        if twiml is None and url is None:
            raise _BadRequest(21205, "Url parameter is required: give Twiml or Url.")
        if twiml is not None and len(twiml) > MAX_TWIML_PARAM_CHARS:
            raise _BadRequest(32018, f"Twiml size exceeded maximum allowed value of {MAX_TWIML_PARAM_CHARS} characters")
        events = _words(form, "StatusCallbackEvent")
        recording_events = _words(form, "RecordingStatusCallbackEvent")
        options = CallOptions(
            twiml=twiml,
            url=_http_url(form, "Url") if twiml is None else None,
            method=_method(form, "Method"),
            status_callback=_http_url(form, "StatusCallback"),
            status_callback_events=frozenset(events & set(CALLBACK_EVENTS)) or frozenset({"completed"}),
            status_callback_method=_method(form, "StatusCallbackMethod"),
            timeout_seconds=_bounded_int(form, "Timeout", default=60, low=1, high=MAX_RING_TIMEOUT_SECONDS),
            time_limit_seconds=_bounded_int(form, "TimeLimit", default=4 * 3600, low=1, high=MAX_TIME_LIMIT_SECONDS),
            record=form.get("Record", "").lower() == "true",
            recording_status_callback=_http_url(form, "RecordingStatusCallback"),
            recording_status_callback_method=_method(form, "RecordingStatusCallbackMethod"),
            recording_status_callback_events=frozenset(recording_events) or frozenset({"completed"}),
        )
        call = self._admit(SimulatedCall(
            sid=new_sid("CA"), account_sid=self.account_sid, to=to, from_=from_,
            direction="outbound-api", options=options,
        ))
        self._spawn(self._run_outbound(call), call)
        return web.json_response(call.resource(), status=201)

    async def _fetch_call(self, request: web.Request) -> web.Response:
        return web.json_response(self._call_or_404(request).resource())

    async def _update_call(self, request: web.Request) -> web.Response:
        call = self._call_or_404(request)
        form = await request.post()
        status = form.get("Status")
        if status is None:
            raise _BadRequest(20001, "The emulator only updates Status (completed or canceled)")
        if status == "canceled":
            if call.status in ("queued", "ringing"):
                call.request_hangup("canceled via the REST API")
        elif status == "completed":
            call.request_hangup("hung up via the REST API")
        else:
            raise _BadRequest(20001, f"Status must be completed or canceled, not {status!r}")
        if call.hangup.is_set() and not call.is_terminal:
            try:
                await asyncio.wait_for(call.finished.wait(), timeout=UPDATE_SETTLE_SECONDS)
            except asyncio.TimeoutError:
                pass
        return web.json_response(call.resource())

    async def _start_recording(self, request: web.Request) -> web.Response:
        """Start recording a call in progress (Twilio's call recordings resource): how an incoming
        call, which no ``Record`` parameter covers, gets recorded. The recording is made when the
        call ends, like any other, and reported to ``RecordingStatusCallback``."""
        call = self._call_or_404(request)
        form = await request.post()
        if call.is_terminal or call.answered_at is None:
            raise _BadRequest(21220, "The call is not in progress, so it cannot be recorded")
        self._record_from_now(call, RecordingStart(status_callback=_http_url(form, "RecordingStatusCallback"),
                                                   status_callback_method=_method(form, "RecordingStatusCallbackMethod")))
        return web.json_response({
            "sid": new_sid("RE"), "account_sid": call.account_sid, "call_sid": call.sid, "status": "in-progress",
            "channels": 2, "source": "StartCallRecordingAPI", "date_created": rfc2822(utc_now()),
        }, status=201)

    @staticmethod
    def _record_from_now(call: SimulatedCall, recording: RecordingStart) -> None:
        """Record the call (made when it ends, like any other) and report to the callback."""
        call.options = dataclasses.replace(
            call.options, record=True, recording_status_callback=recording.status_callback,
            recording_status_callback_method=recording.status_callback_method,
            recording_status_callback_events=recording.status_callback_events)
        call.record("recording:started")

    async def _fetch_recording(self, request: web.Request) -> web.StreamResponse:
        match = RECORDING_NAME_RE.match(request.match_info["recording"])
        path = self.recordings_dir / f"{match.group(1)}.wav" if match and self.recordings_dir else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "audio/x-wav"})

    def _call_or_404(self, request: web.Request) -> SimulatedCall:
        call = self._calls.get(request.match_info["call_sid"])
        if call is None:
            raise web.HTTPNotFound()
        return call

    # -- HTTP: emulator-only ------------------------------------------------------------------

    async def _dial_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        to, from_ = _e164(form, "To", missing=21201, invalid=21211), _e164(form, "From", missing=21213, invalid=21212)
        voice_url = _http_url(form, "Url")
        if voice_url is None:
            raise _BadRequest(21205, "Url (the voice webhook of the number called) is required")
        try:
            delay = float(form.get("Delay", "0"))
        except ValueError:
            raise _BadRequest(20001, "Delay must be a number of seconds") from None
        if not 0 <= delay <= MAX_DIAL_IN_DELAY_SECONDS:
            raise _BadRequest(20001, f"Delay must be between 0 and {MAX_DIAL_IN_DELAY_SECONDS} seconds")
        options = CallOptions(url=voice_url, status_callback=_http_url(form, "StatusCallback"))
        call = self._admit(SimulatedCall(
            sid=new_sid("CA"), account_sid=self.account_sid, to=to, from_=from_, direction="inbound", options=options,
        ))
        self._spawn(self._run_dial_in(call, delay), call)
        return web.json_response({"sid": call.sid}, status=202)

    async def _list_witnesses(self, request: web.Request) -> web.Response:
        calls = [
            {key: value for key, value in call.witness().items() if key != "timeline"} for call in self._calls.values()
        ]
        return web.json_response({"calls": calls})

    async def _fetch_witness(self, request: web.Request) -> web.Response:
        return web.json_response(self._call_or_404(request).witness())

    # -- calls --------------------------------------------------------------------------------

    def _admit(self, call: SimulatedCall) -> SimulatedCall:
        if sum(not existing.is_terminal for existing in self._calls.values()) >= MAX_LIVE_CALLS:
            raise _BadRequest(20429, f"Too many live calls (at most {MAX_LIVE_CALLS})", status=503)
        finished = [sid for sid, existing in self._calls.items() if existing.is_terminal]
        for sid in finished[: max(0, len(finished) - MAX_FINISHED_CALLS + 1)]:
            del self._calls[sid]
        self._calls[call.sid] = call
        call.record("status:queued")
        return call

    def _spawn(self, coroutine, call: SimulatedCall) -> None:
        task = asyncio.create_task(self._guarded(coroutine, call), name=f"loopback-call-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coroutine, call: SimulatedCall) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Call %s: the emulator failed", call.sid)
            await self._end(call, "failed", 500)

    async def _run_outbound(self, call: SimulatedCall) -> None:
        self._status_callback(call)  # initiated
        destination = await self._destination(call, far_end_number=call.to, our_number=call.from_)
        if await call.sleep_unless_hung_up(self._scaled(RINGING_DELAY_SECONDS)):
            return await self._end(call, "canceled", 487)
        if destination is None:
            return await self._end(call, "failed", 500)
        if destination.outcome == "failed":
            return await self._end(call, "failed", destination.sip_response_code or 404)
        self._set_status(call, "ringing")
        if destination.outcome == "busy":
            if await call.sleep_unless_hung_up(self._scaled(BUSY_SIGNAL_SECONDS)):
                return await self._end(call, "canceled", 487)
            return await self._end(call, "busy", destination.sip_response_code or 486)
        if destination.outcome == "no-answer":
            if await call.sleep_unless_hung_up(self._scaled(min(call.options.timeout_seconds, NO_ANSWER_SECONDS))):
                return await self._end(call, "canceled", 487)
            return await self._end(call, "no-answer", destination.sip_response_code or 487)
        if await call.sleep_unless_hung_up(self._scaled(RING_SECONDS)):
            return await self._end(call, "canceled", 487)

        self._set_status(call, "in-progress")
        time_limit = asyncio.get_running_loop().call_later(
            call.options.time_limit_seconds, call.request_hangup, "time limit reached")
        try:
            if call.options.twiml is not None:
                twiml, document_url = call.options.twiml, None
            else:
                document_url = call.options.url
                twiml = await self._fetch_twiml(call, document_url, call.options.method)
            await self._follow(call, twiml, document_url, destination.far_end)
        finally:
            time_limit.cancel()
        await self._end(call, "completed", 200)

    async def _run_dial_in(self, call: SimulatedCall, delay: float) -> None:
        if await call.sleep_unless_hung_up(delay):
            return await self._end(call, "canceled", 487)
        destination = await self._destination(call, far_end_number=call.from_, our_number=call.to)
        if destination is None or destination.outcome != "answer":
            log.warning("Dial-in %s: the far end %s cannot dial (%s)", call.sid, call.from_,
                        destination.outcome if destination else "no destination")
            return await self._end(call, "failed", 500)
        self._set_status(call, "ringing")
        twiml = await self._fetch_twiml(call, call.options.url, "POST")
        self._set_status(call, "in-progress")
        time_limit = asyncio.get_running_loop().call_later(
            call.options.time_limit_seconds, call.request_hangup, "time limit reached")
        try:
            await self._follow(call, twiml, call.options.url, destination.far_end)
        finally:
            time_limit.cancel()
        await self._end(call, "completed", 200)

    async def _destination(self, call: SimulatedCall, *, far_end_number: str, our_number: str) -> Destination | None:
        try:
            if inspect.iscoroutinefunction(self._resolve):
                pending = self._resolve(far_end_number, our_number)
            else:
                pending = asyncio.to_thread(self._resolve, far_end_number, our_number)
            destination = await asyncio.wait_for(pending, timeout=RESOLVE_TIMEOUT_SECONDS)
            if inspect.isawaitable(destination):
                destination = await asyncio.wait_for(destination, timeout=RESOLVE_TIMEOUT_SECONDS)
        except Exception:
            log.exception("Call %s: resolving %s failed", call.sid, far_end_number)
            return None
        if not isinstance(destination, Destination):
            log.error("Call %s: resolve(%s, %s) returned %r, not a Destination", call.sid, far_end_number,
                      our_number, destination)
            return None
        call.record("resolved", outcome=destination.outcome)
        return destination

    async def _fetch_twiml(self, call: SimulatedCall, url: str, method: str) -> str | None:
        params = self._call_fields(call)
        answer = await self._webhooks.request(url, params, method=method)
        call.record("callback:voice", url=url, http_status=answer.status if answer else None)
        return answer.text if answer is not None and answer.ok else None

    async def _follow(self, call: SimulatedCall, twiml: str | None, document_url: str | None,
                      far_end_factory: Callable[[], FarEnd]) -> None:
        """Do what the TwiML says, until the call is over."""
        if twiml is None:
            call.record("twiml:unavailable")
            log.warning("Call %s: no TwiML could be fetched; ending the call", call.sid)
            return
        try:
            instructions = parse_twiml(twiml, document_url=document_url)
        except TwimlError as error:
            call.record("twiml:invalid", error=str(error))
            log.warning("Call %s: %s; ending the call", call.sid, error)
            return
        if isinstance(instructions, PlainTwiml):
            call.record("twiml:plain", verbs=[verb for verb, _, _ in instructions.verbs])
            if call.direction == "inbound":
                log.info("Dial-in %s rejected by the product (no ConversationRelay in its TwiML)", call.sid)
            await self._play_plain(call, instructions)
            return
        call.record("twiml:relay", url=instructions.url)
        if instructions.recording is not None:
            self._record_from_now(call, instructions.recording)
        try:
            far_end = far_end_factory()
        except Exception:
            log.exception("Call %s: the far end could not be built", call.sid)
            return
        session = RelaySession(call=call, settings=instructions, far_end=far_end, http=self._http,
                               sign=self._webhooks.signature, speech_scale=self.speech_scale)
        outcome = await session.run()
        if instructions.action_url:
            await self._post_action(call, instructions, session, outcome)

    async def _play_plain(self, call: SimulatedCall, twiml: PlainTwiml) -> None:
        for verb, attributes, text in twiml.verbs:
            if verb == "Say" and text:
                call.add_speech("caller", text, offset_seconds=call.seconds_since_answer())
                call.record("caller_said", text=text, cut_off=False, started_ms=call.now_ms())
                seconds = max(WORD_SECONDS * len(text.split()), MIN_UTTERANCE_SECONDS)
                if await call.sleep_unless_hung_up(self._scaled(seconds)):
                    return
            elif verb == "Pause":
                length = _float_or(attributes.get("length"), 1.0)
                if await call.sleep_unless_hung_up(self._scaled(min(max(length, 0.0), MAX_PAUSE_SECONDS))):
                    return
            elif verb in ("Hangup", "Reject"):
                return
            else:
                call.record("twiml:ignored", verb=verb)

    async def _post_action(self, call: SimulatedCall, settings: RelaySettings, session: RelaySession,
                           outcome: SessionOutcome) -> None:
        params = {
            **self._call_fields(call),
            "SessionId": session.session_id,
            "SessionStatus": outcome.status,
            "SessionDuration": str(session.duration_seconds()),
        }
        if outcome.handoff_data is not None:
            params["HandoffData"] = outcome.handoff_data
        if outcome.error_code is not None:
            params["ErrorCode"] = str(outcome.error_code)
        answer = await self._webhooks.request(settings.action_url, params, method=settings.action_method)
        call.record("callback:action", url=settings.action_url, session_status=outcome.status,
                    http_status=answer.status if answer else None)

    async def _end(self, call: SimulatedCall, status: str, sip_response_code: int) -> None:
        if call.is_terminal:
            return
        self._set_status(call, status, sip_response_code=sip_response_code)
        if call.options.record and call.answered_at is not None:
            await self._record(call)
        queue = self._callbacks.pop(call.sid, None)
        if queue is not None:
            await queue.close()

    # -- callbacks ----------------------------------------------------------------------------

    def _set_status(self, call: SimulatedCall, status: str, *, sip_response_code: int | None = None) -> None:
        call.set_status(status, sip_response_code=sip_response_code)
        self._status_callback(call)

    def _status_callback(self, call: SimulatedCall) -> None:
        event = CALLBACK_EVENT_OF_STATUS[call.status]
        options = call.options
        if not options.status_callback or event not in options.status_callback_events:
            return
        params = {
            **self._call_fields(call),
            "SequenceNumber": str(call.callback_sequence),
            "Timestamp": rfc2822(utc_now()),
            "CallbackSource": "call-progress-events",
        }
        call.callback_sequence += 1
        if event == "completed":
            params["CallDuration"] = str(call.duration_seconds())
            params["SipResponseCode"] = str(call.sip_response_code)
        self._callback_queue(call).send(f"status:{event}", options.status_callback, params,
                                        method=options.status_callback_method)

    def _callback_queue(self, call: SimulatedCall) -> CallbackQueue:
        queue = self._callbacks.get(call.sid)
        if queue is None:
            def on_sent(kind: str, url: str, answer: WebhookAnswer | None) -> None:
                call.record(f"callback:{kind}", url=url, http_status=answer.status if answer else None)

            queue = self._callbacks[call.sid] = CallbackQueue(self._webhooks, on_sent=on_sent)
        return queue

    def _call_fields(self, call: SimulatedCall) -> dict[str, str]:
        return {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "From": call.from_,
            "To": call.to,
            "Caller": call.from_,
            "Called": call.to,
            "Direction": call.direction,
            "CallStatus": call.status,
            "ApiVersion": API_VERSION,
        }

    # -- recordings ---------------------------------------------------------------------------

    async def _record(self, call: SimulatedCall) -> None:
        if self.recordings_dir is None:
            return
        if not recording.espeak_available():
            if not self._warned_no_espeak:
                self._warned_no_espeak = True
                log.warning("espeak-ng is not installed: loopback calls are not recorded")
            return
        recording_sid = new_sid("RE")
        path = self.recordings_dir / f"{recording_sid}.wav"
        try:
            self.recordings_dir.mkdir(parents=True, exist_ok=True)
            duration = await recording.build_recording(
                call.speech, path, speech_scale=self.speech_scale, min_seconds=call.seconds_since_answer())
        except (recording.RecordingError, OSError):
            log.exception("Call %s: the recording could not be made", call.sid)
            return
        call.recording_sid = recording_sid
        call.record("recording", recording_sid=recording_sid, duration=round(duration, 2))
        options = call.options
        if not options.recording_status_callback or "completed" not in options.recording_status_callback_events:
            return
        base = self.base_url or ""
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "RecordingSid": recording_sid,
            "RecordingUrl": f"{base}/{API_VERSION}/Accounts/{call.account_sid}/Recordings/{recording_sid}",
            "RecordingStatus": "completed",
            "RecordingDuration": str(round(duration)),
            "RecordingChannels": "2",
            "RecordingSource": "OutboundAPI",
            "RecordingStartTime": rfc2822(call.answered_at),
        }
        self._callback_queue(call).send("recording", options.recording_status_callback, params,
                                        method=options.recording_status_callback_method)

    def _scaled(self, seconds: float) -> float:
        return seconds * self.speech_scale


# -- form helpers -----------------------------------------------------------------------------

def _e164(form, name: str, *, missing: int, invalid: int) -> str:
    value = form.get(name, "")
    if not value:
        raise _BadRequest(missing, f"A '{name}' phone number is required.")
    if not E164_RE.match(value):
        if name == "To":
            raise _BadRequest(invalid, f"The 'To' number {value} is not a valid phone number.")
        raise _BadRequest(
            invalid, f"The 'From' number {value} is not a valid phone number, shortcode, or alphanumeric sender ID.")
    return value


def _words(form, name: str) -> set[str]:
    """A repeated parameter whose values may also be space-separated lists."""
    return {word for value in form.getall(name, []) for word in value.split()}


def _http_url(form, name: str) -> str | None:
    value = form.get(name) or None
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _BadRequest(21205, f"{name} is not a valid URL: {value}")
    return value


def _method(form, name: str) -> str:
    value = (form.get(name) or "POST").upper()
    if value not in ("GET", "POST"):
        raise _BadRequest(21200, f"{name} must be GET or POST")
    return value


def _bounded_int(form, name: str, *, default: int, low: int, high: int) -> int:
    value = form.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _BadRequest(20001, f"{name} must be an integer") from None
    return min(max(number, low), high)


def _float_or(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
