"""The conversations one event loop holds, kept alive in the database by a heartbeat.

A Celery worker's conversation loop holds chat conversations; daphne's loop holds the calls whose
ConversationRelay websocket landed on it. Either way the holder checks its runs every
``RUN_HEARTBEAT_SECONDS`` and stops the conversation of a run that ended elsewhere (a user
cancelled it, the sweep ended it), and marks them alive a quarter of
``RUN_HEARTBEAT_TIMEOUT_SECONDS`` apart. If the process dies the heartbeats stop, and the beat
sweep ends its runs as ``failed / error``: no run is left ``running`` by a process that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from django.conf import settings
from django.utils import timezone

from runs.models import Run
from runs.writer import writer

logger = logging.getLogger(__name__)


def holder_name(kind: str) -> str:
    """Who holds a run, as stored in ``Run.worker``: the process and this holder within it."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ConversationHolder:
    def __init__(self, kind: str):
        self.name = holder_name(kind)
        self.tasks: dict[str, asyncio.Task] = {}
        self._heartbeat: asyncio.Task | None = None
        self._marked_at = float("-inf")

    def hold(self, run_id: str, coroutine) -> asyncio.Task:
        """Run ``coroutine`` (the conversation of ``run_id``) on the current loop, under the heartbeat."""
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks[run_id] = task
        task.add_done_callback(lambda _t, rid=run_id: self.tasks.pop(rid, None))
        return task

    async def _beat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.RUN_HEARTBEAT_SECONDS)
            if not self.tasks:
                continue
            # Checking for runs ended elsewhere only reads; marking every held run alive rewrites
            # its row, so that is done only as often as the watchdog needs: marks are at most a
            # quarter of its timeout apart (or one check apart, if checks are sparser).
            now = loop.time()
            mark = now - self._marked_at + settings.RUN_HEARTBEAT_SECONDS > settings.RUN_HEARTBEAT_TIMEOUT_SECONDS / 4
            try:
                # Through the loop's group commit, like the conversations' own writes: in a
                # transaction of its own it waited on their row locks, and they on its (a deadlock
                # PostgreSQL breaks only after a second).
                ended = await writer().call(beat, list(self.tasks), mark=mark)
                if mark:
                    self._marked_at = now
            except Exception:
                logger.exception("heartbeat failed")
                continue
            for run_id in ended:
                task = self.tasks.get(run_id)
                if task is not None:
                    task.cancel()


def beat(run_ids: list[str], *, mark: bool = True) -> list[str]:
    """Mark our running runs alive (if ``mark``); return those that ended elsewhere (cancelled, timed out)."""
    if mark:
        Run.objects.filter(pk__in=run_ids, status=Run.Status.RUNNING).update(heartbeat_at=timezone.now())
    alive = {str(pk) for pk in Run.objects.filter(pk__in=run_ids, status=Run.Status.RUNNING).values_list("pk", flat=True)}
    return [run_id for run_id in run_ids if run_id not in alive]


_holders: dict[int, ConversationHolder] = {}


def holder_for_this_loop(kind: str) -> ConversationHolder:
    """One holder per event loop of this process (daphne has one loop; a worker's host has its own)."""
    loop_id = id(asyncio.get_running_loop())
    holder = _holders.get(loop_id)
    if holder is None:
        holder = _holders[loop_id] = ConversationHolder(kind)
    return holder
