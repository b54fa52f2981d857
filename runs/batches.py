"""What a batch says: per path, over its repetitions, passes/total, pass@k, pass^k, flakiness,
platform failures and latency; the batch's summary; the comparison of two batches of a scenario;
a scenario's trend.

Read-only, and bounded: each function makes a fixed handful of queries whatever the batch's size
(100 paths × 100 repeats included), never one per run or per path. What they return is plain JSON
(ids and times as strings), so the API, the pages and the ``batch.finished`` webhook share it.

Words (DESIGN.md, "Public contract"):
- a run is *judged* when it completed (it has a verdict); ``failed`` runs are platform failures:
  counted apart, never agent failures, never a reason to call a path flaky;
- pass@k: at least one judged repetition of the path passed; pass^k: all of them did;
- flaky: repetitions of the same path snapshot disagree on the verdict (passed vs failed or
  inconclusive);
- latency: the target's response times (target turns with a latency) of the judged runs, pooled.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from uuid import UUID

from django.db.models import Count, Q, TextField
from django.db.models.functions import Cast

from runs import selectors
from runs.evaluation import percentile
from runs.models import Batch, CriterionResult, Run, Turn

COMPLETED = Run.Status.COMPLETED
PASSED = Run.Verdict.PASSED

# A path's failed criteria listed in a batch's detail; the rest are counted (a 100-repeat path
# failing everywhere would otherwise fill the answer with the same rationale).
FAILED_CRITERIA_PER_PATH = 20
# Texts quoted from runs (rationales, evidence turns) are cut here: a comparison quotes many.
QUOTE_LIMIT = 2000
EVIDENCE_TURNS_LIMIT = 20
TREND_BATCHES = 30

COUNT_KEYS = ("runs", "pending", "running", "completed", "failed", "cancelled", "passed", "failed_verdict",
              "inconclusive")


class NoComparison(Exception):
    """There is no batch to compare with (the first batch of a scenario), or the two batches cannot
    be compared (the same batch, or batches of different scenarios). The message says which."""


def _iso(value) -> str | None:
    # As DRF writes times everywhere else in the API.
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _rate(passes: int, total: int) -> float | None:
    return round(passes / total, 4) if total else None


def _quote(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "… [cut]"


def _evidence(value) -> list[int]:
    """Turn numbers a criterion relied on (the judge's list is data from a model: ints only)."""
    if not isinstance(value, list):
        return []
    return [seq for seq in value if isinstance(seq, int) and not isinstance(seq, bool)][:EVIDENCE_TURNS_LIMIT]


# Summaries ------------------------------------------------------------------------------------------

def _counts(batch_ids) -> dict:
    counts = {batch_id: dict.fromkeys(COUNT_KEYS, 0) for batch_id in batch_ids}
    rows = (Run.objects.filter(batch_id__in=batch_ids).order_by()
            .values_list("batch_id", "status", "verdict").annotate(n=Count("id")))
    verdict_keys = {"passed": "passed", "failed": "failed_verdict", "inconclusive": "inconclusive"}
    for batch_id, status, verdict, n in rows:
        batch_counts = counts[batch_id]
        batch_counts["runs"] += n
        batch_counts[status] += n
        if verdict in verdict_keys:
            batch_counts[verdict_keys[verdict]] += n
    return counts


def _judged_latencies(**run_filter):
    """(run id, batch id, latency) of every target turn with a latency, in judged runs."""
    return (Turn.objects.filter(speaker=Turn.Speaker.TARGET, latency_ms__isnull=False, run__status=COMPLETED,
                                **{f"run__{name}": value for name, value in run_filter.items()})
            .order_by().values_list("run_id", "run__batch_id", "latency_ms"))


def _schedules(batch_ids) -> dict:
    """{batch id: the id of the schedule that queued it}."""
    return {batch_id: str(schedule.pk) for batch_id, schedule in selectors.schedules_of_batches(batch_ids).items()}


def _summary(batch: Batch, counts: dict, latencies: list[int], schedule: str | None) -> dict:
    judged = counts["passed"] + counts["failed_verdict"] + counts["inconclusive"]
    return {
        "id": str(batch.pk),
        "scenario": str(batch.scenario_id) if batch.scenario_id else None,
        "scenario_name": batch.scenario.name if batch.scenario_id else None,
        "created_at": _iso(batch.created_at),
        "repeat": batch.repeat,
        "finished": counts["pending"] + counts["running"] == 0,
        "finished_at": _iso(batch.finished_at),
        "schedule": schedule,
        "counts": counts,
        "pass_rate": _rate(counts["passed"], judged),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p90": percentile(latencies, 90),
    }


def batch_summaries(batches) -> list[dict]:
    """The summaries of ``batches`` (load them with ``select_related("scenario")``), in their
    order, in three queries for any number of them."""
    batches = list(batches)
    ids = [batch.pk for batch in batches]
    counts = _counts(ids)
    latencies = defaultdict(list)
    for _, batch_id, latency in _judged_latencies(batch_id__in=ids):
        latencies[batch_id].append(latency)
    schedules = _schedules(ids)
    return [_summary(batch, counts[batch.pk], latencies[batch.pk], schedules.get(batch.pk)) for batch in batches]


def batch_summary(batch: Batch) -> dict:
    return batch_summaries([batch])[0]


def batches_of(workspace, *, scenario=None):
    """A workspace's batches, newest first (optionally one scenario's)."""
    batches = Batch.objects.for_workspace(workspace).select_related("scenario").order_by("-created_at", "-id")
    return batches.filter(scenario=scenario) if scenario is not None else batches


def previous_batch(batch: Batch) -> Batch | None:
    """The batch of the same scenario created just before ``batch``."""
    if batch.scenario_id is None:
        return None
    return (Batch.objects.filter(workspace_id=batch.workspace_id, scenario_id=batch.scenario_id,
                                 created_at__lt=batch.created_at)
            .select_related("scenario").order_by("-created_at", "-id").first())


def scenario_trend(scenario, *, limit: int = TREND_BATCHES) -> list[dict]:
    """The summaries of the scenario's latest ``limit`` batches, oldest first (a chart's x axis)."""
    latest = list(Batch.objects.filter(scenario=scenario).select_related("scenario").order_by("-created_at", "-id")[:limit])
    return batch_summaries(reversed(latest))


# Per path --------------------------------------------------------------------------------------------

@dataclass
class _Run:
    id: UUID
    path_key: str
    name: str
    status: str
    verdict: str | None
    failure_reason: str
    retry_of_id: UUID | None
    auto_retry: bool


@dataclass
class _PathStats:
    key: str
    name: str
    runs: list[_Run] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    flaky: bool = False
    superseded: set = field(default_factory=set)

    @property
    def judged(self) -> list[_Run]:
        return [run for run in self.runs if run.status == COMPLETED and run.verdict]

    @property
    def total(self) -> int:
        return len(self.judged)

    @property
    def passes(self) -> int:
        return sum(run.verdict == PASSED for run in self.judged)

    @property
    def platform_failures(self) -> int:
        # A run lost before its conversation began was retried automatically: its retry counts.
        return sum(run.status == Run.Status.FAILED and run.id not in self.superseded for run in self.runs)

    @property
    def state(self) -> str | None:
        """passing, failing or flaky; None when no repetition was judged."""
        if not self.total:
            return None
        if self.flaky:
            return "flaky"
        return "passing" if self.passes == self.total else "failing"

    def record(self) -> dict:
        return {"passes": self.passes, "total": self.total, "pass_rate": _rate(self.passes, self.total)}


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def _path_stats(batch: Batch) -> dict[str, _PathStats]:
    """{path key: its stats} in path order (the order of the batch's first round).

    Queries: the runs (without their snapshots); the latencies; and, only for paths whose
    repetitions disagree, those runs' snapshots (a disagreement across two snapshots of a path,
    edited between a run and a later retry, is not flakiness)."""
    runs = Run.objects.filter(batch=batch)
    rows = (runs.order_by("created_at", "id")
            .values_list("id", "path_id", "path__name", "status", "verdict", "failure_reason", "retry_of_id",
                         "auto_retry"))
    # A deleted path's runs keep its id and name in their snapshots (read only for those runs:
    # reading a key out of every snapshot is what made a large batch slow).
    deleted = {run_id: (str(path_id), name) for run_id, path_id, name in runs.filter(path__isnull=True).values_list(
        "id", "snapshot__path__id", "snapshot__path__name")}
    paths: dict[str, _PathStats] = {}
    by_run: dict[UUID, _PathStats] = {}
    superseded = set()
    for run_id, path_id, path_name, status, verdict, reason, retry_of_id, auto in rows:
        key, name = (str(path_id), path_name) if path_id else deleted.get(run_id, ("", ""))
        stats = paths.get(key) or paths.setdefault(key, _PathStats(key=key, name=name or "", superseded=superseded))
        stats.runs.append(_Run(run_id, key, stats.name, status, verdict, reason, retry_of_id, auto))
        by_run[run_id] = stats
        if auto and retry_of_id:
            superseded.add(retry_of_id)
    for run_id, _, latency in _judged_latencies(batch=batch):
        by_run[run_id].latencies.append(latency)
    disagreeing = {run.id: (stats.key, run.verdict == PASSED) for stats in paths.values()
                   if len({run.verdict == PASSED for run in stats.judged}) > 1 for run in stats.judged}
    if disagreeing:
        verdicts_by_snapshot = defaultdict(set)
        keys = {key for key, _ in disagreeing.values()}
        # Snapshots compared as stored text, hashed: decoding thousands of them is what costs. (Runs
        # of one batch share their snapshot's text: it is written once per path, by one service.)
        snapshots = (Run.objects.filter(batch=batch, status=COMPLETED)
                     .filter(Q(path_id__in=[key for key in keys if _is_uuid(key)]) | Q(path_id__isnull=True))
                     .annotate(snapshot_text=Cast("snapshot", TextField()))
                     .order_by().values_list("id", "snapshot_text"))
        for run_id, snapshot_text in snapshots.iterator(chunk_size=500):
            if run_id in disagreeing:
                key, passed = disagreeing[run_id]
                verdicts_by_snapshot[(key, hashlib.sha256(snapshot_text.encode()).digest())].add(passed)
        for (key, _), verdicts in verdicts_by_snapshot.items():
            if len(verdicts) > 1:
                paths[key].flaky = True
    return paths


def _failed_criteria(batch: Batch, paths: dict[str, _PathStats]) -> tuple[dict, dict]:
    """({path key: its first failed criteria}, {path key: how many failed}) over the judged runs."""
    path_of_run = {run.id: stats.key for stats in paths.values() for run in stats.runs}
    failing = (CriterionResult.objects.filter(run__batch=batch, run__status=COMPLETED).exclude(outcome=PASSED)
               .order_by("run__created_at", "run_id", "position").values_list("id", "run_id"))
    totals: dict[str, int] = defaultdict(int)
    chosen = []
    for result_id, run_id in failing:
        key = path_of_run[run_id]
        totals[key] += 1
        if totals[key] <= FAILED_CRITERIA_PER_PATH:
            chosen.append(result_id)
    listed = defaultdict(list)
    for run_id, name, outcome, rationale, evidence in (
        CriterionResult.objects.filter(pk__in=chosen)
        .order_by("run__created_at", "run_id", "position")
        .values_list("run_id", "name", "outcome", "rationale", "evidence")
    ):
        listed[path_of_run[run_id]].append({"run": str(run_id), "name": name, "outcome": outcome,
                                            "rationale": _quote(rationale), "evidence": _evidence(evidence)})
    return listed, totals


def batch_detail(batch: Batch) -> dict:
    """The summary plus, per path: its runs, passes/total, pass@k, pass^k, flaky, platform
    failures, latency p50/p90 and its first failed criteria (``failed_criteria_total`` counts all)."""
    paths = _path_stats(batch)
    failed, failed_totals = _failed_criteria(batch, paths)
    pooled = [latency for stats in paths.values() for latency in stats.latencies]
    detail = _summary(batch, _counts([batch.pk])[batch.pk], pooled, _schedules([batch.pk]).get(batch.pk))
    detail["paths"] = [
        {
            "path": stats.key,
            "name": stats.name,
            "runs": [{"id": str(run.id), "status": run.status, "verdict": run.verdict,
                      "failure_reason": run.failure_reason or None,
                      "retry_of": str(run.retry_of_id) if run.retry_of_id else None,
                      "auto_retry": run.auto_retry} for run in stats.runs],
            "total": stats.total,
            "passes": stats.passes,
            "pass_rate": _rate(stats.passes, stats.total),
            "pass_at_k": stats.passes > 0 if stats.total else None,
            "pass_all_k": stats.passes == stats.total if stats.total else None,
            "flaky": stats.flaky,
            "platform_failures": stats.platform_failures,
            "latency_ms_p50": percentile(stats.latencies, 50),
            "latency_ms_p90": percentile(stats.latencies, 90),
            "failed_criteria": failed.get(stats.key, []),
            "failed_criteria_total": failed_totals.get(stats.key, 0),
        }
        for stats in paths.values()
    ]
    return detail


# Comparison ------------------------------------------------------------------------------------------

CHANGE_GROUPS = ("newly_failing", "fixed", "still_failing", "flaky", "unchanged_passing")


def _group(before: str, after: str) -> str:
    if after == "flaky":
        return "flaky"
    if after == "passing":
        return "unchanged_passing" if before == "passing" else "fixed"
    return "still_failing" if before == "failing" else "newly_failing"


def _criteria_changes(sides: dict[str, dict[str, _PathStats]], keys: list[str]) -> dict[str, list[dict]]:
    """{path key: [each criterion, before and after side by side]} for the paths ``keys``.

    Each side shows one run's result: the first repetition where the criterion did not pass (the
    one worth reading), else the first; ``outcomes`` counts every judged repetition's outcome.
    Queries: every criterion's outcome in those paths' judged runs (no texts); the chosen results'
    rationale and evidence; the evidence turns."""
    run_side = {}
    for side, paths in sides.items():
        for key in keys:
            for run in paths[key].judged:
                run_side[run.id] = (side, key)
    if not run_side:
        return {}
    outcomes = defaultdict(lambda: defaultdict(int))  # (side, key, name) -> {outcome: n}
    chosen: dict[tuple, tuple] = {}  # (side, key, name) -> (result id, outcome)
    order: dict[str, list[str]] = defaultdict(list)  # key -> criterion names, in position order
    rows = (CriterionResult.objects.filter(run_id__in=list(run_side)).order_by("run__created_at", "run_id", "position")
            .values_list("id", "run_id", "name", "outcome"))
    for result_id, run_id, name, outcome in rows.iterator(chunk_size=2000):
        side, key = run_side[run_id]
        slot = (side, key, name)
        outcomes[slot][outcome] += 1
        if name not in order[key]:
            order[key].append(name)
        if slot not in chosen or (chosen[slot][1] == PASSED and outcome != PASSED):
            chosen[slot] = (result_id, outcome)
    texts = {
        result_id: (run_id, outcome, rationale, _evidence(evidence))
        for result_id, run_id, outcome, rationale, evidence in CriterionResult.objects.filter(
            pk__in=[result_id for result_id, _ in chosen.values()]).values_list(
            "id", "run_id", "outcome", "rationale", "evidence")
    }
    wanted = {(run_id, seq) for run_id, _, _, evidence in texts.values() for seq in evidence}
    turns = {}
    if wanted:
        for run_id, seq, speaker, text in Turn.objects.filter(
                run_id__in={run_id for run_id, _ in wanted}, seq__in={seq for _, seq in wanted}).order_by().values_list(
                "run_id", "seq", "speaker", "text"):
            if (run_id, seq) in wanted:
                turns[(run_id, seq)] = {"seq": seq, "speaker": speaker, "text": _quote(text)}

    def side_of(side: str, key: str, name: str) -> dict | None:
        slot = (side, key, name)
        if slot not in chosen:
            return None  # the criterion did not exist on this side
        run_id, outcome, rationale, evidence = texts[chosen[slot][0]]
        return {"outcome": outcome, "rationale": _quote(rationale), "run": str(run_id),
                "evidence_turns": [turns[(run_id, seq)] for seq in evidence if (run_id, seq) in turns],
                "outcomes": dict(outcomes[slot])}

    return {key: [{"name": name, "before": side_of("before", key, name), "after": side_of("after", key, name)}
                  for name in order[key]] for key in keys}


def batch_compare(batch: Batch, to: Batch | None = None) -> dict:
    """What changed from ``to`` (by default the previous batch of the same scenario) to ``batch``.

    Each path in both batches with judged runs on both sides falls in one group: ``flaky`` (flaky
    now), ``fixed`` / ``unchanged_passing`` (every repetition passes now; it did not / it did
    before), ``still_failing`` / ``newly_failing`` (some repetition fails now; every one failed
    before / not every one did). Changed paths carry each criterion before and after with its
    evidence turns; ``latency`` lists every path's p50/p90 before and after; ``not_compared`` the
    paths found on one side only, or with no judged run on a side. Raises ``NoComparison``."""
    if to is None:
        to = previous_batch(batch)
        if to is None:
            raise NoComparison("This is the first batch of its scenario: there is no earlier batch to compare it with.")
    if to.pk == batch.pk:
        raise NoComparison("A batch compared with itself shows nothing: pick another batch of the same scenario.")
    if to.workspace_id != batch.workspace_id or to.scenario_id != batch.scenario_id or batch.scenario_id is None:
        raise NoComparison("Only two batches of the same scenario can be compared.")
    before, after = _path_stats(to), _path_stats(batch)
    result = {"batch": str(batch.pk), "to": str(to.pk), **{group: [] for group in CHANGE_GROUPS},
              "latency": [], "not_compared": []}
    grouped = []
    for key in list(after) + [key for key in before if key not in after]:
        was, now = before.get(key), after.get(key)
        if was is None or now is None:
            result["not_compared"].append({"path": key, "name": (now or was).name,
                                           "reason": "not in the earlier batch" if was is None else "not in this batch"})
            continue
        result["latency"].append({"path": key, "name": now.name,
                                  "p50_before": percentile(was.latencies, 50), "p50_after": percentile(now.latencies, 50),
                                  "p90_before": percentile(was.latencies, 90), "p90_after": percentile(now.latencies, 90)})
        if was.state is None or now.state is None:
            side = "the earlier batch" if was.state is None else "this batch"
            result["not_compared"].append({"path": key, "name": now.name, "reason": f"no judged run in {side}"})
            continue
        grouped.append((_group(was.state, now.state), key))
    changed = [key for group, key in grouped if group != "unchanged_passing"]
    criteria = _criteria_changes({"before": {key: before[key] for key in changed},
                                  "after": {key: after[key] for key in changed}}, changed)
    for group, key in grouped:
        result[group].append({"path": key, "name": after[key].name, "before": before[key].record(),
                              "after": after[key].record(), "criteria": criteria.get(key, [])})
    return result
