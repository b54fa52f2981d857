"""Saving a conversation as it happens: the database thread pool, and the recorder that persists
each turn and tool invocation first and then publishes it to the run's group.

Importable from any process that holds conversations — a Celery worker's conversation loop, or
daphne, where the ConversationRelay websocket of a call lands — without starting either.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections

from runs.live import publisher, tool_message, turn_message
from runs.models import ToolInvocation, Turn
from runs.writer import writer

logger = logging.getLogger(__name__)

# ORM calls leave the event loop for these threads; each keeps its own database connection.
# SQLite has one writer at a time, and writers that collide back off by sleeping in its busy
# handler (tens of milliseconds each); one thread queues them without collisions instead.
_db_pool = ThreadPoolExecutor(
    max_workers=1 if "sqlite" in settings.DATABASES["default"]["ENGINE"] else 8,
    thread_name_prefix="assure-db",
)

_thread_state = threading.local()
CONNECTION_CHECK_SECONDS = 10.0


def _with_fresh_connection(fn, args, kwargs):
    # Drop a broken or expired connection now and then, not on every call: with health checks
    # on, each check costs a "SELECT 1" round trip on the next query.
    now = time.monotonic()
    if now - getattr(_thread_state, "checked", 0.0) > CONNECTION_CHECK_SECONDS:
        close_old_connections()
        _thread_state.checked = now
    return fn(*args, **kwargs)


async def db(fn, *args, **kwargs):
    """Run the synchronous ORM function ``fn`` on the database threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_pool, _with_fresh_connection, fn, args, kwargs)


# What one stored turn may hold: a transcript stays readable (and a run's size bounded) whatever
# a target sends within the reply byte cap.
MAX_TURN_CHARS = 20_000
TRUNCATED_MARKER = "… [truncated]"


def capped_text(text: str) -> str:
    return text if len(text) <= MAX_TURN_CHARS else text[:MAX_TURN_CHARS] + TRUNCATED_MARKER


# What evaluation reads of each saved row (runs.evaluation).
TRANSCRIPT_TURN_KEYS = ("seq", "speaker", "text", "latency_ms", "started_ms", "is_error")
TRANSCRIPT_TOOL_KEYS = ("seq", "name", "arguments")
# A recorder keeps what it saved for finalizing to evaluate, up to about this many characters; a
# longer transcript (a target that answers with pages) is read back from the database instead, so
# hundreds of conversations on one loop never hold more than this each.
TRANSCRIPT_MEMORY_CHARS = 200_000


class DbRecorder:
    """Persists each turn and tool invocation first, then publishes it to the run's group.

    Rows are saved in the order they are recorded (one flush after another, ``runs.writer``). A
    call waits for its row's commit, except a target's turn recorded with ``wait=False``: that one
    is committed with the caller's next line, which the conversation waits for before sending it.
    So the target never hears a caller's line the transcript does not hold, and each exchange waits
    for one flush, not two.
    """

    def __init__(self, run_id):
        self.run_id = run_id
        self.turn_seq = 0
        self.tool_seq = 0
        self._unsettled: collections.deque[asyncio.Future] = collections.deque()
        self._landed: dict[type, list[dict]] | None = {Turn: [], ToolInvocation: []}
        self._landed_chars = 0

    async def turn(self, *, speaker, text, started_ms, ended_ms, latency_ms=None, is_error=False, wait=True):
        self.turn_seq += 1
        text = capped_text(text)
        row = {"seq": self.turn_seq, "speaker": speaker, "text": text, "started_ms": started_ms,
               "ended_ms": ended_ms, "latency_ms": latency_ms, "is_error": is_error}
        self._record(Turn, turn_message, row)
        if wait:
            await self.settled()

    async def tool(self, *, name, arguments, result, at_ms, duration_ms=None, status="ok"):
        self.tool_seq += 1
        row = {"seq": self.tool_seq, "name": name, "arguments": arguments, "result": result,
               "at_ms": at_ms, "duration_ms": duration_ms, "status": status}
        self._record(ToolInvocation, tool_message, row)
        await self.settled()

    async def settled(self) -> None:
        """Wait until every row recorded so far is committed; raises what saving one raised."""
        while self._unsettled:
            saving = self._unsettled[0]
            # Shielded: a waiter that is cancelled (a call's background task) must not cancel the
            # row's save for the others. A row that failed stays at the head, so the conversation
            # hears of it even if another waiter heard first.
            await asyncio.shield(saving)
            if self._unsettled and self._unsettled[0] is saving:
                self._unsettled.popleft()

    async def drained(self) -> None:
        """Wait until every row recorded so far is committed or refused, whatever became of it."""
        if self._unsettled:
            await asyncio.shield(asyncio.gather(*self._unsettled, return_exceptions=True))

    def transcript(self) -> tuple[list[dict], list[dict]] | None:
        """What this recorder saved, as evaluation reads it: (turns, tool invocations), by sequence;
        None if it grew past ``TRANSCRIPT_MEMORY_CHARS`` (read it from the database then).

        The recorder is the only writer of its run's rows, and a row lands only while the run is
        live: once the run is finalizing and ``drained``, this is what the database holds for it."""
        if self._landed is None:
            return None
        turns = [{key: turn[key] for key in TRANSCRIPT_TURN_KEYS} for turn in self._landed[Turn]]
        tools = [{key: tool[key] for key in TRANSCRIPT_TOOL_KEYS} for tool in self._landed[ToolInvocation]]
        return sorted(turns, key=lambda t: t["seq"]), sorted(tools, key=lambda t: t["seq"])

    def _record(self, model, message_for, row: dict) -> None:
        saving = writer().submit(model, self.run_id, row)
        saving.add_done_callback(functools.partial(self._saved, model, message_for, row))
        self._unsettled.append(saving)

    def _saved(self, model, message_for, row: dict, saving: asyncio.Future) -> None:
        # Only a row that landed is kept and pushed (a cancelled or ended run gains none); an
        # error is raised to the conversation by ``settled``.
        if not saving.cancelled() and saving.exception() is None and saving.result():
            self._keep(model, row)
            self._push(message_for, row)

    def _keep(self, model, row: dict) -> None:
        if self._landed is None:
            return
        self._landed_chars += len(row["text"]) if model is Turn else len(repr(row["arguments"]))
        if self._landed_chars > TRANSCRIPT_MEMORY_CHARS:
            self._landed = None
        else:
            self._landed[model].append(row)

    def _push(self, message_for, row: dict) -> None:
        """Publish a saved row, after the run's earlier pushes, without waiting for it.

        The conversation goes on meanwhile: rendering the row for the run page and the Redis round
        trips of the publish were a millisecond or more on the critical path of every turn. The
        row is rendered only if a page watches the run (``runs.live.Publisher``); a push that fails
        is logged and dropped, and a page that misses it catches up by sequence number.
        """
        publisher().publish([f"run-{self.run_id}"], functools.partial(message_for, self.run_id, row))
