"""A call's conversation as the engine sees it: a ``TargetConnection`` over a ConversationRelay
session. The consumer feeds it every frame Twilio sends; the engine's caller sends words (spoken
by Twilio's text-to-speech) and key presses, and gets back what the target said, recognised.

Latency of a target turn is the target's response time as a caller hears it: from the end of our
caller's speech (``agentSpeaking: off``, or an interruption) to the target's first words
(``clientSpeaking: on`` or its first partial prompt). Without speaker events it falls back to when
our last words were sent, which also counts our own speech.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Awaitable, Callable

from runs.connectors import ConnectorError, Reply, TargetConnection
from telephony import services

REPLY_TIMEOUT_SECONDS = 30.0
# A scripted ``expect`` waits this long for the target to say something on its own.
LISTEN_TIMEOUT_SECONDS = 10.0
MAX_EVENTS = 500


class RelayConnection(TargetConnection):
    def __init__(self, *, send_json: Callable[[dict], Awaitable[None]], recorder=None):
        super().__init__(target={}, context=None)
        self.send_json = send_json
        self.recorder = recorder
        self.started = time.monotonic()
        self.utterances: asyncio.Queue = asyncio.Queue()
        self.closed = False          # the session is over (either side)
        self.we_ended = False        # our caller ended it (``end`` sent)
        self.our_speech_ended: float | None = None
        self.target_began: float | None = None
        self._turn: tuple[str, float] | None = None  # (earlier words, when we began) of the turn under way
        self.events: list[dict] = []

    def _ms(self, at: float | None = None) -> int:
        return int(((at or time.monotonic()) - self.started) * 1000)

    def _note(self, kind: str, **fields) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t_ms": self._ms(), "event": kind, **fields})

    # Frames from the provider -----------------------------------------------------------------

    def feed(self, message: dict) -> None:
        kind = message.get("type")
        now = time.monotonic()
        if kind == "prompt":
            if self.target_began is None:
                self.target_began = now
            if message.get("last", True):
                self.utterances.put_nowait(("said", str(message.get("voicePrompt") or ""), self.target_began))
                self.target_began = None
        elif kind == "info":
            name, value = message.get("name"), message.get("value")
            if name == "agentSpeaking" and value == "off":
                self.our_speech_ended = now
            elif name == "clientSpeaking" and value == "on" and self.target_began is None:
                self.target_began = now
            if name in ("agentSpeaking", "clientSpeaking"):
                self._note(name, value=value)
        elif kind == "dtmf":
            digit = str(message.get("digit") or "")[:8]
            self._note("target_pressed", digit=digit)
            self.utterances.put_nowait(("pressed", digit, now))
        elif kind == "interrupt":
            # The target spoke over our caller, who stopped: our speech ended here.
            self.our_speech_ended = now
            heard = str(message.get("utteranceUntilInterrupt") or "")[:2000]
            duration = _int(message.get("durationUntilInterruptMs"))
            self._note("interrupted", utterance_until_interrupt=heard, duration_ms=duration)
            if self.recorder is not None:
                asyncio.ensure_future(self.recorder.tool(
                    name="interrupted", arguments={"utterance_until_interrupt": heard, "duration_ms": duration},
                    result=None, at_ms=self._ms()))
        elif kind == "error":
            description = str(message.get("description") or "")[:500]
            self._note("error", description=description)
            self.utterances.put_nowait(("error", description, now))
        else:
            self._note(str(kind)[:40])

    def feed_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self._note("closed", by="caller" if self.we_ended else "target")
            self.utterances.put_nowait(("closed", "", time.monotonic()))

    # The engine's side ----------------------------------------------------------------------------

    async def open(self) -> Reply | None:
        # Our caller speaks first once the call connects: outbound it placed the call, and inbound
        # it is the one who picked up. Whatever the target says first arrives with the first reply.
        return None

    async def send(self, text: str) -> Reply:
        return await self._act({"type": "text", "token": text, "last": True}, text=text)

    async def press(self, digits: str) -> Reply:
        return await self._act({"type": "sendDigits", "digits": digits}, text=None)

    async def listen(self) -> Reply | None:
        return await self._next_reply(timeout=LISTEN_TIMEOUT_SECONDS, since=self.our_speech_ended or self.started,
                                      required=False)

    async def close(self) -> None:
        if not self.closed:
            self.we_ended = True
            try:
                await self.send_json({"type": "end", "handoffData": json.dumps({"reason": "the caller ended the call"})})
            except Exception:
                pass  # the socket is already gone: the call is over either way
            self.closed = True

    # Streamed speech: the LLM caller's words go out as they are generated, so the provider starts
    # speaking the first ones while the rest are still being written.
    streams_speech = True

    async def speak(self, token: str) -> None:
        """Send the next words of the caller's utterance; ``finish_speaking`` ends it."""
        if self.closed:
            return
        if self._turn is None:
            self._begin_turn()
        await self.send_json({"type": "text", "token": token, "last": False})

    async def finish_speaking(self, text: str) -> Reply:
        """End the streamed utterance ``text`` and wait for the target's reply."""
        if self.closed:
            return Reply("", ended=True)
        if self._turn is None:
            self._begin_turn()
        self._note("caller_said", text=text)
        await self.send_json({"type": "text", "token": "", "last": True})
        return await self._reply_to_turn()

    async def _act(self, frame: dict, *, text: str | None) -> Reply:
        if self.closed:
            return Reply("", ended=True)
        self._begin_turn()
        self._note("caller_said" if text is not None else "caller_pressed", text=text or frame.get("digits"))
        await self.send_json(frame)
        return await self._reply_to_turn()

    def _begin_turn(self) -> None:
        # What the target said unprompted since the last exchange goes with the next reply.
        self._turn = (self._drain(), time.monotonic())
        self.our_speech_ended = None
        self.target_began = None

    async def _reply_to_turn(self) -> Reply:
        earlier, sent = self._turn
        self._turn = None
        reply = await self._next_reply(timeout=REPLY_TIMEOUT_SECONDS, since=sent, required=True)
        if earlier:
            reply.text = " ".join(t for t in (earlier, reply.text) if t)
        return reply

    def _drain(self) -> str:
        said = []
        while not self.utterances.empty():
            kind, text, _ = self.utterances.get_nowait()
            if kind == "closed":
                self.utterances.put_nowait((kind, text, _))
                break
            said.append(_words(kind, text))
        return " ".join(s for s in said if s)

    async def _next_reply(self, *, timeout: float, since: float, required: bool) -> Reply | None:
        try:
            kind, text, began = await asyncio.wait_for(self.utterances.get(), timeout)
        except asyncio.TimeoutError:
            if required:
                raise ConnectorError(f"the target said nothing within {timeout:.0f}s") from None
            return None
        if kind == "closed":
            self.utterances.put_nowait((kind, text, began))  # every later read sees the end too
            return Reply("", ended=True)
        if kind == "error":
            code = next((c for c in text.replace(")", " ").replace("(", " ").split() if c.isdigit()), "")
            raise services.relay_failure(code, text)
        ours_ended = self.our_speech_ended or since
        latency = max(0, int((began - ours_ended) * 1000))
        return Reply(_words(kind, text), latency_ms=latency)


def _words(kind: str, text: str) -> str:
    return f"[pressed {text}]" if kind == "pressed" else text


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None
