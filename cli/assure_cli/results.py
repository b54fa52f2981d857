"""What a batch means for CI: per path, its outcome over the repeats; for the batch, the exit code.

A path **passes** when at least one of its judged repeats passed (pass@k) and they agree; it is
**flaky** when they disagree (some passed, some failed or were inconclusive), which fails the job
only under ``--fail-on-flaky``; it **failed** when it was judged and no repeat passed. Runs the
platform could not test (``failed``, or ``cancelled`` by someone) are never agent failures: they
are counted apart and give exit code 4 when nothing else went wrong. A run that the product
retried automatically (another run of the batch names it in ``retry_of``) is replaced by its retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from assure_cli import exits

UNFINISHED = ("pending", "running")
NOT_TESTED = ("failed", "cancelled")


@dataclass
class Evidence:
    seq: int
    speaker: str = ""
    text: str = ""


@dataclass
class FailedCriterion:
    run: str
    name: str
    outcome: str
    rationale: str
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class PathOutcome:
    path: str | None
    name: str
    runs: list[dict]  # the batch's runs of this path, each as the runs list gives it, retried ones left out
    retried: int  # runs replaced by an automatic retry
    passes: int
    judged: int
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    failed_criteria: list[FailedCriterion]

    @property
    def unfinished(self) -> list[dict]:
        return [run for run in self.runs if run.get("status") in UNFINISHED]

    @property
    def not_tested(self) -> list[dict]:
        return [run for run in self.runs if run.get("status") in NOT_TESTED]

    @property
    def pass_at_k(self) -> bool | None:
        return self.passes > 0 if self.judged else None

    @property
    def pass_all_k(self) -> bool | None:
        return self.passes == self.judged if self.judged else None

    @property
    def flaky(self) -> bool:
        return 0 < self.passes < self.judged

    @property
    def failed(self) -> bool:
        return self.judged > 0 and self.passes == 0

    @property
    def duration_seconds(self) -> float:
        return sum(((run.get("metrics") or {}).get("duration_ms") or 0) for run in self.runs) / 1000

    def state(self, *, fail_on_flaky: bool) -> str:
        """``unfinished``; ``failed`` (no repeat passed, or flaky under ``--fail-on-flaky``);
        ``error`` (some runs could not be tested); ``flaky`` (passes the job); ``passed``."""
        if self.unfinished:
            return "unfinished"
        if self.failed or (self.flaky and fail_on_flaky):
            return "failed"
        if self.not_tested or not self.runs:
            return "error"
        return "flaky" if self.flaky else "passed"

    def failing_verdict(self) -> str:
        verdicts = {run.get("verdict") for run in self.runs if run.get("status") == "completed"}
        return "failed" if "failed" in verdicts else "inconclusive"


def path_outcomes(batch: dict, *, runs_by_id: dict[str, dict], details_by_id: dict[str, dict]) -> list[PathOutcome]:
    """One outcome per path of the batch detail. ``runs_by_id`` (the runs list of the batch) adds
    durations and failure details; ``details_by_id`` (run details) adds criteria and turn texts."""
    paths = batch.get("paths") or []
    retried = {str(run["retry_of"]) for path in paths for run in path.get("runs") or [] if run.get("retry_of")}
    outcomes = []
    for path in paths:
        runs = [{**run, **runs_by_id.get(str(run.get("id")), {})} for run in path.get("runs") or []]
        current = [run for run in runs if str(run.get("id")) not in retried]
        judged = [run for run in current if run.get("status") == "completed"]
        outcomes.append(PathOutcome(
            path=path.get("path"),
            name=str(path.get("name") or path.get("path") or "(deleted path)"),
            runs=current,
            retried=len(runs) - len(current),
            passes=sum(1 for run in judged if run.get("verdict") == "passed"),
            judged=len(judged),
            latency_ms_p50=path.get("latency_ms_p50"),
            latency_ms_p90=path.get("latency_ms_p90"),
            failed_criteria=_failed_criteria(path, current, details_by_id),
        ))
    return outcomes


def _failed_criteria(path: dict, runs: list[dict], details_by_id: dict[str, dict]) -> list[FailedCriterion]:
    """From each failing run's detail where we fetched it (with the evidence turns' words),
    otherwise from the batch detail's ``failed_criteria`` (turn numbers only)."""
    failing = [str(run.get("id")) for run in runs if run.get("status") == "completed" and run.get("verdict") != "passed"]
    listed: dict[str, list[dict]] = {}
    for item in path.get("failed_criteria") or []:
        listed.setdefault(str(item.get("run")), []).append(item)
    found = []
    for run_id in failing:
        detail = details_by_id.get(run_id)
        if detail is not None:
            turns = {turn.get("seq"): turn for turn in detail.get("turns") or []}
            for criterion in detail.get("criteria") or []:
                if criterion.get("outcome") == "passed":
                    continue
                found.append(FailedCriterion(
                    run=run_id, name=str(criterion.get("name", "")), outcome=str(criterion.get("outcome", "")),
                    rationale=str(criterion.get("rationale") or ""),
                    evidence=[_evidence(seq, turns) for seq in _seqs(criterion.get("evidence"))],
                ))
        else:
            for item in listed.get(run_id, []):
                found.append(FailedCriterion(
                    run=run_id, name=str(item.get("name", "")), outcome=str(item.get("outcome") or "failed"),
                    rationale=str(item.get("rationale") or ""),
                    evidence=[Evidence(seq=seq) for seq in _seqs(item.get("evidence"))],
                ))
    return found


def _seqs(evidence) -> list[int]:
    """Turn numbers from a criterion's evidence: a list of numbers, or of ``{"seq": n, ...}``."""
    seqs = []
    for item in evidence if isinstance(evidence, list) else []:
        value = item.get("seq") if isinstance(item, dict) else item
        if isinstance(value, int) and not isinstance(value, bool):
            seqs.append(value)
    return seqs


def _evidence(seq: int, turns: dict) -> Evidence:
    turn = turns.get(seq) or {}
    return Evidence(seq=seq, speaker=str(turn.get("speaker") or ""), text=str(turn.get("text") or ""))


def exit_code(outcomes: list[PathOutcome], *, fail_on_flaky: bool) -> int:
    if any(outcome.unfinished for outcome in outcomes):
        return exits.TIMEOUT
    if any(outcome.failed or (outcome.flaky and fail_on_flaky) for outcome in outcomes):
        return exits.FAILED
    if any(outcome.not_tested or not outcome.runs for outcome in outcomes):
        return exits.PLATFORM
    return exits.PASSED
