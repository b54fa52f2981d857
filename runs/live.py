"""Live pushes: Channels messages that follow a committed change.

The database is the source of truth; a doorbell that cannot be rung (broker or Redis briefly
away) is logged and dropped — the beat sweep and a page reload recover from it — and never
fails or delays the change that rang it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.template.loader import render_to_string

from assure.doorbell import ring  # noqa: F401  (re-exported: runs code rings through here)
from runs.known import known

logger = logging.getLogger(__name__)


def run_groups(run_ids) -> dict[str, list[str]]:
    """{run id: the groups of the pages that show it}, in at most one query (``runs.known``)."""
    return {run_id: facts.groups(run_id) for run_id, facts in known(run_ids).items()}


# A process with a long-lived event loop (a worker's conversation host, daphne) publishes from it:
# each ``async_to_sync`` from a fresh loop opens a new Redis connection (FLOORS.md), which made every
# transition of every run pay several milliseconds on the executor's database thread.
_event_loop = None


def publish_from_loop(loop) -> None:
    global _event_loop
    _event_loop = loop


# Pushes leave a loop together. channels-redis's ``group_send`` costs two round trips per group
# even when nobody watches it, and two more when somebody does; a run's transition went to three
# groups and each of its turns to one, so a six-turn run cost about forty round trips and as many
# wake-ups of the loop. Here everything published while a send is on the wire goes in the next
# one: one round trip reads who is in every group the batch names, one more delivers to them. A
# message for groups nobody is in is never built, so an unwatched run's turns are never rendered.
MAX_BATCH = 500
SEND_TIMEOUT_SECONDS = 2.0

# The delivery step of channels-redis's ``RedisChannelLayer.group_send``: a message joins each
# channel's queue unless the queue is full.
_DELIVER_LUA = """
    local over_capacity = 0
    local current_time = ARGV[#ARGV - 1]
    local expiry = ARGV[#ARGV]
    for i=1,#KEYS do
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
            redis.call('ZADD', KEYS[i], current_time, ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""

# The first step of ``group_send``, for every group of a batch in one command: drop each group's
# expired members, then read who is left. Returns (place of the group among KEYS, its members) for
# the groups with members only: most groups of a busy worker's batch (unwatched runs) have none,
# and a pipeline of two commands per group cost its loop more than the rest of the push.
_MEMBERS_LUA = """
    local found = {}
    for i=1,#KEYS do
        redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
        local members = redis.call('ZRANGE', KEYS[i], 0, -1)
        if #members > 0 then
            found[#found + 1] = i
            found[#found + 1] = members
        end
    end
    return found
"""

# A message, or a callable that builds it (called only if one of its groups has a member).
Message = dict | Callable[[], dict]


class Publisher:
    """The pushes of one event loop, sent in the order they were published, a batch at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: collections.deque[tuple[list[str], Message]] = collections.deque()
        self.incoming: collections.deque[tuple[list[str], Message]] = collections.deque()
        self.sending: asyncio.Task | None = None
        self.woken = False
        # A channel's queue is a sorted set scored by time: messages of one batch would share a
        # score, and Redis would order them by their random prefixes.
        self.last_score = 0.0

    def publish(self, groups: list[str], message: Message) -> None:
        """On the loop's thread: send ``message`` to ``groups`` after everything published before."""
        self.pending.append((groups, message))
        if self.sending is None:
            self.sending = self.loop.create_task(self._send_pending())

    def publish_threadsafe(self, messages: list[tuple[list[str], Message]]) -> None:
        """From another thread: the same for several messages, with one wake-up of the loop however
        many are published before it runs."""
        self.incoming.extend(messages)
        if not self.woken:
            self.woken = True
            self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        self.woken = False  # first: a message added after this line wakes the loop again
        while self.incoming:
            self.publish(*self.incoming.popleft())

    async def _send_pending(self) -> None:
        try:
            while self.pending:
                batch = [self.pending.popleft() for _ in range(min(len(self.pending), MAX_BATCH))]
                try:
                    await asyncio.wait_for(send_batch(batch, publisher=self), SEND_TIMEOUT_SECONDS)
                except Exception as exc:  # a doorbell: the database has the change
                    logger.warning("could not publish %s live message(s) (%s)", len(batch), exc)
        finally:
            self.sending = None

    def score(self) -> float:
        self.last_score = max(time.time(), self.last_score + 1e-6)
        return self.last_score


_publishers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def publisher(loop: asyncio.AbstractEventLoop | None = None) -> Publisher:
    """The publisher of ``loop`` (by default the running one)."""
    loop = loop or asyncio.get_running_loop()
    found = _publishers.get(loop)
    if found is None:
        found = _publishers[loop] = Publisher(loop)
    return found


def _built(message: Message) -> dict | None:
    if not callable(message):
        return message
    try:
        return message()
    except Exception:  # a row the page cannot show must not stop the pushes after it
        logger.exception("could not build a live message")
        return None


async def send_batch(batch: list[tuple[list[str], Message]], *, publisher: Publisher | None = None) -> None:
    """Deliver each (groups, message) of ``batch`` through the Channels layer, in order."""
    layer = get_channel_layer()
    if layer is None:
        return
    if not isinstance(layer, RedisChannelLayer) or layer.ring_size != 1:
        for groups, message in batch:  # another layer, or a sharded one: its own group_send
            built = _built(message)
            for group in groups if built is not None else ():
                await layer.group_send(group, built)
        return
    connection = layer.connection(0)
    names = list(dict.fromkeys(group for groups, _ in batch for group in groups))
    now = int(time.time())
    members = dict.fromkeys(names, ())
    found = await connection.eval(_MEMBERS_LUA, len(names), *(layer._group_key(group) for group in names),
                                  now - layer.group_expiry)
    for place, channels in zip(found[::2], found[1::2]):
        members[names[place - 1]] = [channel.decode() for channel in channels]
    pipe = connection.pipeline(transaction=False)
    for groups, message in batch:
        if not any(members[group] for group in groups):
            continue
        built = _built(message)
        if built is None:
            continue
        for group in groups:
            if not members[group]:
                continue
            _, payloads, capacities = layer._map_channel_keys_to_connection(members[group], built)
            keys = list(payloads)
            for key in keys:
                pipe.zremrangebyscore(key, min=0, max=now - int(layer.expiry))
            score = publisher.score() if publisher is not None else time.time()
            pipe.eval(_DELIVER_LUA, len(keys), *keys, *(payloads[key] for key in keys),
                      *(capacities[key] for key in keys), score, layer.expiry)
    if len(pipe):
        await pipe.execute()


async def _send_batch_in_time(batch) -> None:
    await asyncio.wait_for(send_batch(batch), SEND_TIMEOUT_SECONDS)


def publish_run_changed(*run_ids) -> None:
    """Tell every page that shows these runs that their status or stage changed.

    Each change carries a token of its own: the run pages of one daphne process that receive it
    render the run's new state once between them (``runs.consumers``), not once each. A process
    without a long-lived loop (a web request) sends a whole batch in one ``async_to_sync`` call.
    """
    messages = [(groups, {"type": "run.changed", "run": run_id, "change": uuid.uuid4().hex})
                for run_id, groups in run_groups(run_ids).items()]
    if not messages:
        return
    loop = _event_loop
    if loop is not None and loop.is_running():
        publisher(loop).publish_threadsafe(messages)
        return
    try:
        async_to_sync(_send_batch_in_time)(messages)
    except Exception as exc:  # a doorbell: the database has the change
        logger.warning("could not publish the change of run(s) %s (%s)", ", ".join(map(str, run_ids)), exc)


# Transcript pushes: the browser's frame is rendered and encoded once, where the row was saved, and
# every run page's socket forwards it as it is. A run watched by 100 pages used to render each
# turn 100 times on daphne's event loop.

# Every turn's frame fits (20,000 characters, each escaped to at most 12), so this bounds only a
# huge tool invocation: its push goes without the frame, and each page reads the row from the
# database instead. The Redis channel layer has no size limit of its own; its queues hold 100
# messages a channel.
MAX_FRAME_CHARS = 256 * 1024


def turn_frame(turn: dict) -> str:
    """The run page's frame for one turn (``seq``, ``speaker``, ``text``, ``started_ms``,
    ``latency_ms``, ``is_error``): its transcript line, and its latency for the page's gauge."""
    frame = {"type": "turn", "seq": turn["seq"], "html": render_to_string("runs/partials/turn.html", {"turn": turn})}
    if turn.get("latency_ms") is not None:
        frame["latency_ms"] = turn["latency_ms"]
    return json.dumps(frame)


def tool_frame(tool: dict) -> str:
    """The run page's frame for one tool invocation (``seq``, ``name``, ``arguments``, ``result``,
    ``at_ms``, ``status``)."""
    return json.dumps({"type": "tool", "seq": tool["seq"],
                       "html": render_to_string("runs/partials/tool.html", {"tool": tool})})


def turn_message(run_id, turn: dict) -> dict:
    """The ``run.turn`` message of a saved turn, for the run's group."""
    return _row_message("run.turn", run_id, turn["seq"], turn_frame(turn))


def tool_message(run_id, tool: dict) -> dict:
    """The ``run.tool`` message of a saved tool invocation, for the run's group."""
    return _row_message("run.tool", run_id, tool["seq"], tool_frame(tool))


def _row_message(kind: str, run_id, seq: int, frame: str) -> dict:
    message = {"type": kind, "run": str(run_id), "seq": seq}
    if len(frame) <= MAX_FRAME_CHARS:
        message["frame"] = frame
    return message
