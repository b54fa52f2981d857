"""The life of a run's execution, in three services that do not care where they run:

- ``materialize``: claim the admitted run, load it, compose the persona, check preconditions →
  a ``PreparedRun``;
- ``converse``: any caller against any target connection, recorded, under the duration cap →
  an ``Outcome``;
- ``finalize``: close the transcript, evaluate the success criteria, store verdict and metrics.

How a conversation begins depends on the channel. Each channel has a ``ChannelDriver``: chat's
driver converses right where the run was materialized (a worker's conversation loop); voice's
driver (registered by the telephony app) places the call or arms an inbound number, and the
conversation attaches later, wherever the call's ConversationRelay websocket lands (``attach``).
Whatever goes wrong raises a ``RunFailure`` carrying its failure reason; ``fail_with`` is the one
place that turns it into the run's ``failed`` transition.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from runs import known, services
from runs.connectors import ConnectionContext, ConnectorError, TargetConnection, TargetUnreachable, connection_for
from runs.engine import Clock, Outcome, ScriptedCaller
from runs.evaluation import evaluate
from runs.failures import DurationCapReached, PlatformError, RunFailure, TargetUnreachableFailure, ToolSyncPending
from runs.inserts import insert_many
from runs.llm_caller import CallerError, Function, LLMCaller
from runs.models import CriterionResult, Run, ToolInvocation, Turn
from runs.recorder import TRANSCRIPT_TOOL_KEYS, TRANSCRIPT_TURN_KEYS, DbRecorder, capped_text, db
from runs.writer import writer
from scenarios.models import CustomFunction, Target, url_origin

logger = logging.getLogger(__name__)

DEFAULT_CAP_SECONDS = 300


@dataclass
class PreparedRun:
    """Everything a conversation needs, loaded once when the run is materialized or attached."""

    run_id: str
    snapshot: dict
    persona: str
    llm: dict
    functions: list[Function] = field(default_factory=list)
    secrets: dict = field(default_factory=dict)  # the live target's headers (never snapshotted)

    @property
    def channel(self) -> str:
        return self.snapshot["scenario"]["channel"]

    @property
    def direction(self) -> str:
        return self.snapshot["scenario"].get("direction") or "outbound"

    @property
    def script(self) -> list[dict]:
        return self.snapshot["path"].get("script") or []

    @property
    def cap_seconds(self) -> int:
        return self.snapshot["agent"].get("max_duration_seconds") or DEFAULT_CAP_SECONDS

    @property
    def criteria(self) -> list[dict]:
        return list(self.snapshot["scenario"].get("criteria") or []) + list(self.snapshot["path"].get("criteria") or [])


class ChannelDriver(ABC):
    """How the conversations of one channel begin and are stopped."""

    @abstractmethod
    async def start(self, prepared: PreparedRun, *, http) -> None:
        """Take a materialized run live (in the worker that materialized it). Raises ``RunFailure``."""

    def stop(self, run_id: str) -> None:
        """The run ended (cancelled, failed, completed): release what it holds outside the database
        (hang up its call, free its number). Runs in a Celery worker; idempotent."""

    def never_attached(self, run_id: str, *, direction: str, window) -> tuple[str, str]:
        """Why a run that waited for its conversation to attach never got one: (failure reason,
        detail). The sweep asks once ``attach_by`` has passed."""
        if direction == "inbound":
            return (Run.FailureReason.INBOUND_TIMEOUT,
                    f"No call arrived on the reserved number within the scenario's {window}s window.")
        return (Run.FailureReason.TARGET_UNREACHABLE,
                "The call was never answered, and the telephony provider did not say why.")


class ChatDriver(ChannelDriver):
    """A chat session opens and the whole conversation runs right here."""

    async def start(self, prepared: PreparedRun, *, http) -> None:
        if not await writer().call(services.run_go_live, run_id=prepared.run_id, persona=prepared.persona):
            return
        context = ConnectionContext(session_id=prepared.run_id, http=http, secrets=prepared.secrets)
        try:
            connection = connection_for(prepared.snapshot["target"], context)
        except ConnectorError as exc:
            raise PlatformError(str(exc)) from None
        outcome = await converse(prepared, connection, http=http)
        await finalize(prepared, outcome)


_DRIVERS: dict[str, ChannelDriver] = {"chat": ChatDriver()}


def register_driver(channel: str, driver: ChannelDriver) -> None:
    _DRIVERS[channel] = driver


def driver_for(channel: str) -> ChannelDriver:
    driver = _DRIVERS.get(channel)
    if driver is None:
        raise PlatformError(f"No driver for {channel} runs is installed in this deployment.")
    return driver


# Materialize -----------------------------------------------------------------------------------

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


TARGET_CHANGED = ("The target's URL or secret headers changed after this run was queued; retry it to use the "
                  "current target.")


def secrets_belong_to_snapshot(snapshot_target: dict, live_target: Target) -> bool:
    """Whether the live target's headers are the ones, for the same host, the run was queued with."""
    queued = snapshot_target.get("secrets_fingerprint")
    if queued is None:
        # Queued before runs recorded a fingerprint: only the host can be compared.
        return url_origin(snapshot_target.get("url") or "") == url_origin(live_target.url)
    return hmac.compare_digest(queued, live_target.secrets_fingerprint())


def load_prepared(run_id) -> PreparedRun | None:
    """The run with its live secrets and functions; raises ``ToolSyncPending`` for unsynced functions and
    ``PlatformError`` when the target's host or headers changed since the run was queued."""
    prepared = load_prepared_many([run_id]).get(str(run_id))
    if isinstance(prepared, Exception):
        raise prepared
    return prepared


def load_prepared_many(run_ids) -> dict[str, PreparedRun | RunFailure]:
    """``load_prepared`` for several runs in two queries: {run id: its PreparedRun, or the failure
    that keeps it from running}; a run that is gone is left out."""
    # .order_by(): no default ordering to compile on this hot path.
    runs = list(Run.objects.select_related("scenario__agent", "scenario__target")
                .filter(pk__in=list(run_ids)).order_by())
    agent_ids = {run.scenario.agent_id for run in runs if run.scenario is not None and run.scenario.agent_id}
    functions_of = defaultdict(list)
    for function in CustomFunction.objects.filter(agent_id__in=agent_ids).order_by() if agent_ids else ():
        functions_of[function.agent_id].append(function)
    prepared = {}
    for run in runs:
        known.remember(run)  # its stage changes publish, and its end is followed up, without a query
        try:
            prepared[str(run.pk)] = _prepared(run, functions_of)
        except RunFailure as failure:
            prepared[str(run.pk)] = failure
    return prepared


def _prepared(run: Run, functions_of: dict) -> PreparedRun:
    scenario = run.scenario
    live_target = scenario.target if scenario else None
    agent = scenario.agent if scenario else None
    unsynced, functions = [], []
    for function in functions_of.get(agent.pk, ()) if agent is not None else ():
        if function.sync_status != "synced":
            unsynced.append(f"{function.name} ({function.sync_status})")
        functions.append(Function(name=function.name, description=function.description,
                                  parameters=function.parameters, url=function.url, secret=function.secret))
    if unsynced:
        raise ToolSyncPending(f"These custom functions of the agent have not synced: {', '.join(unsynced)}. Check "
                              "the Functions panel banner; click Retry if it's red.")
    if live_target is not None and not secrets_belong_to_snapshot(run.snapshot["target"], live_target):
        # The run talks to the snapshotted URL: the live headers belong to another host, or are not
        # the ones queued with it. Sending them would be sending credentials where nobody chose to.
        raise PlatformError(TARGET_CHANGED)
    return PreparedRun(
        run_id=str(run.pk),
        snapshot=run.snapshot,
        persona=run.persona or compose_persona(run.snapshot),
        secrets=dict(live_target.headers) if live_target else {},
        functions=functions,
        llm=llm_settings(agent),
    )


def llm_settings(agent) -> dict:
    """The LLM endpoint of the caller and the judge. The server's key goes only to the server's
    endpoint: an agent with its own endpoint uses its own key, or none (never the operator's)."""
    own_base_url = agent.llm_base_url if agent is not None else ""
    own_key = agent.llm_api_key if agent is not None else ""
    if own_base_url and own_base_url.rstrip("/") != (settings.LLM_BASE_URL or "").rstrip("/"):
        base_url, api_key = own_base_url, own_key
    else:
        base_url, api_key = settings.LLM_BASE_URL, own_key or settings.LLM_API_KEY
    return {"base_url": base_url, "api_key": api_key or "",
            "model": (agent.llm_model if agent is not None and agent.llm_model else settings.LLM_MODEL)}


def _claim_and_load(claims: list[tuple[str, str]]) -> list[PreparedRun | RunFailure | None]:
    """Claim and load each (run id, worker) of ``claims``: a handful of statements for all of them,
    where each run made four. None for a run another executor has, or that was cancelled meanwhile."""
    claimed = {}
    for worker in dict.fromkeys(worker for _, worker in claims):
        claimed.update(dict.fromkeys(services.run_claim_many(
            run_ids=[run_id for run_id, by in claims if by == worker], worker=worker)))
    try:
        prepared = load_prepared_many(claimed) if claimed else {}
    except DatabaseError:
        raise
    except Exception:  # one run's secret unreadable, say: load each alone, so only its runs fail
        prepared = {}
        for run_id in claimed:
            try:
                prepared.update(load_prepared_many([run_id]))
            except DatabaseError:
                raise
            except Exception as exc:
                prepared[run_id] = exc
    return [prepared.get(str(run_id)) if str(run_id) in claimed else None for run_id, _ in claims]


async def materialize(run_id, *, worker: str) -> PreparedRun | None:
    """Claim an admitted run and prepare it; None when another executor has it or it is gone. The
    runs a loop materializes at once are claimed and loaded together (``runs.writer``)."""
    prepared = await writer().call_together(_claim_and_load, (str(run_id), worker))
    if prepared is not None and not prepared.script and not prepared.llm.get("base_url"):
        raise PlatformError(
            "This path has no script, so it needs the LLM caller, and no LLM provider is configured: set "
            "LLM_BASE_URL (and LLM_API_KEY, LLM_MODEL) on the server, or an LLM endpoint on the agent."
        )
    return prepared


# Converse --------------------------------------------------------------------------------------

def caller_for(prepared: PreparedRun, *, http):
    if prepared.script:
        return ScriptedCaller(prepared.script)
    try:
        return LLMCaller(persona=prepared.persona, language=prepared.snapshot["agent"].get("language", "en-US"),
                         llm=prepared.llm, functions=prepared.functions, channel=prepared.channel,
                         http=http, run_id=prepared.run_id)
    except CallerError as exc:
        raise PlatformError(str(exc)) from None


async def converse(prepared: PreparedRun, connection: TargetConnection, *, http,
                   recorder: DbRecorder | None = None) -> Outcome:
    """The conversation, recorded turn by turn, ended at the agent's duration cap. Closes ``connection``.

    A connection that records events of its own (a call's interruptions) shares ``recorder``, so
    both number their rows from one sequence."""
    cap = prepared.cap_seconds
    try:
        caller = caller_for(prepared, http=http)
        recorder = recorder or DbRecorder(prepared.run_id)
        outcome = await asyncio.wait_for(caller.converse(connection, recorder, Clock()), timeout=cap)
        await recorder.settled()  # the target's last reply, which nothing after it waited for
        outcome.recorder = recorder
        return outcome
    except TargetUnreachable as exc:
        what = "phone number and that it is accepting calls" if prepared.channel == "voice" else (
            "URL and that the system is accepting sessions")
        raise TargetUnreachableFailure(f"{exc}. Check the target's {what}.") from None
    except CallerError as exc:
        raise PlatformError(str(exc)) from None
    except asyncio.TimeoutError:
        raise DurationCapReached(f"The conversation was still going after the agent's {cap}s cap. Raise the cap on "
                                 "the agent, or add tighter end conditions to the scenario description.") from None
    finally:
        try:
            await connection.close()
        except Exception:  # closing a broken session must not mask how the run ended
            logger.debug("closing the target connection of run %s failed", prepared.run_id, exc_info=True)


# Finalize --------------------------------------------------------------------------------------

RESULT_FIELDS = ("position", "name", "kind", "outcome", "rationale", "evidence", "judge_prompt", "judge_answer")


def _complete(run_id, results, *, verdict: str, metrics: dict) -> bool:
    """Complete the run and store its criteria's results, in one transaction. Only the change that
    completes the run stores them, so a run never holds two sets."""
    with transaction.atomic(savepoint=False):
        if not services.run_complete(run_id=run_id, verdict=verdict, metrics=metrics):
            return False
        insert_many(CriterionResult, RESULT_FIELDS, [(run_id, {
            "position": i, "name": r.name, "kind": r.kind, "outcome": r.outcome, "rationale": r.rationale,
            "evidence": r.evidence, "judge_prompt": capped_text(r.judge_prompt),
            "judge_answer": capped_text(r.judge_answer)}) for i, r in enumerate(results)])
    return True


def _transcript(run_id) -> tuple[list[dict], list[dict]]:
    turns = list(Turn.objects.filter(run_id=run_id).order_by("seq").values(*TRANSCRIPT_TURN_KEYS))
    tools = list(ToolInvocation.objects.filter(run_id=run_id).order_by("seq").values(*TRANSCRIPT_TOOL_KEYS))
    return turns, tools


async def finalize(prepared: PreparedRun, outcome: Outcome) -> None:
    """Close the transcript, evaluate the criteria, and complete the run with its verdict. The
    transcript evaluated is the one the conversation's recorder saved (``converse``)."""
    if not await writer().call(services.run_finalize, run_id=prepared.run_id):
        return  # no longer live: cancelled, or ended by the sweep
    # Rows recorded after the conversation (a call's interruption heard while hanging up) have
    # landed or been refused once this returns: no row lands once the run is finalizing.
    recorder = outcome.recorder
    await recorder.drained()
    transcript = recorder.transcript()
    turns, tools = transcript if transcript is not None else await db(_transcript, prepared.run_id)
    results, verdict, metrics = await evaluate(
        prepared.criteria, turns=turns, tools=tools, ended_by=outcome.ended_by, duration_ms=outcome.duration_ms,
        expectation_failures=outcome.expectation_failures, scripted=bool(prepared.script), llm=prepared.llm,
        caller_tokens=outcome.caller_tokens,
    )
    await writer().call(_complete, prepared.run_id, results, verdict=verdict, metrics=metrics)


# Entry points ----------------------------------------------------------------------------------

def fail_with(run_id, failure: RunFailure) -> bool:
    return services.run_fail(run_id=run_id, reason=failure.reason, detail=failure.detail)


async def guarded(run_id, coroutine) -> None:
    """Await ``coroutine``; a ``RunFailure`` or any unexpected error ends the run as ``failed``."""
    try:
        await coroutine
    except asyncio.CancelledError:
        raise  # the holder saw the run end elsewhere; the finally blocks closed the session
    except RunFailure as failure:
        await db(fail_with, run_id, failure)
    except Exception as exc:
        logger.exception("run %s failed with an unexpected error", run_id)
        await db(fail_with, run_id, PlatformError(f"Unexpected {type(exc).__name__}: {exc}. Safe to retry."))


async def execute(run_id, *, worker: str, http) -> None:
    """Run one admitted run in a worker: materialize it, then let its channel's driver take it live."""

    async def steps():
        prepared = await materialize(run_id, worker=worker)
        if prepared is not None:
            await driver_for(prepared.channel).start(prepared, http=http)

    await guarded(run_id, steps())


def claim_attachment(run_id, *, holder: str) -> bool:
    """The conversation of a live run that waited for it (a call) attaches to ``holder``; once."""
    now = timezone.now()
    return Run.objects.filter(pk=run_id, status=Run.Status.RUNNING, stage=Run.Stage.LIVE, worker="").update(
        worker=holder, heartbeat_at=now, attached_at=now, attach_by=None) == 1


async def attach(run_id, *, holder: str) -> PreparedRun | None:
    """Claim a waiting live run for the conversation arriving now; None if it is not waiting, or
    if it can no longer run as queued (it then ends as ``failed`` with the reason)."""
    if not await db(claim_attachment, run_id, holder=holder):
        return None
    try:
        return await db(load_prepared, run_id)
    except RunFailure as failure:
        await db(fail_with, run_id, failure)
        return None


async def converse_attached(prepared: PreparedRun, connection: TargetConnection, *, http,
                            recorder: DbRecorder | None = None, on_ended=None) -> None:
    """The attached conversation to its end, then finalize; failures end the run as ``failed``.
    ``on_ended(finished)`` (a coroutine function) records how the session ended before the run can
    finish; ``finished`` is False when the platform cut the conversation short (the cap, a cancel,
    a failure), so a call it hangs up is not put down to our caller."""

    async def steps():
        finished = False
        try:
            outcome = await converse(prepared, connection, http=http, recorder=recorder)
            finished = True
        finally:
            if on_ended is not None:
                await on_ended(finished)
        await finalize(prepared, outcome)

    await guarded(prepared.run_id, steps())
