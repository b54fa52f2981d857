"""Group commit: the transcript rows and the stage changes of every conversation an event loop
holds are written together, one trip to the database threads and one transaction per flush,
instead of one of each per row or change.

With hundreds of conversations on a loop, a row per transaction made every turn wait its turn for
the database thread (SQLite has one writer; PostgreSQL pays a commit per row), and each of a run's
half-dozen stage changes (claimed, live, finalizing, completed) paid a hand-off to the database
thread, a commit and a wake-up of the loop. A flush starts as soon as something arrives and
nothing is being written; what arrives meanwhile goes in the next flush, so a quiet loop adds no
delay and a busy one writes in batches. Each caller still waits for its own commit: "saved before
pushed" holds, and hooks registered with ``transaction.on_commit`` run once the flush commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from runs import recorder  # its module, not its names: the recorder imports this module
from runs.inserts import insert_many, pks_where
from runs.models import Run

logger = logging.getLogger(__name__)

_writers: dict[int, TranscriptWriter] = {}

ROW, CALL, TOGETHER = "row", "call", "together"


# A flush of stage changes costs a few statements per run: hundreds at once (a batch ending) took
# PostgreSQL half a second. Bounded, the changes after them wait one more flush instead. The bound
# is also how many conversations start at the same instant (their runs went live in one flush):
# their first lines reach the target together, its replies come back together, and the last of
# them waits for all the others' turns to be handled. With 64, a batch of 500 against a target that
# answers in a steady second kept those clumps to the end (bench/README.md, "Scale (chat)").
MAX_CALLS_PER_FLUSH = 32


class _Lane:
    def __init__(self, limit: int | None):
        self.pending: list[tuple[str, tuple, asyncio.Future]] = []
        self.flushing = False
        self.limit = limit


class TranscriptWriter:
    """One per event loop: what waits for the next flush, and whether one is under way.

    Rows and calls flush in lanes of their own, so a conversation's next line never waits behind
    other runs' stage changes: on PostgreSQL the two lanes write on two database threads at once.
    A conversation awaits each write before its next, so its rows and its changes keep their order
    (it goes live before its first row, and closes after its last).
    """

    def __init__(self):
        self.rows = _Lane(limit=None)
        self.calls = _Lane(limit=MAX_CALLS_PER_FLUSH)

    async def save(self, model, run_id, row: dict) -> bool:
        """Insert ``row`` for ``run_id`` while the run is live; True when it was saved."""
        return await self.submit(model, run_id, row)

    def submit(self, model, run_id, row: dict) -> asyncio.Future:
        """``save`` without waiting: the future is resolved when the flush that holds the row commits."""
        return self._enqueue(ROW, (model, str(run_id), row))

    async def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the database thread, in the next flush's transaction; returns
        what it returns, or raises what it raised.

        As in autocommit, what ``fn`` wrote before raising anything but a database error stays
        written, unless it raised inside an atomic block of its own, which undoes its writes as that
        block would. A database error undoes the whole flush, which is then written again one item
        at a time, each in a transaction of its own: only ``fn``'s own writes are lost, and ``fn``
        is tried once more on its own (a deadlock's victim, say, succeeds then). Errors are rare; a
        savepoint per call was two more round trips each on PostgreSQL.
        """
        return await self._enqueue(CALL, (fn, args, kwargs))

    async def call_together(self, many, item):
        """``many`` called once per flush with every ``item`` submitted for it meanwhile, in the
        order they came; returns this item's outcome (``many`` returns one per item, an exception
        instance for one to raise). For work that costs much less done for many at once: claiming
        and loading the runs a worker was just handed. Otherwise like ``call``.
        """
        return await self._enqueue(TOGETHER, (many, item))

    def _enqueue(self, kind: str, work: tuple) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        lane = self.rows if kind == ROW else self.calls
        lane.pending.append((kind, work, future))
        if not lane.flushing:
            lane.flushing = True
            asyncio.ensure_future(self._flush_all(lane))
        return future

    async def _flush_all(self, lane: _Lane) -> None:
        try:
            while lane.pending:
                limit = lane.limit or len(lane.pending)
                batch, lane.pending = lane.pending[:limit], lane.pending[limit:]
                try:
                    outcomes = await recorder.db(write_together, [(kind, work) for kind, work, _ in batch])
                except Exception as exc:  # a lost connection, say: each waiting caller's to handle
                    outcomes = [exc] * len(batch)
                for (*_, future), outcome in zip(batch, outcomes):
                    if future.done():  # its conversation was cancelled meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            lane.flushing = False


def writer() -> TranscriptWriter:
    loop_id = id(asyncio.get_running_loop())
    return _writers.get(loop_id) or _writers.setdefault(loop_id, TranscriptWriter())


def write_together(items: list[tuple[str, tuple]]) -> list:
    """One flush, in one transaction: every row (``save_rows``), then every call in the order it
    came (calls made together, at the place of the first). A conversation waits for each of its
    writes, so none of its calls shares a flush with its own rows. For each item, its outcome: a
    row's "saved?", a call's result, or the error it raised.
    """
    outcomes: list = [None] * len(items)
    rows = [(i, work) for i, (kind, work) in enumerate(items) if kind == ROW]
    calls = _calls(items)
    try:
        with transaction.atomic():
            if rows:
                for (i, _), outcome in zip(rows, save_rows([work for _, work in rows])):
                    outcomes[i] = outcome
            for places, made_together, (fn, args, kwargs) in calls:
                outcome = _called(fn, args, kwargs)
                if not made_together:
                    outcomes[places[0]] = outcome
                    continue
                # One outcome per item, or the error that failed them all.
                for place, one in zip(places, outcome if isinstance(outcome, list) else [outcome] * len(places)):
                    outcomes[place] = one
            # A hook that fails after the commit (a push whose query lost its connection) must not
            # look like a failed commit, nor keep the other runs' hooks from running: Django logs a
            # robust hook's failure and goes on. (Its hooks: (savepoint ids, hook, robust).)
            connection.run_on_commit[:] = [(sids, hook, True) for sids, hook, _ in connection.run_on_commit]
    except DatabaseError as exc:  # the transaction itself failed (its commit, say): nothing is written
        if len(items) == 1:
            return [exc.original if isinstance(exc, _Unusable) else exc]
        logger.info("a flush of %d writes failed as a whole (%s); writing them one by one", len(items), exc)
        return [write_together([item])[0] for item in items]
    return outcomes


def _calls(items) -> list[tuple[list[int], bool, tuple]]:
    """The calls of a flush, in order, as (the items' places, made together?, (fn, args, kwargs)):
    the items made together for one ``many`` are one call of it with all of them, at the first's place."""
    calls, together = [], {}
    for i, (kind, work) in enumerate(items):
        if kind == CALL:
            calls.append(([i], False, work))
        elif kind == TOGETHER:
            many, item = work
            if many not in together:
                together[many] = places, batch = [], []
                calls.append((places, True, (many, (batch,), {})))
            together[many][0].append(i)
            together[many][1].append(item)
    return calls


class _Unusable(DatabaseError):
    """A call left the flush's transaction unusable: an error inside one of its own atomic blocks
    without a savepoint (or a database error it swallowed). The flush is undone; ``original`` is
    what its caller hears, once the call has been tried alone."""

    def __init__(self, fn, original: Exception | None):
        super().__init__(f"{getattr(fn, '__name__', fn)} left the flush's transaction unusable")
        self.original = original or self


def _called(fn, args, kwargs):
    """What ``fn`` returns, or the exception it raised; a database error is raised on, to undo the flush."""
    try:
        outcome = fn(*args, **kwargs)
    except DatabaseError:
        raise
    except Exception as exc:  # what ``fn`` wrote before raising stays, as in autocommit
        outcome = exc
    if connection.needs_rollback:
        raise _Unusable(fn, outcome if isinstance(outcome, Exception) else None)
    return outcome


def save_rows(rows: list[tuple[type, str, dict]]) -> list[bool | Exception]:
    """Save each ``(model, run id, row)`` whose run is still live; for each, whether it was saved
    (a cancelled, ended or finalizing run never gains a row), or the error that kept it out.

    All in one transaction. Should it fail as a whole (a row breaking a constraint), each row is
    tried in a transaction of its own, so only that row's conversation sees the error. Inside a
    flush (``write_together``) the error undoes the flush, which does the same: no savepoint (two
    more round trips on PostgreSQL) is spent on a failure that almost never happens.
    """
    rows = [(model, str(run_id), row) for model, run_id, row in rows]
    if connection.in_atomic_block:
        return _save_together(rows)
    try:
        return _save_together(rows)
    except DatabaseError:
        if len(rows) == 1:
            raise
        logger.info("a transcript flush of %d rows failed as a whole; saving them one by one", len(rows))
    outcomes = []
    for one in rows:
        try:
            outcomes += _save_together([one])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _save_together(rows: list[tuple[type, str, dict]]) -> list[bool]:
    """The runs' status is read inside the transaction that inserts, so a row lands only for a run
    that was live when its flush began: not once it ended, nor once it began to finalize (what
    finalizing evaluates is then complete)."""
    with transaction.atomic(savepoint=False):
        # A plain SELECT: compiling the ORM's query was a fifth of a flush's time.
        running = pks_where(Run, {run_id for _, run_id, _ in rows},
                            {"status": Run.Status.RUNNING, "stage": Run.Stage.LIVE})
        groups = defaultdict(list)
        for model, run_id, row in rows:
            if run_id in running:
                groups[(model, tuple(row))].append((run_id, row))
        now = timezone.now()
        for (model, names), members in groups.items():
            insert_many(model, names, members, now)
    return [run_id in running for _, run_id, _ in rows]

