"""Success criteria: deterministic checks over the transcript, and the LLM judge.

Each criterion gives ``passed``, ``failed`` or ``error`` with a rationale and the turns it relied
on. A judge that cannot be reached gives ``error``, never a silent pass. The verdict: any failed
criterion → failed; otherwise any error → inconclusive; otherwise passed.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field

from assure import egress, patterns


@dataclass
class Result:
    name: str
    kind: str
    outcome: str  # passed | failed | error
    rationale: str
    evidence: list[int] = field(default_factory=list)


def percentile(values: list[int], p: float) -> int | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def metrics_of(turns: list[dict], duration_ms: int) -> dict:
    latencies = [t["latency_ms"] for t in turns if t["speaker"] == "target" and t.get("latency_ms") is not None]
    return {
        "turns": len(turns),
        "duration_ms": duration_ms,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p90": percentile(latencies, 90),
        "latency_ms_max": max(latencies) if latencies else None,
    }


def _of(speaker: str, turns: list[dict]) -> list[dict]:
    return [t for t in turns if t["speaker"] == speaker and not t.get("is_error")]


def check(criterion: dict, *, turns: list[dict], tools: list[dict], ended_by: str, metrics: dict) -> Result:
    """One deterministic criterion."""
    name, kind = criterion["name"], criterion["kind"]

    def result(passed: bool, rationale: str, evidence=()) -> Result:
        return Result(name, kind, "passed" if passed else "failed", rationale, list(evidence))

    if kind in ("contains", "regex"):
        speaker = criterion["speaker"]
        if kind == "contains":
            needle = criterion["text"]
            sensitive = criterion.get("case_sensitive", False)
            hits = [t["seq"] for t in _of(speaker, turns)
                    if (needle in t["text"] if sensitive else needle.lower() in t["text"].lower())]
            what = f"{speaker} said {needle!r}"
        else:
            try:
                hits = [t["seq"] for t in _of(speaker, turns) if patterns.matches(criterion["pattern"], t["text"])]
            except patterns.PatternError as exc:  # saved before patterns were checked with RE2
                return Result(name, kind, "error", f"The pattern cannot be used: {exc}. Edit the criterion.")
            what = f"{speaker} matched /{criterion['pattern']}/"
        if hits:
            return result(True, f"The {what} in turn{'s' if len(hits) > 1 else ''} {', '.join(map(str, hits))}.", hits)
        return result(False, f"No turn where the {what}.")
    if kind in ("tool_called", "tool_not_called"):
        tool = criterion["tool"]
        calls = [c for c in tools if c["name"] == tool]
        expected_args = criterion.get("arguments")
        if expected_args:
            calls = [c for c in calls if all(c["arguments"].get(k) == v for k, v in expected_args.items())]
        described = f"{tool}{' with ' + json.dumps(expected_args) if expected_args else ''}"
        seqs = [c["seq"] for c in calls]
        if kind == "tool_called":
            if calls:
                return result(True, f"{described} was called (invocation {', '.join(map(str, seqs))}).")
            return result(False, f"{described} was never called.")
        if calls:
            return result(False, f"{described} was called (invocation {', '.join(map(str, seqs))}).")
        return result(True, f"{described} was not called.")
    if kind == "ended_by":
        return result(ended_by == criterion["speaker"], f"The conversation was ended by the {ended_by}.")
    if kind == "max_latency_ms":
        key = {"p50": "latency_ms_p50", "p90": "latency_ms_p90", "max": "latency_ms_max"}[criterion["percentile"]]
        value = metrics.get(key)
        if value is None:
            return Result(name, kind, "error", "The target answered no turn, so there is no latency to judge.")
        slow = [t["seq"] for t in turns if t["speaker"] == "target" and (t.get("latency_ms") or 0) > criterion["ms"]]
        return result(value <= criterion["ms"],
                      f"{criterion['percentile']} latency was {value} ms (limit {criterion['ms']} ms).", slow)
    if kind == "max_duration_ms":
        value = metrics["duration_ms"]
        return result(value <= criterion["ms"], f"The conversation lasted {value} ms (limit {criterion['ms']} ms).")
    if kind in ("min_turns", "max_turns"):
        n = metrics["turns"]
        ok = n >= criterion["n"] if kind == "min_turns" else n <= criterion["n"]
        return result(ok, f"The conversation had {n} turns ({'at least' if kind == 'min_turns' else 'at most'} {criterion['n']} wanted).")
    return Result(name, kind, "error", f"Unknown criterion kind {kind!r}.")


JUDGE_PROMPT = """You judge a conversation between a simulated caller and an AI agent (the "target").
Decide whether this rule holds: {rule}

Answer with a JSON object only: {{"verdict": "pass" or "fail", "rationale": "one or two sentences", "evidence": [turn numbers you relied on]}}.

Transcript (turn number, speaker, text):
{transcript}

Tool invocations:
{tools}"""


JUDGE_TIMEOUT_SECONDS = 60.0


async def judge(criterion: dict, *, turns: list[dict], tools: list[dict], llm: dict) -> Result:
    """An ``llm_judge`` criterion, asked of an OpenAI-compatible endpoint."""
    import openai

    name, kind = criterion["name"], criterion["kind"]
    if not llm.get("base_url"):
        return Result(name, kind, "error",
                      "No LLM provider is configured for the judge: set LLM_BASE_URL (and LLM_API_KEY, LLM_MODEL) "
                      "on the server, or an LLM endpoint on the agent.")
    transcript = "\n".join(f"{t['seq']}. {t['speaker']}: {t['text']}" for t in turns) or "(no turns)"
    tool_lines = "\n".join(f"- {c['name']} {json.dumps(c['arguments'])}" for c in tools) or "(none)"
    client = openai.AsyncOpenAI(base_url=llm["base_url"], api_key=llm.get("api_key") or "not-needed",
                                timeout=JUDGE_TIMEOUT_SECONDS, max_retries=1,
                                http_client=egress.async_http_client(timeout=JUDGE_TIMEOUT_SECONDS))
    try:
        # httpx's timeout is per read; the deadline bounds the whole answer (a slow drip).
        completion = await asyncio.wait_for(client.chat.completions.create(
            model=llm["model"], temperature=0, seed=7,
            messages=[{"role": "user", "content": JUDGE_PROMPT.format(rule=criterion["rule"], transcript=transcript, tools=tool_lines)}],
        ), 2 * JUDGE_TIMEOUT_SECONDS)
        content = completion.choices[0].message.content or ""
    except asyncio.TimeoutError:
        return Result(name, kind, "error", f"The LLM judge did not answer within {2 * JUDGE_TIMEOUT_SECONDS:.0f}s.")
    except openai.OpenAIError as exc:
        refusal = egress.refusal_in(exc)
        return Result(name, kind, "error", f"The LLM judge could not be reached: {refusal or exc}")
    finally:
        await client.close()
    match = re.search(r"\{.*\}", content, re.S)
    try:
        answer = json.loads(match.group(0) if match else content)
        verdict = answer["verdict"].lower()
        if verdict not in ("pass", "fail"):
            raise ValueError(verdict)
    except (ValueError, KeyError, AttributeError, TypeError):
        return Result(name, kind, "error", f"The LLM judge's answer could not be read: {content[:300]!r}")
    evidence = [int(x) for x in answer.get("evidence", []) if str(x).isdigit()]
    return Result(name, kind, "passed" if verdict == "pass" else "failed", str(answer.get("rationale", "")), evidence)


async def evaluate(criteria: list[dict], *, turns: list[dict], tools: list[dict], ended_by: str,
                   duration_ms: int, expectation_failures: list[str], scripted: bool, llm: dict) -> tuple[list[Result], str, dict]:
    """All criteria of a run; returns (results, verdict, metrics)."""
    metrics = metrics_of(turns, duration_ms)
    results: list[Result] = []
    if scripted:
        results.append(Result(
            "Script expectations", "script", "failed" if expectation_failures else "passed",
            "; ".join(expectation_failures) or "Every expect step of the script matched the target's reply.",
        ))
    for criterion in criteria:
        if criterion["kind"] == "llm_judge":
            results.append(await judge(criterion, turns=turns, tools=tools, llm=llm))
        else:
            results.append(check(criterion, turns=turns, tools=tools, ended_by=ended_by, metrics=metrics))
    outcomes = {r.outcome for r in results}
    verdict = "failed" if "failed" in outcomes else "inconclusive" if ("error" in outcomes or not results) else "passed"
    return results, verdict, metrics
