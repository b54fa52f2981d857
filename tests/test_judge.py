"""The LLM judge: structured output where the provider has it (and a fallback where it does not),
a strict reading of its answer, cited turns that must exist, and a record of what it was asked,
what it answered and the tokens a run used. The provider is the OpenAI-compatible fake on a real
socket, driven by the real openai SDK."""

from __future__ import annotations

import asyncio
import html
import json

import pytest
from django.test import Client
from django.urls import reverse

from assure.services import api_token_create
from runs import evaluation, services
from runs.evaluation import JUDGE_SCHEMA, evaluate
from runs.models import Run
from runs.recorder import MAX_TURN_CHARS, TRUNCATED_MARKER
from tests import factories as f
from tests.fakes import FakeOpenAI
from tests.support import CeleryWorker, FakeTarget, wait_for

TURNS = [
    {"seq": n, "speaker": "caller" if n % 2 else "target", "text": text, "latency_ms": 100 if n % 2 == 0 else None,
     "started_ms": n * 100}
    for n, text in enumerate(["Hi, book me for Tuesday", "You're booked for 10am.", "Can I bring my son?",
                              "Yes, of course.", "Thanks, bye", "Goodbye!"], start=1)
]
RULE = {"name": "confirms", "kind": "llm_judge", "rule": "The agent confirms a time."}


def judged(answer, *, criteria=(RULE,), **fake_options):
    """Evaluate ``criteria`` against a fake judge answering ``answer``; (results, verdict, metrics, fake)."""
    fake = FakeOpenAI(answer if callable(answer) else (lambda messages: answer), **fake_options)
    try:
        results, verdict, metrics = asyncio.run(evaluate(
            list(criteria), turns=TURNS, tools=[], ended_by="caller", duration_ms=600, expectation_failures=[],
            scripted=False, llm={"base_url": fake.base_url, "api_key": "k", "model": "judge-1"}))
    finally:
        fake.close()
    assert not fake.violations  # the fake never had to answer what its format rules out
    return results, verdict, metrics, fake


def sent_format(request):
    return (request["body"].get("response_format") or {}).get("type")


def test_the_judge_asks_for_a_strict_json_schema_and_records_prompt_answer_and_tokens():
    answer = '{"verdict": "pass", "rationale": "It confirmed 10am.", "evidence": [2]}'
    results, verdict, metrics, fake = judged(answer)
    [result] = results
    assert (result.outcome, result.rationale, result.evidence) == ("passed", "It confirmed 10am.", [2])
    assert verdict == "passed"
    [request] = fake.requests
    response_format = request["body"]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True and response_format["json_schema"]["schema"] == JUDGE_SCHEMA
    assert result.judge_prompt == request["body"]["messages"][0]["content"]
    assert "The agent confirms a time." in result.judge_prompt
    assert "2. target: You're booked for 10am." in result.judge_prompt
    assert result.judge_answer == answer
    reported = request["usage"]
    assert metrics["tokens"] == {"caller": {"prompt": 0, "completion": 0},
                                 "judge": {"prompt": reported["prompt_tokens"],
                                           "completion": reported["completion_tokens"]}}
    assert reported["prompt_tokens"] > 0 and reported["completion_tokens"] > 0


def test_a_provider_without_json_schema_is_asked_for_a_json_object_and_that_is_remembered():
    answer = '{"verdict": "fail", "rationale": "No time was confirmed.", "evidence": [4]}'
    fake = FakeOpenAI(lambda messages: answer, refuse=("json_schema",))
    llm = {"base_url": fake.base_url, "api_key": "k", "model": "judge-1"}

    def evaluate_twice():
        return [asyncio.run(evaluate([RULE], turns=TURNS, tools=[], ended_by="caller", duration_ms=1,
                                     expectation_failures=[], scripted=False, llm=llm)) for _ in range(2)]

    try:
        (first, _, first_metrics), (second, verdict, _) = evaluate_twice()
    finally:
        fake.close()
    assert (first[0].outcome, second[0].outcome, verdict) == ("failed", "failed", "failed")
    # One refused request, then the fallback; the second judgement goes straight to what worked.
    assert [sent_format(r) for r in fake.requests] == ["json_schema", "json_object", "json_object"]
    assert first_metrics["tokens"]["judge"]["prompt"] == fake.requests[1]["usage"]["prompt_tokens"]
    # Another endpoint is asked for the schema again: the memory is per endpoint.
    _, _, _, other = judged(answer)
    assert [sent_format(r) for r in other.requests] == ["json_schema"]


def test_a_provider_without_response_formats_gets_plain_instructions_and_a_fenced_answer_is_read():
    answer = '```json\n{"verdict": "pass", "rationale": "Confirmed.", "evidence": [2, 2]}\n```'
    results, verdict, _, fake = judged(answer, refuse=("json_schema", "json_object"))
    assert [sent_format(r) for r in fake.requests] == ["json_schema", "json_object", None]
    assert "response_format" not in fake.requests[-1]["body"]
    assert (results[0].outcome, results[0].evidence, verdict) == ("passed", [2], "passed")
    assert results[0].judge_answer == answer


@pytest.mark.parametrize("answer,why", [
    ("I think it passed", "not a JSON object"),
    ('Sure! {"verdict": "pass", "rationale": "ok", "evidence": [2]}', "not a JSON object"),
    ('{"verdict": "pass", "rationale": "ok"}', "not verdict, rationale and evidence"),
    ('{"verdict": "pass", "rationale": "ok", "evidence": [2], "confidence": 0.9}',
     "not verdict, rationale and evidence"),
    ('{"verdict": "probably", "rationale": "ok", "evidence": [2]}', "its verdict is 'probably'"),
    ('{"verdict": "pass", "rationale": "ok", "evidence": ["turn 2"]}', "not a list of turn numbers"),
    ('{"verdict": "pass", "rationale": "ok", "evidence": [true]}', "not a list of turn numbers"),
    ('["pass"]', "not a JSON object"),
])
def test_a_judge_answering_garbage_gives_error_and_the_verdict_inconclusive(answer, why):
    # A provider without response formats: the model may answer anything.
    passing = {"name": "enough turns", "kind": "min_turns", "n": 1}
    results, verdict, _, _ = judged(answer, criteria=(passing, RULE), refuse=("json_schema", "json_object"))
    judgement = results[-1]
    assert judgement.outcome == "error" and verdict == "inconclusive"
    assert "could not be read" in judgement.rationale and why in judgement.rationale, judgement.rationale
    assert judgement.judge_answer == answer  # what it said is kept, to be read on the run page


def test_a_judge_citing_a_turn_that_does_not_exist_gives_error_and_the_verdict_inconclusive():
    answer = '{"verdict": "pass", "rationale": "The agent confirmed it in turn 99.", "evidence": [2, 99]}'
    results, verdict, _, _ = judged(answer)
    judgement = results[0]
    assert (judgement.outcome, verdict) == ("error", "inconclusive")
    assert "turn 99" in judgement.rationale and "turns 1–6" in judgement.rationale, judgement.rationale
    assert judgement.evidence == [2]  # only turns that exist are linked


def test_a_judge_that_does_not_answer_in_time_gives_error_and_the_verdict_inconclusive(settings):
    settings.LLM_JUDGE_TIMEOUT_SECONDS = 0.3
    answer = '{"verdict": "pass", "rationale": "ok", "evidence": [2]}'
    results, verdict, _, _ = judged(answer, delay_seconds=2)
    assert (results[0].outcome, verdict) == ("error", "inconclusive")
    assert "did not answer within 0.6s" in results[0].rationale, results[0].rationale


def test_a_refused_request_for_another_reason_is_not_remembered_as_a_missing_format():
    fake = FakeOpenAI(lambda messages: 400)
    try:
        results, verdict, _ = asyncio.run(evaluate(
            [RULE], turns=TURNS, tools=[], ended_by="caller", duration_ms=1, expectation_failures=[], scripted=False,
            llm={"base_url": fake.base_url, "api_key": "k", "model": "judge-1"}))
    finally:
        fake.close()
    assert (results[0].outcome, verdict) == ("error", "inconclusive")
    assert "could not be reached" in results[0].rationale
    assert [sent_format(r) for r in fake.requests] == ["json_schema", "json_object", None]
    assert (fake.base_url.rstrip("/"), "judge-1") not in evaluation._format_for_endpoint


# Through the whole stack --------------------------------------------------------------------------

def caller_and_judge(messages):
    """One fake model plays the caller (asked with tools) and the judge (asked with the rule)."""
    prompt = messages[0]["content"]
    if prompt.startswith("You judge a conversation"):
        if "confirms a time" in prompt:
            return json.dumps({"verdict": "pass", "rationale": "It confirmed the table.", "evidence": [2]})
        return json.dumps({"verdict": "pass", "rationale": "As said in turn 99.", "evidence": [99]})
    if not any(m["role"] == "assistant" for m in messages):
        return "Hello, can I book a table for two?"
    return {"content": "Great, thanks!", "tool_calls": [{"name": "end_call", "arguments": {}}]}


@pytest.mark.django_db(transaction=True)
def test_a_run_records_the_judges_prompt_answer_and_tokens_and_shows_them_to_members(
        test_redis_url, workspace, member_client, other_workspace):
    api = Client(HTTP_AUTHORIZATION=f"Token {api_token_create(workspace=workspace, name='tests')[1]}")
    llm = FakeOpenAI(caller_and_judge)
    bot = FakeTarget(lambda message, n: (200, {"reply": f"Sure, 7pm works: {message} " + "x" * MAX_TURN_CHARS}))
    worker = CeleryWorker(redis_url=test_redis_url, name="judged")
    try:
        agent = f.AgentFactory(workspace=workspace, llm_base_url=llm.base_url, llm_model="fake")
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, agent=agent, target=target, criteria=[
            {"name": "confirms", "kind": "llm_judge", "rule": "The agent confirms a time."},
            {"name": "cites", "kind": "llm_judge", "rule": "The agent is polite."},
        ])
        path = f.PathFactory(scenario=scenario, script=[], narrative="Sam wants a table for two tonight.")
        run_id = services.path_run(path=path).pk
        run = wait_for(lambda: (r := Run.objects.get(pk=run_id)).status in ("completed", "failed") and r,
                       timeout=60, message="the run to end")
        detail = api.get(f"/api/v1/runs/{run_id}/").json()
    finally:
        worker.stop()
        llm.close()
        bot.close()
    assert (run.status, run.verdict) == ("completed", "inconclusive"), run.failure_detail
    judge_requests = [r for r in llm.requests if "response_format" in r["body"]]
    caller_requests = [r for r in llm.requests if "tools" in r["body"]]
    assert len(judge_requests) == 2 and len(caller_requests) == 2
    assert len(llm.requests) == 4

    def total(requests):
        return {"prompt": sum(r["usage"]["prompt_tokens"] for r in requests),
                "completion": sum(r["usage"]["completion_tokens"] for r in requests)}

    assert detail["metrics"]["tokens"] == {"caller": total(caller_requests), "judge": total(judge_requests)}
    confirms, cites = detail["criteria"]
    assert (confirms["outcome"], cites["outcome"]) == ("passed", "error")
    assert "turn 99" in cites["rationale"]
    assert cites["judge_answer"] == json.dumps(
        {"verdict": "pass", "rationale": "As said in turn 99.", "evidence": [99]})
    # The prompt holds the target's whole (capped) turn, so the stored copy is capped in turn.
    sent = judge_requests[0]["body"]["messages"][0]["content"]
    assert len(sent) > MAX_TURN_CHARS
    assert confirms["judge_prompt"] == sent[:MAX_TURN_CHARS] + TRUNCATED_MARKER
    assert confirms["judge_answer"] == json.dumps({"verdict": "pass", "rationale": "It confirmed the table.",
                                                   "evidence": [2]})

    page = member_client.get(reverse("runs:run-detail", args=[run_id]))
    assert page.status_code == 200
    text = page.content.decode()
    assert text.count("Judge prompt / answer") == 2
    assert html.escape(cites["judge_answer"]) in text
    assert "Decide whether this rule holds: The agent is polite." in text
    # Someone of another workspace sees nothing of it.
    outsider = f.UserFactory(is_staff=True)
    f.MembershipFactory(workspace=other_workspace, user=outsider, role="owner")
    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(reverse("runs:run-detail", args=[run_id])).status_code == 404
