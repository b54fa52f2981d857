"""A batch as a JUnit XML report: one ``<testsuite>`` for the batch, one ``<testcase>`` per path.

A path that failed carries a ``<failure>`` listing its failed criteria with their rationale and
evidence turns; runs the platform could not test are an ``<error>`` (never a failure); runs still
going when the client stopped waiting are an ``<error type="timeout">``. The repeats and their
pass@k / pass^k / flaky figures are the test case's ``<properties>`` (as pytest's
``record_property`` writes them, which CI test reporters read), and the suite's properties name
the batch.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from assure_cli.results import PathOutcome

# Characters XML 1.0 cannot hold at all; a transcript may contain them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
LONGEST_QUOTE = 500


def clean(text) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def quote(text: str) -> str:
    """One line of at most ``LONGEST_QUOTE`` characters, for a report or the terminal."""
    text = " ".join(clean(text).split())
    return text if len(text) <= LONGEST_QUOTE else text[: LONGEST_QUOTE - 1] + "\u2026"


def _flag(value: bool | None) -> str:
    return "none" if value is None else str(value).lower()


def _properties(parent: ET.Element, items: list[tuple[str, object]]) -> None:
    properties = ET.SubElement(parent, "properties")
    for name, value in items:
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=clean(value))


def failure_text(outcome: PathOutcome, run_url) -> str:
    lines = []
    by_run: dict[str, list] = {}
    for criterion in outcome.failed_criteria:
        by_run.setdefault(criterion.run, []).append(criterion)
    for run in outcome.runs:
        run_id = str(run.get("id"))
        if run.get("status") != "completed" or run.get("verdict") == "passed":
            continue
        lines.append(f"run {run_id} ({run.get('verdict')}): {run_url(run_id)}")
        for criterion in by_run.get(run_id, []):
            lines.append(f"  {criterion.name}: {criterion.outcome}")
            if criterion.rationale:
                lines.append(f"    {quote(criterion.rationale)}")
            for evidence in criterion.evidence:
                said = f" ({evidence.speaker}): {quote(evidence.text)}" if evidence.speaker or evidence.text else ""
                lines.append(f"    evidence: turn {evidence.seq}{said}")
    return "\n".join(lines)


def not_tested_text(outcome: PathOutcome, run_url) -> str:
    lines = []
    for run in outcome.not_tested:
        reason = run.get("failure_reason") or run.get("status")
        detail = run.get("failure_detail") or ""
        lines.append(f"run {run.get('id')} ({run.get('status')}, {reason}): {run_url(str(run.get('id')))}")
        if detail:
            lines.append(f"  {quote(detail)}")
    return "\n".join(lines)


def not_tested_message(outcome: PathOutcome) -> str:
    reasons = sorted({str(run.get("failure_reason") or run.get("status")) for run in outcome.not_tested})
    return f"{len(outcome.not_tested)} of {len(outcome.runs)} runs could not be tested: {', '.join(reasons)}"


def failure_message(outcome: PathOutcome) -> str:
    names = list(dict.fromkeys(criterion.name for criterion in outcome.failed_criteria))
    head = f"{outcome.passes} of {outcome.judged} repeats passed" if outcome.judged > 1 else outcome.failing_verdict()
    if outcome.flaky:
        head = "flaky: " + head
    return head + (f"; failed criteria: {', '.join(names)}" if names else "")


def report(batch: dict, outcomes: list[PathOutcome], *, fail_on_flaky: bool, run_url) -> ET.ElementTree:
    scenario = str(batch.get("scenario_name") or batch.get("scenario") or "scenario")
    states = [outcome.state(fail_on_flaky=fail_on_flaky) for outcome in outcomes]
    failures = states.count("failed")
    errors = sum(state in ("error", "unfinished") for state in states)
    duration = f"{sum(outcome.duration_seconds for outcome in outcomes):.3f}"
    root = ET.Element("testsuites", name="AssureAgent", tests=str(len(outcomes)), failures=str(failures),
                      errors=str(errors), time=duration)
    suite = ET.SubElement(root, "testsuite", name=clean(scenario), tests=str(len(outcomes)), failures=str(failures),
                          errors=str(errors), skipped="0", time=duration,
                          timestamp=clean(str(batch.get("created_at") or "")[:19]))
    _properties(suite, [("batch", batch.get("id")), ("scenario", batch.get("scenario")),
                        ("repeat", batch.get("repeat")), ("pass_rate", batch.get("pass_rate")),
                        ("latency_ms_p50", batch.get("latency_ms_p50")), ("latency_ms_p90", batch.get("latency_ms_p90"))])
    for outcome, state in zip(outcomes, states):
        case = ET.SubElement(suite, "testcase", classname=clean(scenario), name=clean(outcome.name),
                             time=f"{outcome.duration_seconds:.3f}")
        _properties(case, [
            ("path", outcome.path), ("repeat", len(outcome.runs)), ("judged", outcome.judged),
            ("passes", outcome.passes), ("pass_at_k", _flag(outcome.pass_at_k)),
            ("pass_all_k", _flag(outcome.pass_all_k)), ("flaky", _flag(outcome.flaky)),
            ("platform_failures", len(outcome.not_tested)), ("retried", outcome.retried),
            ("latency_ms_p50", outcome.latency_ms_p50), ("latency_ms_p90", outcome.latency_ms_p90),
        ])
        if state == "unfinished":
            element = ET.SubElement(case, "error", type="timeout",
                                    message=f"{len(outcome.unfinished)} of {len(outcome.runs)} runs were still going "
                                            "when the client stopped waiting")
            element.text = clean("\n".join(f"run {run.get('id')} ({run.get('status')}): {run_url(str(run.get('id')))}"
                                           for run in outcome.unfinished))
        elif state == "failed":
            element = ET.SubElement(case, "failure", type="flaky" if not outcome.failed else outcome.failing_verdict(),
                                    message=clean(failure_message(outcome)))
            element.text = clean("\n\n".join(filter(None, [failure_text(outcome, run_url),
                                                           not_tested_text(outcome, run_url)])))
        elif state == "error":
            message = not_tested_message(outcome) if outcome.runs else "the path has no runs in this batch"
            reasons = {str(run.get("failure_reason") or run.get("status")) for run in outcome.not_tested}
            element = ET.SubElement(case, "error", type=reasons.pop() if len(reasons) == 1 else "platform_failure",
                                    message=clean(message))
            element.text = clean(not_tested_text(outcome, run_url))
        log = "\n".join(f"run {run.get('id')}: {run.get('status')}"
                        + (f", {run.get('verdict')}" if run.get("verdict") else "")
                        + (f", {run.get('failure_reason')}" if run.get("failure_reason") else "")
                        + f" {run_url(str(run.get('id')))}" for run in outcome.runs)
        if outcome.flaky and state != "failed":
            # A flaky path that does not fail the job still shows what went wrong in its repeats.
            log = f"flaky: {outcome.passes} of {outcome.judged} repeats passed\n{failure_text(outcome, run_url)}\n\n{log}"
        ET.SubElement(case, "system-out").text = clean(log)
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: str, batch: dict, outcomes: list[PathOutcome], *, fail_on_flaky: bool, run_url) -> None:
    report(batch, outcomes, fail_on_flaky=fail_on_flaky, run_url=run_url).write(path, encoding="utf-8",
                                                                                 xml_declaration=True)
