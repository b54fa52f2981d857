"""Success criteria and the verdict."""

import asyncio

import pytest

from runs.evaluation import check, evaluate, metrics_of, percentile
from tests.fakes import FakeOpenAI

TURNS = [
    {"seq": 1, "speaker": "caller", "text": "Hi, book me for Tuesday", "latency_ms": None, "started_ms": 0},
    {"seq": 2, "speaker": "target", "text": "You're booked for 10am.", "latency_ms": 120, "started_ms": 150},
    {"seq": 3, "speaker": "caller", "text": "Thanks", "latency_ms": None, "started_ms": 300},
    {"seq": 4, "speaker": "target", "text": "Goodbye!", "latency_ms": 900, "started_ms": 1250},
]
TOOLS = [{"seq": 1, "name": "book_slot", "arguments": {"day": "Tue", "time": "10am"}}, {"seq": 2, "name": "end_call", "arguments": {}}]


def judge_one(criterion, ended_by="caller"):
    return check({"name": "c", **criterion}, turns=TURNS, tools=TOOLS, ended_by=ended_by,
                 metrics=metrics_of(TURNS, 1300))


@pytest.mark.parametrize("criterion,outcome,evidence", [
    ({"kind": "contains", "speaker": "target", "text": "BOOKED"}, "passed", [2]),
    ({"kind": "contains", "speaker": "target", "text": "BOOKED", "case_sensitive": True}, "failed", []),
    ({"kind": "contains", "speaker": "caller", "text": "booked"}, "failed", []),
    ({"kind": "regex", "speaker": "target", "pattern": r"\b10 ?am\b"}, "passed", [2]),
    ({"kind": "tool_called", "tool": "book_slot", "arguments": {"day": "Tue"}}, "passed", []),
    ({"kind": "tool_called", "tool": "book_slot", "arguments": {"day": "Wed"}}, "failed", []),
    ({"kind": "tool_not_called", "tool": "transfer"}, "passed", []),
    ({"kind": "tool_not_called", "tool": "end_call"}, "failed", []),
    ({"kind": "ended_by", "speaker": "caller"}, "passed", []),
    ({"kind": "ended_by", "speaker": "target"}, "failed", []),
    ({"kind": "max_latency_ms", "percentile": "p50", "ms": 200}, "passed", [4]),
    ({"kind": "max_latency_ms", "percentile": "max", "ms": 500}, "failed", [4]),
    ({"kind": "max_duration_ms", "ms": 1000}, "failed", []),
    ({"kind": "min_turns", "n": 4}, "passed", []),
    ({"kind": "max_turns", "n": 3}, "failed", []),
])
def test_deterministic_criteria(criterion, outcome, evidence):
    result = judge_one(criterion)
    assert result.outcome == outcome, result.rationale
    assert result.evidence == evidence
    assert result.rationale


def test_metrics_and_percentiles():
    assert metrics_of(TURNS, 1300) == {"turns": 4, "duration_ms": 1300, "latency_ms_p50": 120,
                                       "latency_ms_p90": 900, "latency_ms_max": 900}
    assert percentile([], 50) is None
    assert percentile([5, 1, 3], 50) == 3


def test_latency_with_no_target_turn_is_an_error_not_a_pass():
    result = check({"name": "fast", "kind": "max_latency_ms", "percentile": "p90", "ms": 100},
                   turns=TURNS[:1], tools=[], ended_by="caller", metrics=metrics_of(TURNS[:1], 10))
    assert result.outcome == "error"


def run_evaluate(criteria, llm=None, failures=()):
    return asyncio.run(evaluate(criteria, turns=TURNS, tools=TOOLS, ended_by="caller", duration_ms=1300,
                                expectation_failures=list(failures), scripted=True, llm=llm or {}))


def test_verdicts():
    passing = {"name": "a", "kind": "min_turns", "n": 1}
    failing = {"name": "b", "kind": "max_turns", "n": 1}
    judge = {"name": "j", "kind": "llm_judge", "rule": "polite"}
    assert run_evaluate([passing])[1] == "passed"
    assert run_evaluate([passing, failing])[1] == "failed"
    assert run_evaluate([passing], failures=["step 2: expected"])[1] == "failed"
    results, verdict, _ = run_evaluate([passing, judge])  # no LLM configured
    assert verdict == "inconclusive"
    assert results[-1].outcome == "error" and "LLM_BASE_URL" in results[-1].rationale


def test_llm_judge_reads_the_transcript_and_returns_its_rationale_and_evidence():
    fake = FakeOpenAI(lambda messages: '{"verdict": "pass", "rationale": "It confirmed 10am.", "evidence": [2]}')
    try:
        results, verdict, _ = run_evaluate([{"name": "confirms", "kind": "llm_judge", "rule": "The agent confirms a time."}],
                                           llm={"base_url": fake.base_url, "api_key": "k", "model": "judge-1"})
    finally:
        fake.close()
    judged = results[-1]
    assert (judged.outcome, judged.rationale, judged.evidence, verdict) == ("passed", "It confirmed 10am.", [2], "passed")
    prompt = fake.requests[0]["body"]["messages"][0]["content"]
    assert "The agent confirms a time." in prompt and "2. target: You're booked for 10am." in prompt
    assert "book_slot" in prompt


@pytest.mark.parametrize("answer,expected", [(500, "could not be reached"), ("I think it passed", "could not be read")])
def test_an_llm_judge_that_fails_gives_error_never_a_pass(answer, expected):
    # A provider without response formats, whose model may answer anything.
    fake = FakeOpenAI(lambda messages: answer, refuse=("json_schema", "json_object"))
    try:
        results, verdict, _ = run_evaluate([{"name": "j", "kind": "llm_judge", "rule": "polite"}],
                                           llm={"base_url": fake.base_url, "api_key": "k", "model": "m"})
    finally:
        fake.close()
    assert results[-1].outcome == "error" and expected in results[-1].rationale
    assert verdict == "inconclusive"


def test_llm_judge_unreachable_port():
    results, _, _ = run_evaluate([{"name": "j", "kind": "llm_judge", "rule": "polite"}],
                                 llm={"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "m"})
    assert results[-1].outcome == "error"
