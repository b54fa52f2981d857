"""Executes runs: one asyncio event loop per worker process holds many conversations at once.

A Celery task hands a run id to this process's ``ConversationHost`` and returns; the host's loop
(in a background thread) runs the conversation, while a heartbeat keeps the runs it holds marked
alive and stops the ones a user cancelled. If the process dies, the heartbeats stop and the beat
sweep ends its runs as ``failed / error``; a run is never silently executed twice, because an
executor must first claim it (``run_claim``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from runs import services
from runs.connectors import ConnectionContext, ConnectorError, TargetUnreachable, connection_for
from runs.connectors import demo, http_json, openai_chat, websocket  # noqa: F401  (loaded once, not in a run's first turn)
from runs.engine import Clock, ScriptedCaller
from runs.llm_caller import CallerError, Function, LLMCaller
from runs.evaluation import evaluate
from runs.live import group_send, publish_from_loop, publish_run_changed
from runs.models import CriterionResult, Run, ToolInvocation, Turn

logger = logging.getLogger(__name__)
F = Run.FailureReason

# ORM calls leave the event loop for these threads; each keeps its own database connection.
# SQLite has one writer at a time, and writers that collide back off by sleeping in its busy
# handler (tens of milliseconds each); one thread queues them without collisions instead.
_db_pool = ThreadPoolExecutor(
    max_workers=1 if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else 8,
    thread_name_prefix="assure-db",
)


_thread_state = threading.local()
CONNECTION_CHECK_SECONDS = 10.0


def _db_call(fn):
    def wrapper(*args, **kwargs):
        # Drop a broken or expired connection now and then, not on every call: with health checks
        # on, each check costs a "SELECT 1" round trip on the next query.
        now = time.monotonic()
        if now - getattr(_thread_state, "checked", 0.0) > CONNECTION_CHECK_SECONDS:
            close_old_connections()
            _thread_state.checked = now
        return fn(*args, **kwargs)

    return wrapper


async def db(fn, *args, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_pool, lambda: _db_call(fn)(*args, **kwargs))


class DbRecorder:
    """Persists each turn and tool invocation first, then publishes it to the run's group."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.turn_seq = 0
        self.tool_seq = 0

    async def turn(self, *, speaker, text, started_ms, ended_ms, latency_ms=None, is_error=False):
        self.turn_seq += 1
        row = {"seq": self.turn_seq, "speaker": speaker, "text": text, "started_ms": started_ms,
               "ended_ms": ended_ms, "latency_ms": latency_ms, "is_error": is_error}
        if await db(_save_if_running, Turn, self.run_id, row):
            await self._publish({"type": "run.turn", "run": str(self.run_id), **row})

    async def tool(self, *, name, arguments, result, at_ms, duration_ms=None, status="ok"):
        self.tool_seq += 1
        row = {"seq": self.tool_seq, "name": name, "arguments": arguments, "result": result,
               "at_ms": at_ms, "duration_ms": duration_ms, "status": status}
        if await db(_save_if_running, ToolInvocation, self.run_id, row):
            await self._publish({"type": "run.tool", "run": str(self.run_id), **row})

    async def _publish(self, message: dict) -> None:
        # The row is saved first; a page that misses this push catches up by sequence number.
        await group_send([f"run-{self.run_id}"], message)


def _save_if_running(model, run_id, row: dict) -> bool:
    """Insert a transcript row unless the run has ended (a cancelled run never changes again).

    One ``INSERT … SELECT … WHERE EXISTS`` statement: the check and the write cost one round trip
    on the hot path of every turn, with no explicit transaction or row lock.
    """
    values = {**row, "run_id": run_id}
    if any(f.name == "created_at" for f in model._meta.concrete_fields):
        values["created_at"] = timezone.now()
    fields = [model._meta.get_field(name) for name in values]
    params = [f.get_db_prep_save(values[f.attname], connection) for f in fields]
    pk = Run._meta.pk
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
        f"({', '.join(connection.ops.quote_name(f.column) for f in fields)}) "
        f"SELECT {', '.join(['%s'] * len(fields))} WHERE EXISTS (SELECT 1 FROM "
        f"{connection.ops.quote_name(Run._meta.db_table)} WHERE {connection.ops.quote_name(pk.column)} = %s "
        f"AND {connection.ops.quote_name('status')} = %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, pk.get_db_prep_value(run_id, connection), Run.Status.RUNNING.value])
        return cursor.rowcount == 1


def compose_persona(snapshot: dict) -> str:
    scenario, path, agent = snapshot["scenario"], snapshot["path"], snapshot["agent"]
    parts = [
        agent.get("instructions", ""),
        f"Scenario: {scenario['name']}. {scenario.get('description', '')}",
        f"Who you are and what you want: {path.get('narrative', '')}",
    ]
    if agent.get("end_conditions"):
        parts.append(f"End the conversation when: {agent['end_conditions']}")
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def _load(run_id) -> dict | None:
    # .order_by(): no default ordering to compile on this hot path.
    run = Run.objects.select_related("scenario__agent", "scenario__target").filter(pk=run_id).order_by().first()
    if run is None:
        return None
    scenario = run.scenario
    live_target = scenario.target if scenario else None
    agent = scenario.agent if scenario else None
    unsynced, functions = [], []
    if agent is not None:
        for function in agent.functions.order_by():
            if function.sync_status != "synced":
                unsynced.append((function.name, function.sync_status))
            functions.append(Function(name=function.name, description=function.description,
                                      parameters=function.parameters, url=function.url, secret=function.secret))
    return {
        "snapshot": run.snapshot,
        "secrets": dict(live_target.headers) if live_target else {},
        "unsynced": unsynced,
        "functions": functions,
        "llm": {
            "base_url": (agent.llm_base_url if agent and agent.llm_base_url else settings.LLM_BASE_URL),
            "api_key": (agent.llm_api_key if agent and agent.llm_api_key else settings.LLM_API_KEY),
            "model": (agent.llm_model if agent and agent.llm_model else settings.LLM_MODEL),
        },
    }


def _transcript(run_id) -> tuple[list[dict], list[dict]]:
    turns = list(Turn.objects.filter(run_id=run_id).order_by("seq").values(
        "seq", "speaker", "text", "latency_ms", "started_ms", "is_error"))
    tools = list(ToolInvocation.objects.filter(run_id=run_id).order_by("seq").values("seq", "name", "arguments"))
    return turns, tools


def _save_results(run_id, results) -> None:
    with transaction.atomic():
        CriterionResult.objects.filter(run_id=run_id).delete()
        CriterionResult.objects.bulk_create([
            CriterionResult(run_id=run_id, position=i, name=r.name, kind=r.kind, outcome=r.outcome,
                            rationale=r.rationale, evidence=r.evidence)
            for i, r in enumerate(results)
        ])


async def execute(run_id, *, worker: str, http: aiohttp.ClientSession) -> None:
    """Run one admitted run to its end. Steps: claim; materialize (persona, preconditions); go
    live and converse under the agent's duration cap; finalize (criteria, verdict, metrics)."""
    if not await db(services.run_claim, run_id=run_id, worker=worker):
        return  # another executor has it, or it was cancelled meanwhile
    try:
        loaded = await db(_load, run_id)
        if loaded is None:
            return
        snapshot = loaded["snapshot"]
        if loaded["unsynced"]:
            names = ", ".join(f"{name} ({status})" for name, status in loaded["unsynced"])
            await db(services.run_fail, run_id=run_id, reason=F.TOOL_SYNC_PENDING,
                     detail=f"These custom functions of the agent have not synced: {names}. Check the Functions "
                            "panel banner; click Retry if it's red.")
            return
        script = snapshot["path"].get("script") or []
        persona = compose_persona(snapshot)
        if script:
            caller = ScriptedCaller(script)
        else:
            try:
                caller = LLMCaller(persona=persona, language=snapshot["agent"].get("language", "en-US"), llm=loaded["llm"],
                                   functions=loaded["functions"], channel=snapshot["scenario"]["channel"],
                                   http=http, run_id=str(run_id))
            except CallerError as exc:
                await db(services.run_fail, run_id=run_id, reason=F.ERROR, detail=str(exc))
                return
        if not await db(services.run_go_live, run_id=run_id, persona=persona):
            return
        await db(publish_run_changed, run_id)
        context = ConnectionContext(session_id=str(run_id), http=http, secrets=loaded["secrets"])
        cap = snapshot["agent"].get("max_duration_seconds") or 300
        try:
            connection = connection_for(snapshot["target"], context)
        except ConnectorError as exc:
            await db(services.run_fail, run_id=run_id, reason=F.ERROR, detail=str(exc))
            return
        clock = Clock()
        try:
            outcome = await asyncio.wait_for(caller.converse(connection, DbRecorder(run_id), clock), timeout=cap)
        except TargetUnreachable as exc:
            await db(services.run_fail, run_id=run_id, reason=F.TARGET_UNREACHABLE,
                     detail=f"{exc}. Check the target's URL and that the system is accepting sessions.")
            return
        except CallerError as exc:
            await db(services.run_fail, run_id=run_id, reason=F.ERROR, detail=str(exc))
            return
        except asyncio.TimeoutError:
            await db(services.run_fail, run_id=run_id, reason=F.DURATION_CAP_NO_PROGRESS,
                     detail=f"The conversation was still going after the agent's {cap}s cap. Raise the cap on the "
                            "agent, or add tighter end conditions to the scenario description.")
            return
        finally:
            try:
                await connection.close()
            except Exception:  # closing a broken session must not mask how the run ended
                logger.debug("closing the target connection of run %s failed", run_id, exc_info=True)
        if not await db(services.run_finalize, run_id=run_id):
            return
        await db(publish_run_changed, run_id)
        turns, tools = await db(_transcript, run_id)
        criteria = list(snapshot["scenario"].get("criteria") or []) + list(snapshot["path"].get("criteria") or [])
        results, verdict, metrics = await evaluate(
            criteria, turns=turns, tools=tools, ended_by=outcome.ended_by, duration_ms=outcome.duration_ms,
            expectation_failures=outcome.expectation_failures, scripted=bool(script), llm=loaded["llm"],
        )
        await db(_save_results, run_id, results)
        await db(services.run_complete, run_id=run_id, verdict=verdict, metrics=metrics)
    except asyncio.CancelledError:
        raise  # the heartbeat saw the run cancelled; the finally blocks above closed the session
    except Exception as exc:
        logger.exception("run %s failed with an unexpected error", run_id)
        await db(services.run_fail, run_id=run_id, reason=F.ERROR,
                 detail=f"Unexpected {type(exc).__name__}: {exc}. Safe to retry.")


class ConversationHost:
    """This process's event loop thread and the conversations it holds."""

    def __init__(self):
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.loop = asyncio.new_event_loop()
        self.tasks: dict[str, asyncio.Task] = {}
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="assure-conversations", daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._setup())
        self.ready.set()
        self.loop.run_forever()

    async def _setup(self) -> None:
        # One shared aiohttp session for every conversation of the loop (FLOORS.md: the fastest
        # client under concurrency), with no per-host connection cap.
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60))
        self.loop.create_task(self._heartbeat())
        publish_from_loop(self.loop)

    def submit(self, run_id: str) -> None:
        self.loop.call_soon_threadsafe(self._start, run_id)

    def _start(self, run_id: str) -> None:
        if run_id in self.tasks:
            return
        task = self.loop.create_task(execute(run_id, worker=self.worker, http=self.http))
        self.tasks[run_id] = task
        task.add_done_callback(lambda _t, rid=run_id: self.tasks.pop(rid, None))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(settings.RUN_HEARTBEAT_SECONDS)
            if not self.tasks:
                continue
            try:
                ended = await db(_beat, list(self.tasks))
            except Exception:
                logger.exception("heartbeat failed")
                continue
            for run_id in ended:
                task = self.tasks.get(run_id)
                if task is not None:
                    task.cancel()


def _beat(run_ids: list[str]) -> list[str]:
    """Mark our running runs alive; return those that ended elsewhere (cancelled, timed out)."""
    Run.objects.filter(pk__in=run_ids, status=Run.Status.RUNNING).update(heartbeat_at=timezone.now())
    alive = {str(pk) for pk in Run.objects.filter(pk__in=run_ids, status=Run.Status.RUNNING).values_list("pk", flat=True)}
    return [run_id for run_id in run_ids if run_id not in alive]


_host: ConversationHost | None = None
_host_lock = threading.Lock()


def get_host() -> ConversationHost:
    global _host
    with _host_lock:
        if _host is None or _host.pid != os.getpid():
            _host = ConversationHost()
            _host.pid = os.getpid()
        return _host


def shutdown_host() -> None:
    host = _host
    if host is None or host.pid != os.getpid():
        return
    deadline = time.monotonic() + settings.RUN_SHUTDOWN_GRACE_SECONDS
    while host.tasks and time.monotonic() < deadline:
        time.sleep(0.1)
    for run_id in list(host.tasks):
        services.run_fail(run_id=run_id, reason=F.ERROR,
                          detail="The worker executing this run was shut down mid-conversation. Safe to retry.")
    host.loop.call_soon_threadsafe(host.loop.stop)
