"""Success criteria: deterministic checks over the transcript, and the LLM judge.

Each criterion gives ``passed``, ``failed`` or ``error`` with a rationale and the turns it relied
on. A judge that cannot be reached, does not answer in time, answers other than the JSON object
asked for, or cites a turn that does not exist gives ``error``, never a silent pass. The verdict:
any failed criterion → failed; otherwise any error → inconclusive; otherwise passed.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field

import openai
from django.conf import settings

from assure import egress, patterns


@dataclass
class Result:
    name: str
    kind: str
    outcome: str  # passed | failed | error
    rationale: str
    evidence: list[int] = field(default_factory=list)
    judge_prompt: str = ""  # llm_judge: the exact prompt sent
    judge_answer: str = ""  # llm_judge: the model's raw answer
    tokens: dict | None = None  # llm_judge: {"prompt": n, "completion": n}


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

Answer with a JSON object only, with exactly these keys: {{"verdict": "pass" or "fail", "rationale": "one or two sentences", "evidence": [the numbers of the turns you relied on]}}.

Transcript (turn number, speaker, text):
{transcript}

Tool invocations:
{tools}"""

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["pass", "fail"]},
        "rationale": {"type": "string"},
        "evidence": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["verdict", "rationale", "evidence"],
    "additionalProperties": False,
}

# What the judge is asked to answer in, best first: a strict JSON schema, any JSON object, or the
# prompt's instructions alone. Providers that do not support a format answer 400 to it.
RESPONSE_FORMATS: tuple[dict | None, ...] = (
    {"type": "json_schema", "json_schema": {"name": "judgement", "strict": True, "schema": JUDGE_SCHEMA}},
    {"type": "json_object"},
    None,
)

# The format each endpoint (base URL and model: support differs per model) last answered to, for the
# life of the process, so a provider without JSON schemas costs one refused request, not one a judge.
_format_for_endpoint: dict[tuple[str, str], int] = {}


class UnreadableJudgement(ValueError):
    """The judge's answer is not a judgement in the form asked for; the message says how."""


def _unfenced(text: str) -> str:
    """The answer without one enclosing Markdown code fence, which models answering without a
    response format often add around the JSON they were asked for. Nothing else is stripped."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        return text[text.index("\n") + 1:-3].strip()
    return text


def read_judgement(content: str) -> tuple[str, str, list[int]]:
    """(verdict, rationale, evidence) of an answer that is exactly the JSON object asked for."""
    try:
        answer = json.loads(_unfenced(content))
    except ValueError:
        raise UnreadableJudgement("it is not a JSON object") from None
    if not isinstance(answer, dict):
        raise UnreadableJudgement("it is not a JSON object")
    if set(answer) != set(JUDGE_SCHEMA["required"]):
        raise UnreadableJudgement(f"it has the keys {sorted(answer)}, not verdict, rationale and evidence")
    verdict, rationale, evidence = answer["verdict"], answer["rationale"], answer["evidence"]
    if verdict not in ("pass", "fail"):
        raise UnreadableJudgement(f"its verdict is {verdict!r}, not \"pass\" or \"fail\"")
    if not isinstance(rationale, str):
        raise UnreadableJudgement("its rationale is not a string")
    if not isinstance(evidence, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in evidence):
        raise UnreadableJudgement("its evidence is not a list of turn numbers")
    return verdict, rationale, list(dict.fromkeys(evidence))


def _tokens(usage) -> dict:
    return {"prompt": getattr(usage, "prompt_tokens", 0) or 0,
            "completion": getattr(usage, "completion_tokens", 0) or 0}


def add_tokens(total: dict, more: dict | None) -> dict:
    for key in ("prompt", "completion"):
        total[key] = total.get(key, 0) + ((more or {}).get(key) or 0)
    return total


async def judge(criterion: dict, *, turns: list[dict], tools: list[dict], llm: dict) -> Result:
    """An ``llm_judge`` criterion, asked of an OpenAI-compatible endpoint.

    Steps: ask in the best response format the endpoint accepts (falling back on a 400, and
    remembering what worked); read the answer strictly as the JSON object asked for; check that
    every turn it cites exists. Anything else (no answer in time, an unreadable answer, a cited
    turn that does not exist) is ``error``, never a pass. The prompt, the raw answer and the
    tokens used go with the result.
    """
    name, kind = criterion["name"], criterion["kind"]
    if not llm.get("base_url"):
        return Result(name, kind, "error",
                      "No LLM provider is configured for the judge: set LLM_BASE_URL (and LLM_API_KEY, LLM_MODEL) "
                      "on the server, or an LLM endpoint on the agent.")
    transcript = "\n".join(f"{t['seq']}. {t['speaker']}: {t['text']}" for t in turns) or "(no turns)"
    tool_lines = "\n".join(f"- {c['name']} {json.dumps(c['arguments'])}" for c in tools) or "(none)"
    prompt = JUDGE_PROMPT.format(rule=criterion["rule"], transcript=transcript, tools=tool_lines)
    timeout = settings.LLM_JUDGE_TIMEOUT_SECONDS
    tokens = {"prompt": 0, "completion": 0}

    def result(outcome: str, rationale: str, evidence=(), answer: str = "") -> Result:
        return Result(name, kind, outcome, rationale, list(evidence), judge_prompt=prompt, judge_answer=answer,
                      tokens=tokens)

    endpoint = (llm["base_url"].rstrip("/"), llm.get("model") or "")
    client = openai.AsyncOpenAI(base_url=llm["base_url"], api_key=llm.get("api_key") or "not-needed",
                                timeout=timeout, max_retries=1, http_client=egress.async_http_client(timeout=timeout))

    async def ask() -> str:
        level = _format_for_endpoint.get(endpoint, 0)
        while True:
            response_format = RESPONSE_FORMATS[level]
            try:
                completion = await client.chat.completions.create(
                    model=llm["model"], temperature=0, seed=7, messages=[{"role": "user", "content": prompt}],
                    **({"response_format": response_format} if response_format else {}),
                )
            except openai.BadRequestError:
                if level + 1 == len(RESPONSE_FORMATS):
                    raise
                level += 1  # this format is not supported here: ask again in the next one
                continue
            # Remembered only once a format worked: a 400 for another reason changes nothing.
            _format_for_endpoint[endpoint] = level
            add_tokens(tokens, _tokens(completion.usage))
            if not completion.choices:
                return ""
            return completion.choices[0].message.content or ""

    try:
        # httpx's timeout is per read; the deadline bounds the whole answer (a slow drip, retries).
        content = await asyncio.wait_for(ask(), 2 * timeout)
    except (asyncio.TimeoutError, openai.APITimeoutError):
        return result("error", f"The LLM judge did not answer within {2 * timeout:g}s.")
    except openai.OpenAIError as exc:
        refusal = egress.refusal_in(exc)
        return result("error", f"The LLM judge could not be reached: {refusal or exc}")
    finally:
        await client.close()
    try:
        verdict, rationale, evidence = read_judgement(content)
    except UnreadableJudgement as exc:
        return result("error", f"The LLM judge's answer could not be read: {exc}.", answer=content)
    seqs = [t["seq"] for t in turns]
    existing = set(seqs)
    missing = [n for n in evidence if n not in existing]
    if missing:
        has = f"turns {seqs[0]}–{seqs[-1]}" if seqs else "no turns"
        return result("error", f"The LLM judge cited turn{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(map(str, missing))}, which the transcript does not have (it has {has}), "
                               f"so its {verdict} cannot be trusted. It said: {rationale}",
                      [n for n in evidence if n not in missing], answer=content)
    return result("passed" if verdict == "pass" else "failed", rationale, evidence, answer=content)


async def evaluate(criteria: list[dict], *, turns: list[dict], tools: list[dict], ended_by: str,
                   duration_ms: int, expectation_failures: list[str], scripted: bool, llm: dict,
                   caller_tokens: dict | None = None) -> tuple[list[Result], str, dict]:
    """All criteria of a run; returns (results, verdict, metrics). The metrics count the tokens the
    caller (``caller_tokens``) and the judge used."""
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
    judge_tokens = {"prompt": 0, "completion": 0}
    for judged in results:
        add_tokens(judge_tokens, judged.tokens)
    metrics["tokens"] = {"caller": add_tokens({"prompt": 0, "completion": 0}, caller_tokens), "judge": judge_tokens}
    outcomes = {r.outcome for r in results}
    verdict = "failed" if "failed" in outcomes else "inconclusive" if ("error" in outcomes or not results) else "passed"
    return results, verdict, metrics
