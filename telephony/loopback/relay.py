"""One ConversationRelay session, emulated: the websocket to the product and the far end on the line.

Twilio's ConversationRelay turns a phone call into text over a websocket: it speaks the product's
``text`` tokens with text-to-speech (our simulated caller's voice, Twilio's "agent") and sends what
the far party says as ``prompt`` frames (Twilio's "caller" or "client": here the target under test).
``RelaySession`` plays Twilio's part of that websocket and a ``FarEnd`` plays the far party, on a
clock that imitates speech. Every duration below is multiplied by the emulator's ``speech_scale``.

Our caller's side (frames from the product):
- ``text`` tokens accumulate until ``last: true``; the utterance then starts playing
  ``FIRST_AUDIO_SECONDS`` later and takes ``WORD_SECONDS`` a word (at least
  ``MIN_UTTERANCE_SECONDS``). Utterances and ``sendDigits`` play one after another, in order.
  Once played, the far end hears the words (perfect speech recognition). With speaker events on,
  ``info agentSpeaking on/off`` brackets the playback and ``info tokensPlayed`` follows it when
  ``tokens-played`` is asked for.
- ``sendDigits``: each key takes ``KEY_SECONDS``, ``w`` pauses ``SHORT_PAUSE_SECONDS`` and ``W``
  ``LONG_PAUSE_SECONDS``; the far end then receives the keys of the message at once.
- ``end`` ends the session (``completed``, with ``handoffData``); ``play`` is logged and ignored;
  ``language`` changes the languages; anything else is refused with an ``error`` frame (64107), and
  ten refusals in a row close the websocket with code 1007 (the session fails with 64105).
- The voice is checked when the first ``text`` arrives (or at once when there is a
  ``welcomeGreeting``): a voice the provider does not offer (``twiml.voice_problem``) gets an
  ``error`` frame and fails the session with 64106.
- ``preemptible: true`` on an utterance lets the product's next utterance cut it short (no
  ``interrupt`` frame: the product asked for it).

The far end's side (actions from the ``FarEnd``):
- ``Say``: ``info clientSpeaking on/off`` brackets the speech; with ``partialPrompts`` a cumulative
  ``prompt`` (``last: false``) follows every ``PARTIAL_EVERY_WORDS`` words; the final ``prompt``
  (``last: true``) comes ``ENDPOINTING_SECONDS`` after the speech ends. The far end's next action
  waits for that final prompt, so its frames never overtake each other.
- ``Press``: a ``dtmf`` frame per key, each after ``KEY_SECONDS``, when ``dtmfDetection`` is on.
- When the far end starts speaking (or pressing a key, with DTMF detection on) while our caller's
  utterance plays and that utterance is interruptible for it (``interruptible`` of the TwiML, or of
  the ``text`` frames), the playback stops and the product gets ``interrupt`` with the words played
  so far and the milliseconds of playback. Otherwise both talk at once, and what the far end says or
  presses is reported only if ``reportInputDuringAgentSpeech`` allows it (default ``none``, which
  is reported to be Twilio's current default): that Say's prompts are then never sent, though its
  speaker events are.
- The far end never stops talking because our caller talks over it.

The session ends when the product sends ``end`` or closes the websocket (``completed``), when the
far end hangs up, the call is hung up through the REST API or reaches its time limit (``ended``),
or on a failure (``failed`` with 64102 websocket unreachable, 64105, 64106).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Coroutine

import aiohttp

from telephony.loopback.calls import SimulatedCall, new_sid
from telephony.loopback.far_ends import Action, FarEnd, Hangup, Press, Say, Wait
from telephony.loopback.twiml import RelaySettings, interrupt_mode, voice_problem

log = logging.getLogger(__name__)

MIN_SILENCE_SECONDS = 1.5

WORD_SECONDS = 0.33
MIN_UTTERANCE_SECONDS = 0.4
FIRST_AUDIO_SECONDS = 0.15
ENDPOINTING_SECONDS = 0.35
PARTIAL_EVERY_WORDS = 2
KEY_SECONDS = 0.1
SHORT_PAUSE_SECONDS = 0.5
LONG_PAUSE_SECONDS = 1.0

CONNECT_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0
FAR_END_CLOSE_TIMEOUT_SECONDS = 5.0
MAX_FRAME_BYTES = 64 * 1024
MAX_UTTERANCE_CHARS = 8 * 1024
MAX_QUEUED_OUTPUT = 64
MAX_INVALID_IN_A_ROW = 10

ERROR_WEBSOCKET_UNREACHABLE = 64102
ERROR_TOO_MANY_INVALID = 64105
ERROR_INVALID_VOICE = 64106
INVALID_MESSAGE_DESCRIPTION = "Invalid message received (64107)"

SEND_DIGITS_RE = re.compile(r"^[0-9*#wW]{1,64}$")
PAUSES = {"w": SHORT_PAUSE_SECONDS, "W": LONG_PAUSE_SECONDS}


@dataclass
class SessionOutcome:
    status: str  # completed | ended | failed: Twilio's SessionStatus
    error_code: int | None = None
    handoff_data: str | None = None
    reason: str = ""


@dataclass
class _Utterance:
    text: str
    interruptible: str  # none | dtmf | speech | any
    preemptible: bool = False


@dataclass
class _Digits:
    digits: str


@dataclass
class _Playback:
    """Our caller's utterance while it is being played."""

    utterance: _Utterance
    words: list[str]
    started_at: float  # monotonic
    started_ms: int  # call clock
    offset_seconds: float  # since answer, for the recording
    played: int = 0
    stop_reason: str | None = None  # interrupted | preempted
    heard_delivered: bool = False  # the far end already got (part of) it through a barge-in
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def played_text(self) -> str:
        return " ".join(self.words[: self.played])

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped.set()

    async def stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopped.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return self.stopped.is_set()
        return True


def _allows(mode: str, kind: str) -> bool:
    return mode == "any" or mode == kind


class RelaySession:
    """Runs one session from the websocket handshake to its end; ``run()`` returns how it ended."""

    def __init__(
        self,
        *,
        call: SimulatedCall,
        settings: RelaySettings,
        far_end: FarEnd,
        http: aiohttp.ClientSession,
        sign: Callable[[str, dict[str, str]], str],
        speech_scale: float,
    ):
        self.call = call
        self.settings = settings
        self.far_end = far_end
        self.session_id = new_sid("VX")
        self._http = http
        self._sign = sign
        self._scale = speech_scale

        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._close_code = aiohttp.WSCloseCode.OK
        self._opened_at: float | None = None
        self._outcome: SessionOutcome | None = None
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

        self._tts_language = settings.language
        self._transcription_language = settings.transcription_language
        self._voice_checked = False
        self._invalid_in_a_row = 0

        # our caller: tokens of the utterance being written, then a queue of things to play
        self._tokens: list[str] = []
        self._token_chars = 0
        self._token_interruptible: str | None = None
        self._token_preemptible = False
        self._caller_output: asyncio.Queue[_Utterance | _Digits] = asyncio.Queue()
        self._caller_active = False
        self._playback: _Playback | None = None

        # the far end: what happened on the line, handled one at a time
        self._far_end_events: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        self._far_end_busy = False

        # silence: nothing happening on the line since the last activity
        self._activity = asyncio.Event()
        self._last_activity = time.monotonic()
        self._activity_epoch = 0
        self._silence_reported_epoch = -1

        self._final_prompt_at: float | None = None  # for reply_gaps_ms

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> SessionOutcome:
        self.call.session = {"id": self.session_id, "status": "connecting"}
        try:
            await self._connect()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
            log.warning("Call %s: ConversationRelay could not reach %s: %r", self.call.sid, self.settings.url, error)
            self.call.record("ws:failed", url=self.settings.url, error=repr(error))
            await self._close_far_end()
            return self._conclude(SessionOutcome("failed", ERROR_WEBSOCKET_UNREACHABLE, reason="websocket unreachable"))

        hangup_wait = asyncio.create_task(self.call.hangup.wait())
        done_wait = asyncio.create_task(self._done.wait())
        try:
            await self._send(self._setup_frame())
            self._spawn(self._read_product())
            self._spawn(self._play_for_caller())
            self._spawn(self._act_for_far_end())
            self._spawn(self._watch_silence())
            if self.settings.welcome_greeting:
                if problem := voice_problem(self.settings.tts_provider, self.settings.voice):
                    await self._fail_voice(problem)
                else:
                    self._voice_checked = True
                    self._queue_for_caller(_Utterance(
                        self.settings.welcome_greeting, self.settings.welcome_greeting_interruptible))
            self._far_end_events.put_nowait(("answer", None))
            await asyncio.wait({hangup_wait, done_wait}, return_when=asyncio.FIRST_COMPLETED)
            if self._outcome is None:
                self._finish(SessionOutcome("ended", reason=self.call.hangup_reason or "hung up"))
        finally:
            hangup_wait.cancel()
            done_wait.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close_websocket()
            await self._close_far_end()
        return self._conclude(self._outcome)

    async def _connect(self) -> None:
        url = self.settings.url
        # Twilio signs the handshake over the URL exactly as written in the TwiML, with no
        # parameters, and sends no Origin header.
        headers = {"X-Twilio-Signature": self._sign(url, {}), "User-Agent": "Twilio.TmeWs/1.0 (loopback)"}
        self._ws = await asyncio.wait_for(
            self._http.ws_connect(
                url,
                headers=headers,
                max_msg_size=MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_SECONDS),
            ),
            timeout=CONNECT_TIMEOUT_SECONDS,
        )
        self._opened_at = time.monotonic()
        self.call.record("ws:open", url=url, session_id=self.session_id)

    def _setup_frame(self) -> dict:
        call = self.call
        return {
            "type": "setup",
            "sessionId": self.session_id,
            "callSid": call.sid,
            "parentCallSid": "",
            "from": call.from_,
            "to": call.to,
            "forwardedFrom": "",
            "callerName": "",
            "direction": "inbound" if call.direction == "inbound" else "outbound",
            "callType": "PSTN",
            "callStatus": "IN-PROGRESS",
            "accountSid": call.account_sid,
            "customParameters": dict(self.settings.custom_parameters),
        }

    def _spawn(self, coroutine: Coroutine) -> None:
        self._tasks.append(asyncio.create_task(self._guarded(coroutine)))

    async def _guarded(self, coroutine: Coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Call %s: the emulated ConversationRelay session broke", self.call.sid)
            self._finish(SessionOutcome("failed", reason="emulator error"))

    def _finish(self, outcome: SessionOutcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._done.set()

    def _conclude(self, outcome: SessionOutcome) -> SessionOutcome:
        self.call.session = {
            "id": self.session_id,
            "status": outcome.status,
            "error_code": outcome.error_code,
            "handoff_data": outcome.handoff_data,
            "reason": outcome.reason,
            "duration": self.duration_seconds(),
        }
        return outcome

    def duration_seconds(self) -> int:
        return 0 if self._opened_at is None else round(time.monotonic() - self._opened_at)

    async def _close_websocket(self) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        self.call.record("ws:closed", by="emulator", code=int(self._close_code))
        try:
            await asyncio.wait_for(ws.close(code=self._close_code), timeout=CLOSE_TIMEOUT_SECONDS)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as error:
            log.debug("Call %s: closing the websocket: %r", self.call.sid, error)

    async def _close_far_end(self) -> None:
        try:
            await asyncio.wait_for(self.far_end.close(), timeout=FAR_END_CLOSE_TIMEOUT_SECONDS)
        except Exception:
            log.exception("Call %s: the far end failed to close", self.call.sid)

    # -- frames -------------------------------------------------------------------------------

    async def _send(self, frame: dict) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        async with self._send_lock:
            try:
                await ws.send_str(json.dumps(frame))
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as error:
                log.debug("Call %s: sending %s failed: %r", self.call.sid, frame["type"], error)
                return
            self.call.record(f"out:{frame['type']}", **_summary(frame))

    async def _read_product(self) -> None:
        ws = self._ws
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await self._on_frame(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await self._refuse("<binary frame>")
            elif message.type == aiohttp.WSMsgType.ERROR:  # e.g. a frame over MAX_FRAME_BYTES
                log.warning("Call %s: websocket error: %r", self.call.sid, message.data)
                self._finish(SessionOutcome("failed", reason=f"websocket error: {message.data!r}"))
                break
        if self._outcome is None:
            self.call.record("ws:closed", by="product", code=ws.close_code)
        self._finish(SessionOutcome("completed", reason="the product closed the websocket"))

    async def _on_frame(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = None
        handlers = {
            "text": self._on_text,
            "sendDigits": self._on_send_digits,
            "play": self._on_play,
            "language": self._on_language,
            "end": self._on_end,
        }
        kind = frame.get("type") if isinstance(frame, dict) else None
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None or not await handler(frame):
            await self._refuse(raw)
            return
        self._invalid_in_a_row = 0

    async def _refuse(self, raw: str) -> None:
        self._invalid_in_a_row += 1
        self.call.record("in:invalid", text=raw[:200])
        await self._send({"type": "error", "description": INVALID_MESSAGE_DESCRIPTION})
        if self._invalid_in_a_row >= MAX_INVALID_IN_A_ROW:
            self._close_code = aiohttp.WSCloseCode.INVALID_TEXT
            self._finish(SessionOutcome("failed", ERROR_TOO_MANY_INVALID, reason="too many invalid messages"))

    async def _on_text(self, frame: dict) -> bool:
        token, last = frame.get("token"), frame.get("last", False)
        if not isinstance(token, str) or not isinstance(last, bool):
            return False
        if self._token_chars + len(token) > MAX_UTTERANCE_CHARS:
            log.warning("Call %s: utterance longer than %d characters refused", self.call.sid, MAX_UTTERANCE_CHARS)
            return False
        self.call.record("in:text", token=token, last=last)
        if self._final_prompt_at is not None:
            self.call.add_reply_gap(int((time.monotonic() - self._final_prompt_at) * 1000))
            self._final_prompt_at = None
        if not self._voice_checked:
            self._voice_checked = True
            if problem := voice_problem(self.settings.tts_provider, self.settings.voice):
                await self._fail_voice(problem)
                return True
        if self._outcome is not None:
            return True

        if not self._tokens and self._playback is not None and self._playback.utterance.preemptible:
            self._playback.stop("preempted")
        self._tokens.append(token)
        self._token_chars += len(token)
        if "interruptible" in frame:
            self._token_interruptible = interrupt_mode(frame["interruptible"], default=self.settings.interruptible)
        if "preemptible" in frame:
            self._token_preemptible = frame["preemptible"] is True
        self._touch()
        if last:
            text = "".join(self._tokens).strip()
            interruptible = self._token_interruptible or self.settings.interruptible
            preemptible = self._token_preemptible
            self._tokens, self._token_chars = [], 0
            self._token_interruptible, self._token_preemptible = None, False
            return self._queue_for_caller(_Utterance(text, interruptible, preemptible))
        return True

    async def _on_send_digits(self, frame: dict) -> bool:
        digits = frame.get("digits")
        if not isinstance(digits, str) or not SEND_DIGITS_RE.match(digits):
            return False
        self.call.record("in:sendDigits", digits=digits)
        return self._queue_for_caller(_Digits(digits))

    async def _on_play(self, frame: dict) -> bool:
        source = frame.get("source")
        if not isinstance(source, str):
            return False
        log.info("Call %s: the product asked to play %s; the emulator does not play audio", self.call.sid, source)
        self.call.record("in:play", source=source)
        return True

    async def _on_language(self, frame: dict) -> bool:
        tts, transcription = frame.get("ttsLanguage"), frame.get("transcriptionLanguage")
        if not all(value is None or isinstance(value, str) for value in (tts, transcription)):
            return False
        self._tts_language = tts or self._tts_language
        self._transcription_language = transcription or self._transcription_language
        self.call.record("in:language", tts=self._tts_language, transcription=self._transcription_language)
        return True

    async def _on_end(self, frame: dict) -> bool:
        handoff = frame.get("handoffData")
        if handoff is not None and not isinstance(handoff, str):
            handoff = json.dumps(handoff)
        self.call.record("in:end", handoff_data=handoff)
        self._finish(SessionOutcome("completed", handoff_data=handoff, reason="the product ended the session"))
        return True

    async def _fail_voice(self, problem: str) -> None:
        log.info("Call %s: %s", self.call.sid, problem)
        await self._send({"type": "error", "description": problem})
        self._finish(SessionOutcome("failed", ERROR_INVALID_VOICE, reason=problem))

    # -- our caller's voice -------------------------------------------------------------------

    def _queue_for_caller(self, item: _Utterance | _Digits) -> bool:
        if self._caller_output.qsize() >= MAX_QUEUED_OUTPUT:
            log.warning("Call %s: more than %d utterances waiting to be played", self.call.sid, MAX_QUEUED_OUTPUT)
            return False
        self._caller_output.put_nowait(item)
        self._touch()
        return True

    async def _play_for_caller(self) -> None:
        while True:
            item = await self._caller_output.get()
            self._caller_active = True
            try:
                if isinstance(item, _Digits):
                    await self._press_for_caller(item.digits)
                else:
                    await self._play_utterance(item)
            finally:
                self._caller_active = False
                self._touch()

    async def _play_utterance(self, utterance: _Utterance) -> None:
        words = utterance.text.split()
        if not words:
            return
        await self._sleep(FIRST_AUDIO_SECONDS)
        playback = _Playback(utterance, words, time.monotonic(), self.call.now_ms(), self.call.seconds_since_answer())
        self._playback = playback
        try:
            await self._speaker_event("agentSpeaking", "on")
            seconds_per_word = self._scaled(max(WORD_SECONDS * len(words), MIN_UTTERANCE_SECONDS)) / len(words)
            barge_in_after = self.far_end.barge_in_after_words
            for _ in words:
                if await playback.stopped_within(seconds_per_word):
                    break
                playback.played += 1
                if barge_in_after is not None and playback.played == barge_in_after < len(words):
                    # The far end starts its reply now, while our caller is still talking.
                    playback.heard_delivered = True
                    self._hand_to_far_end("speech", playback.played_text)
            self._playback = None
            if playback.stop_reason == "interrupted":
                self.call.record("interrupt", text=playback.played_text)
                await self._send({
                    "type": "interrupt",
                    "utteranceUntilInterrupt": playback.played_text,
                    "durationUntilInterruptMs": int((time.monotonic() - playback.started_at) * 1000),
                })
            await self._speaker_event("agentSpeaking", "off")
            if self.settings.tokens_played and playback.played:
                await self._send({"type": "info", "name": "tokensPlayed", "value": playback.played_text})
        finally:
            self._playback = None
            playback.ended.set()
        self.call.record("caller_said", text=playback.played_text, cut_off=playback.stop_reason is not None,
                         started_ms=playback.started_ms)
        if playback.played:
            self.call.add_speech("caller", playback.played_text, offset_seconds=playback.offset_seconds)
            if not playback.heard_delivered:
                self._hand_to_far_end("speech", playback.played_text)

    async def _press_for_caller(self, digits: str) -> None:
        for key in digits:
            await self._sleep(PAUSES.get(key, KEY_SECONDS))
        keys = "".join(key for key in digits if key not in PAUSES)
        self.call.record("caller_pressed", digits=keys)
        if keys:
            self._hand_to_far_end("digits", keys)

    async def _interrupt_caller(self, playback: _Playback) -> None:
        """Stop our caller's utterance; returns once the product has been told."""
        playback.stop("interrupted")
        await playback.ended.wait()

    # -- the far end --------------------------------------------------------------------------

    def _hand_to_far_end(self, kind: str, text: str) -> None:
        self.call.record("target_heard", kind=kind, text=text)
        self._far_end_events.put_nowait((kind, text))
        self._touch()

    async def _act_for_far_end(self) -> None:
        while True:
            kind, text = await self._far_end_events.get()
            self._far_end_busy = True
            actions: list[Action] = []
            try:
                actions = await self._ask_far_end(kind, text)
                for action in actions:
                    if isinstance(action, Hangup):
                        self.call.record("target_hangup")
                        self._finish(SessionOutcome("ended", reason="the far end hung up"))
                        return
                    await self._perform(action)
            finally:
                self._far_end_busy = False
                # A silence that got no answer is still the same silence: on_silence is not
                # called again until something happens.
                if kind != "silence" or actions:
                    self._touch()

    async def _ask_far_end(self, kind: str, text: str | None) -> list[Action]:
        hooks = {
            "answer": self.far_end.on_answer,
            "speech": lambda: self.far_end.on_speech(text),
            "digits": lambda: self.far_end.on_digits(text),
            "silence": self.far_end.on_silence,
        }
        try:
            actions = await hooks[kind]()
        except Exception:
            log.exception("Call %s: the far end failed on %s", self.call.sid, kind)
            return []
        valid = [action for action in actions or [] if isinstance(action, (Say, Press, Wait, Hangup))]
        if len(valid) != len(actions or []):
            log.warning("Call %s: the far end returned something other than actions: %r", self.call.sid, actions)
        return valid

    async def _perform(self, action: Action) -> None:
        if isinstance(action, Say):
            await self._far_end_says(action.text)
        elif isinstance(action, Press):
            await self._far_end_presses(action.digits)
        elif isinstance(action, Wait):
            await self._sleep(max(action.seconds, 0.0))

    async def _far_end_says(self, text: str) -> None:
        words = text.split()
        if not words:
            return
        reported, overlapped = True, False
        playback = self._playback
        if playback is not None:
            if _allows(playback.utterance.interruptible, "speech"):
                await self._interrupt_caller(playback)
            else:
                overlapped = True
                reported = _allows(self.settings.report_input_during_agent_speech, "speech")
        started_ms, offset = self.call.now_ms(), self.call.seconds_since_answer()
        await self._speaker_event("clientSpeaking", "on")
        seconds_per_word = self._scaled(max(WORD_SECONDS * len(words), MIN_UTTERANCE_SECONDS)) / len(words)
        for spoken in range(1, len(words) + 1):
            await asyncio.sleep(seconds_per_word)
            if reported and self.settings.partial_prompts and spoken % PARTIAL_EVERY_WORDS == 0:
                await self._prompt(" ".join(words[:spoken]), last=False)
        await self._speaker_event("clientSpeaking", "off")
        self.call.record("target_said", text=text, reported=reported, overlapped=overlapped, started_ms=started_ms)
        self.call.add_speech("target", text, offset_seconds=offset)
        await self._sleep(ENDPOINTING_SECONDS)
        if reported:
            await self._prompt(" ".join(words), last=True)
            self._final_prompt_at = time.monotonic()

    async def _far_end_presses(self, digits: str) -> None:
        for key in digits:
            if key in PAUSES:
                await self._sleep(PAUSES[key])
                continue
            reported = self.settings.dtmf_detection
            playback = self._playback
            if reported and playback is not None:
                if _allows(playback.utterance.interruptible, "dtmf"):
                    await self._interrupt_caller(playback)
                else:
                    reported = _allows(self.settings.report_input_during_agent_speech, "dtmf")
            await self._sleep(KEY_SECONDS)
            self.call.record("target_pressed", digit=key, reported=reported)
            if reported:
                await self._send({"type": "dtmf", "digit": key})

    async def _prompt(self, text: str, *, last: bool) -> None:
        await self._send({"type": "prompt", "voicePrompt": text, "lang": self._transcription_language, "last": last})

    async def _speaker_event(self, name: str, value: str) -> None:
        if self.settings.speaker_events:
            await self._send({"type": "info", "name": name, "value": value})

    # -- silence ------------------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = time.monotonic()
        self._activity_epoch += 1
        self._activity.set()

    def _line_busy(self) -> bool:
        return bool(
            self._caller_active or self._playback is not None or not self._caller_output.empty() or self._tokens
            or self._far_end_busy or not self._far_end_events.empty()
        )

    async def _watch_silence(self) -> None:
        # Silence is not sped up below a second and a half: at a small speech scale, a few
        # milliseconds of scheduling delay on our side would otherwise count as a silent caller.
        silence = max(self._scaled(self.far_end.silence_seconds), MIN_SILENCE_SECONDS)
        while True:
            self._activity.clear()
            remaining = self._last_activity + silence - time.monotonic()
            if self._line_busy() or self._silence_reported_epoch == self._activity_epoch:
                await self._activity.wait()
            elif remaining > 0:
                try:
                    await asyncio.wait_for(self._activity.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    pass
            else:
                self._silence_reported_epoch = self._activity_epoch
                self.call.record("silence")
                self._far_end_events.put_nowait(("silence", None))

    # -- time ---------------------------------------------------------------------------------

    def _scaled(self, seconds: float) -> float:
        return seconds * self._scale

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(self._scaled(seconds))


def _summary(frame: dict) -> dict:
    """The parts of a frame worth keeping in the timeline."""
    kind = frame["type"]
    if kind == "prompt":
        return {"text": frame["voicePrompt"], "last": frame["last"]}
    if kind == "dtmf":
        return {"digit": frame["digit"]}
    if kind == "interrupt":
        return {"text": frame["utteranceUntilInterrupt"], "duration_ms": frame["durationUntilInterruptMs"]}
    if kind == "info":
        return {"name": frame["name"], "value": frame["value"]}
    if kind == "error":
        return {"description": frame["description"]}
    if kind == "setup":
        return {"custom_parameters": frame["customParameters"]}
    return {}
