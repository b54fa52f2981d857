"""The conversation engine: an asyncio loop between a caller and a target connection, recorded
turn by turn. It does not know where it runs — a Celery worker's event loop for chat, the
ConversationRelay websocket consumer for voice — nor how turns are stored: it is handed a
connection and a recorder.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from assure import patterns
from runs.connectors import ConnectorError, Reply, TargetConnection, TargetUnreachable


class Recorder(Protocol):
    # ``wait=False``: the row may still be on its way to the database when this returns; it is
    # committed before anything the caller records next, and ``settled`` waits for it.
    async def turn(self, *, speaker: str, text: str, started_ms: int, ended_ms: int,
                   latency_ms: int | None = None, is_error: bool = False, wait: bool = True) -> None: ...

    async def tool(self, *, name: str, arguments: dict, result, at_ms: int,
                   duration_ms: int | None = None, status: str = "ok") -> None: ...


@dataclass
class Outcome:
    """How a conversation ended, for finalizing."""

    ended_by: str = "caller"
    duration_ms: int = 0
    expectation_failures: list[str] = field(default_factory=list)
    target_errors: list[str] = field(default_factory=list)
    caller_tokens: dict | None = None  # an LLM caller's {"prompt": n, "completion": n}
    # The recorder that saved the conversation (set by runs.execution.converse): finalizing
    # evaluates what it saved.
    recorder: Any = None


class Clock:
    """Milliseconds since the conversation started."""

    def __init__(self):
        self.start = time.monotonic()

    def ms(self) -> int:
        return int((time.monotonic() - self.start) * 1000)


async def record_reply(reply: Reply, recorder: Recorder, clock: Clock, outcome: Outcome, *, latency_ms: int | None) -> None:
    if latency_ms is None:
        latency_ms = reply.latency_ms
    if reply.text:
        now = clock.ms()
        # Not waited for: the caller's next line commits it (the recorder keeps their order).
        await recorder.turn(speaker="target", text=reply.text, started_ms=now, ended_ms=now, latency_ms=latency_ms,
                            wait=False)
    if reply.ended:
        outcome.ended_by = "target"


async def exchange(send, payload: str, recorder: Recorder, clock: Clock, outcome: Outcome) -> Reply | None:
    """Send the caller's words (or key presses) and record the target's reply with its latency.

    Returns the reply, or None when the target failed to answer: that failure is recorded as an
    error turn and ends the conversation, and the run still finalizes. A target that cannot be
    reached at all (``TargetUnreachable``) propagates: the run fails as ``target_unreachable``.
    """
    sent_ms = clock.ms()
    try:
        reply = await send(payload)
    except TargetUnreachable:
        raise
    except ConnectorError as exc:
        outcome.target_errors.append(str(exc))
        await recorder.turn(speaker="target", text=f"[no reply: {exc}]", started_ms=sent_ms,
                            ended_ms=clock.ms(), is_error=True)
        outcome.ended_by = "target"
        return None
    latency_ms = reply.latency_ms if reply.latency_ms is not None else clock.ms() - sent_ms
    await record_reply(reply, recorder, clock, outcome, latency_ms=latency_ms)
    return reply


class ScriptedCaller:
    """Follows a path's script: say, press, pause_ms, expect, end_call. Deterministic and offline."""

    def __init__(self, steps: list[dict]):
        self.steps = steps

    async def converse(self, connection: TargetConnection, recorder: Recorder, clock: Clock) -> Outcome:
        outcome = Outcome()
        heard: list[str] = []  # what the target said since the caller last acted

        async def target_says(reply: Reply | None) -> bool:
            if reply is not None and reply.text:
                heard.append(reply.text)
            return reply is None or reply.ended

        greeting = await connection.open()
        if greeting is not None:
            await record_reply(greeting, recorder, clock, outcome, latency_ms=None)
            if greeting.ended:
                outcome.duration_ms = clock.ms()
                return outcome
        for index, step in enumerate(self.steps, start=1):
            (kind, arg), = step.items()
            if kind == "say":
                heard.clear()
                at = clock.ms()
                await recorder.turn(speaker="caller", text=arg, started_ms=at, ended_ms=at)
                if await target_says(await exchange(connection.send, arg, recorder, clock, outcome)):
                    break
            elif kind == "press":
                heard.clear()
                at = clock.ms()
                await recorder.tool(name="press_digit", arguments={"digits": arg}, result=None, at_ms=at)
                if await target_says(await exchange(connection.press, arg, recorder, clock, outcome)):
                    break
            elif kind == "pause_ms":
                await asyncio.sleep(arg / 1000)
            elif kind == "expect":
                try:
                    patterns.compile_pattern(arg)
                except patterns.PatternError as exc:  # saved before patterns were checked with RE2
                    outcome.expectation_failures.append(f"step {index}: the pattern {arg!r} cannot be used: {exc}")
                    await recorder.tool(name="end_call", arguments={"reason": "expectation not met"}, result=None, at_ms=clock.ms())
                    outcome.ended_by = "caller"
                    break
                # A call's target may not have spoken yet (its greeting), or may say its answer in
                # several utterances: listen until the pattern matches or the target falls silent.
                # A chat target only answers messages, so listening returns nothing at once.
                hung_up = False
                while not hung_up and not patterns.matches(arg, " ".join(heard)):
                    try:
                        reply = await connection.listen()
                    except ConnectorError as exc:
                        outcome.target_errors.append(str(exc))
                        reply = None
                    if reply is None:
                        break
                    await record_reply(reply, recorder, clock, outcome, latency_ms=None)
                    if reply.text:
                        heard.append(reply.text)
                    hung_up = reply.ended
                said = " ".join(heard)
                if not patterns.matches(arg, said):
                    outcome.expectation_failures.append(
                        f"step {index}: expected the target to match {arg!r}, it said {said[:200]!r}"
                    )
                    if hung_up:
                        break
                    # The rest of the script assumes this reply: the caller hangs up here.
                    await recorder.tool(name="end_call", arguments={"reason": "expectation not met"}, result=None, at_ms=clock.ms())
                    outcome.ended_by = "caller"
                    break
                if hung_up:
                    break
            elif kind == "end_call":
                await recorder.tool(name="end_call", arguments={}, result=None, at_ms=clock.ms())
                outcome.ended_by = "caller"
                break
        outcome.duration_ms = clock.ms()
        return outcome
