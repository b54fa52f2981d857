"""The worker side of execution: one asyncio event loop per worker process holds many conversations.

A Celery task hands run ids to this process's ``ConversationHost`` and returns; the host's loop
(in a background thread) materializes each run and lets its channel's driver take it live
(``runs.execution``). Its ``ConversationHolder`` keeps the runs alive in the database and stops
the ones a user cancelled. A run is never silently executed twice: an executor must first claim
it (``run_claim_many``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time

from django.conf import settings

from assure import egress
from runs import services
from runs.connectors import demo, http_json, openai_chat, websocket  # noqa: F401  (loaded once, not in a run's first turn)
from runs.execution import execute
from runs.failures import PlatformError
from runs.holder import ConversationHolder
from runs.live import publish_from_loop


class ConversationHost:
    """This process's event loop thread and the conversations it holds."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.holder = ConversationHolder("worker")
        # Admitted runs beyond this process's cap wait here, unclaimed: if the process dies they
        # are still admitted-but-unclaimed, which the sweep dispatches again.
        self.waiting: collections.deque[str] = collections.deque()
        self.pid = os.getpid()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="assure-conversations", daemon=True)
        self.thread.start()
        self.ready.wait()

    @property
    def tasks(self) -> dict[str, asyncio.Task]:
        return self.holder.tasks

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._setup())
        self.ready.set()
        self.loop.run_forever()

    async def _setup(self) -> None:
        # One shared aiohttp session for every conversation of the loop (bench/README.md: the
        # fastest client under concurrency), with no per-host connection cap. It obeys the egress
        # policy and keeps no cookies: runs of every workspace share it.
        self.http = egress.client_session()
        self.room = asyncio.Event()  # set when a conversation ends and the cap has room again
        publish_from_loop(self.loop)

    def hand_over(self, run_ids: list[str], *, wait: float, offer_rest=None) -> None:
        """Take ``run_ids``, from a Celery task of this process; returns once this process's loop
        has taken them, having waited up to ``wait`` seconds for room under the cap.

        The task holds its pool process while it waits, so Celery gives the next runs to a pool
        process with room (it sends tasks to idle ones only), and runs no process has room for stay
        in the broker. A process whose loop is busy also takes longer to answer, which spreads a
        batch by load. Past ``wait`` the rest wait in this process, unclaimed, as before.

        The runs that do not fit now are first given to ``offer_rest`` (which queues them again
        for another process) while this task still holds its pool process, so the copy goes to
        another process: one with room takes them at once, instead of their waiting here while
        it has room. Whoever takes a run first claims it; the other finds it taken.
        """
        rest = asyncio.run_coroutine_threadsafe(self._take_now(run_ids), self.loop).result()
        if not rest:
            return
        if offer_rest is not None:
            offer_rest(rest)
        done = asyncio.run_coroutine_threadsafe(self._take_when_room(rest, wait), self.loop)
        done.result()

    async def _take_now(self, run_ids: list[str]) -> list[str]:
        """Take what fits under the cap now; returns the rest, in order."""
        rest = []
        for run_id in run_ids:
            if run_id in self.holder.tasks or run_id in self.waiting:
                continue
            if self._full():
                rest.append(run_id)
            else:
                self._take(run_id)
        return rest

    async def _take_when_room(self, run_ids: list[str], wait: float) -> None:
        deadline = self.loop.time() + wait
        for run_id in run_ids:
            if run_id in self.holder.tasks or run_id in self.waiting:
                continue
            while self._full() and self.loop.time() < deadline:
                self.room.clear()
                try:
                    await asyncio.wait_for(self.room.wait(), deadline - self.loop.time())
                except TimeoutError:
                    break
            if self._full():
                self.waiting.append(run_id)
            else:
                self._take(run_id)

    def _full(self) -> bool:
        return len(self.holder.tasks) >= settings.WORKER_MAX_CONVERSATIONS

    def _take(self, run_id: str) -> None:
        task = self.holder.hold(run_id, execute(run_id, worker=self.holder.name, http=self.http))
        # Registered after the holder's own callback, so the finished run is already forgotten.
        task.add_done_callback(self._start_waiting)

    def _start_waiting(self, _finished) -> None:
        while self.waiting and not self._full():
            run_id = self.waiting.popleft()
            if run_id not in self.holder.tasks:
                self._take(run_id)
        if not self._full():
            self.room.set()


_host: ConversationHost | None = None
_host_lock = threading.Lock()


def get_host() -> ConversationHost:
    global _host
    with _host_lock:
        if _host is None or _host.pid != os.getpid():
            _host = ConversationHost()
        return _host


def shutdown_host() -> None:
    host = _host
    if host is None or host.pid != os.getpid():
        return
    deadline = time.monotonic() + settings.RUN_SHUTDOWN_GRACE_SECONDS
    while host.tasks and time.monotonic() < deadline:
        time.sleep(0.1)
    failure = PlatformError("The worker executing this run was shut down mid-conversation. Safe to retry.")
    for run_id in list(host.tasks):
        services.run_fail(run_id=run_id, reason=failure.reason, detail=failure.detail)
    # Close the shared HTTP session on its own loop, so the process ends without asyncio's
    # "Unclosed client session" complaint.
    try:
        asyncio.run_coroutine_threadsafe(host.http.close(), host.loop).result(5)
    except (TimeoutError, RuntimeError):  # not closed in time, or the loop is gone: dropped with the process
        pass
    host.loop.call_soon_threadsafe(host.loop.stop)
