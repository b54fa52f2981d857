"""The far end of a loopback call: the party our simulated caller talks to.

On a real call the far end is the customer's voice agent (the target). In loopback telephony a
``FarEnd`` object plays it. The emulator tells it what happened on the line through four hooks and
it answers each with a list of actions, which the emulator performs in order with speech timing:

- ``Say(text)``: speak (takes time per word; the product receives it as ``prompt`` frames),
- ``Press(digits)``: press keys (``dtmf`` frames; ``w`` is a half-second pause),
- ``Wait(seconds)``: think before the next action (multiplied by the emulator's speech scale),
- ``Hangup()``: end the call.

Hooks run one at a time, in the order things happened; while a far end speaks, what our caller says
is queued for it. ``on_speech`` receives what the far end heard: the whole utterance once it has
been played, or, when the far end barges in (``barge_in_after_words``), the words played up to that
point; the rest of a cut-off utterance is not delivered. ``on_silence`` is called once per silence
of ``silence_seconds`` (scaled) in which neither side did anything.

Three far ends ship with the product:
- ``DemoReceptionist``: the built-in demo target (``runs.demo_target``) on the phone.
- ``ChatRehearsal``: a chat target answering by voice, for rehearsing a voice scenario against a
  chat bot; its thinking time is the bot's real response time.
- ``ScriptedFarEnd``: a deterministic far end for tests.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

from runs.demo_target import VOICE_GREETING, demo_reply

log = logging.getLogger(__name__)

DIGITS_RE = re.compile(r"^[0-9*#wW]+$")


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Press:
    digits: str

    def __post_init__(self):
        if not DIGITS_RE.match(self.digits):
            raise ValueError(f"Press takes 0-9, *, # and w/W pauses, not {self.digits!r}")


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Hangup:
    pass


Action = Union[Say, Press, Wait, Hangup]


class FarEnd:
    """The far end's behaviour. Subclasses override the hooks they care about; each returns the
    actions to perform (an empty list: stay silent)."""

    # When our caller's utterance runs longer than this many words, the far end starts its reply
    # after that many words have been played (None: it always lets the caller finish).
    barge_in_after_words: int | None = None
    # Unscaled seconds of silence on the line before on_silence is called.
    silence_seconds: float = 4.0

    async def on_answer(self) -> list[Action]:
        """The call is connected. Return [] to let the caller speak first."""
        return []

    async def on_speech(self, text: str) -> list[Action]:
        """Our caller said ``text`` (finished, or cut off by the far end's barge-in)."""
        return []

    async def on_digits(self, digits: str) -> list[Action]:
        """Our caller pressed ``digits`` (one ``sendDigits`` message, pauses removed)."""
        return []

    async def on_silence(self) -> list[Action]:
        return []

    async def close(self) -> None:
        """The call is over; release what the far end holds."""
        return None


class DemoReceptionist(FarEnd):
    """The built-in demo receptionist on the phone: it lets the caller speak first, greets with the
    IVR menu, then answers each utterance or key press after a short think."""

    barge_in_after_words = 30  # a very long-winded caller gets cut off
    THINK_SECONDS = 0.4

    def __init__(self) -> None:
        self.greeted = False

    async def on_speech(self, text: str) -> list[Action]:
        return self._answer(text)

    async def on_digits(self, digits: str) -> list[Action]:
        return self._answer(digits)

    async def on_silence(self) -> list[Action]:
        return [] if self.greeted else self._greet()

    def _greet(self) -> list[Action]:
        self.greeted = True
        return [Say(VOICE_GREETING)]

    def _answer(self, text: str) -> list[Action]:
        if not self.greeted:
            return [Wait(self.THINK_SECONDS), *self._greet()]
        reply = demo_reply(text)
        actions: list[Action] = [Wait(self.THINK_SECONDS), Say(reply["reply"])]
        if reply.get("end"):
            actions.append(Hangup())
        return actions


class ChatConnection(Protocol):
    """What ``ChatRehearsal`` needs from a chat target connection (``runs.connectors``)."""

    async def open(self) -> Any: ...

    async def send(self, text: str) -> Any: ...

    async def press(self, digits: str) -> Any: ...

    async def close(self) -> None: ...


class ChatRehearsal(FarEnd):
    """A chat target answering on the phone: each utterance is sent as a chat message and the
    reply is spoken. ``connection_factory()`` returns a fresh connection (a ``TargetConnection``)
    whose replies have ``.text`` and ``.ended``."""

    APOLOGY = "Sorry, something went wrong."

    def __init__(self, connection_factory: Callable[[], ChatConnection]):
        self._connection_factory = connection_factory
        self._connection: ChatConnection | None = None

    async def on_answer(self) -> list[Action]:
        try:
            self._connection = self._connection_factory()
            greeting = await self._connection.open()
        except Exception:
            log.exception("The chat target could not be opened")
            return [Say(self.APOLOGY)]
        return self._speak(greeting)

    async def on_speech(self, text: str) -> list[Action]:
        return await self._exchange("send", text)

    async def on_digits(self, digits: str) -> list[Action]:
        return await self._exchange("press", digits)

    async def close(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception:
                log.exception("Closing the chat target failed")

    async def _exchange(self, method: str, text: str) -> list[Action]:
        if self._connection is None:
            return [Say(self.APOLOGY)]
        try:
            reply = await getattr(self._connection, method)(text)
        except Exception:
            log.exception("The chat target failed to answer")
            return [Say(self.APOLOGY)]
        return self._speak(reply)

    @staticmethod
    def _speak(reply: Any) -> list[Action]:
        if reply is None:
            return []
        actions: list[Action] = [Say(reply.text)] if reply.text else []
        if getattr(reply, "ended", False):
            actions.append(Hangup())
        return actions


class ScriptedFarEnd(FarEnd):
    """A deterministic far end: ``on_answer`` is performed when the call connects, then each
    caller utterance or key press consumes the next entry of ``replies`` (a list of action
    lists); once they are used up the far end stays silent. With ``on_digits``, key presses
    consume that list instead.

    It keeps what it heard in ``heard`` (utterances) and ``heard_digits``.
    """

    def __init__(
        self,
        *,
        on_answer: list[Action] | None = None,
        replies: list[list[Action]] | None = None,
        on_digits: list[list[Action]] | None = None,
        barge_in_after_words: int | None = None,
    ):
        self._answer_actions = list(on_answer or [])
        self._replies = [list(reply) for reply in replies or []]
        self._digit_replies = None if on_digits is None else [list(reply) for reply in on_digits]
        self.barge_in_after_words = barge_in_after_words
        self.heard: list[str] = []
        self.heard_digits: list[str] = []

    async def on_answer(self) -> list[Action]:
        return list(self._answer_actions)

    async def on_speech(self, text: str) -> list[Action]:
        self.heard.append(text)
        return self._replies.pop(0) if self._replies else []

    async def on_digits(self, digits: str) -> list[Action]:
        self.heard_digits.append(digits)
        queue = self._replies if self._digit_replies is None else self._digit_replies
        return queue.pop(0) if queue else []
