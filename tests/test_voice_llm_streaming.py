"""The LLM caller on a call streams its words: the provider gets the first ones while the model is
still writing the rest, and the transcript holds the whole utterance."""

from __future__ import annotations

import pytest

from runs.models import Run
from scenarios.models import Target
from telephony.loopback.far_ends import Say, ScriptedFarEnd
from telephony.models import Call
from tests import factories as f
from tests.fakes import FakeOpenAI
from tests.support import wait_for
from tests.voice_support import VoiceStack
from runs import services

pytestmark = pytest.mark.django_db(transaction=True)

LINE = "Hi there, I would like to book a cleaning for next Tuesday morning please."


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_redis_url, tmp_path_factory):
    with django_db_blocker.unblock():
        voice = VoiceStack(redis_url=test_redis_url, tmp_path=tmp_path_factory.mktemp("voice"))
    yield voice
    voice.stop()


def test_the_llm_callers_words_go_out_while_they_are_written(stack, workspace):
    answers = iter([LINE, {"content": None, "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}}]}])
    llm = FakeOpenAI(lambda messages: next(answers))
    chat = f.TargetFactory(workspace=workspace)
    target = f.TargetFactory(workspace=workspace, channel="voice", kind=Target.Kind.REHEARSAL, rehearse_with=chat,
                             url="", request_template={}, response_path="")
    target.full_clean()
    target.save()
    far_end = ScriptedFarEnd(replies=[[Say("Sure, Tuesday at 10am works.")]])
    stack.answer(target.phone_number, lambda: far_end)
    agent = f.AgentFactory(workspace=workspace, llm_base_url=llm.base_url, llm_model="fake")
    scenario = f.ScenarioFactory(workspace=workspace, channel="voice", agent=agent, target=target, criteria=[])
    path = f.PathFactory(scenario=scenario, script=[], narrative="A patient books a cleaning.")
    try:
        run = services.path_run(path=path)
        run = wait_for(lambda: (r := Run.objects.get(pk=run.pk)).status in ("completed", "failed") and r, 60,
                       message="the run to end")
    finally:
        llm.close()
    assert run.status == "completed", run.failure_detail
    assert far_end.heard == [LINE]
    caller_turns = list(run.turns.filter(speaker="caller").values_list("text", flat=True))
    assert caller_turns == [LINE]
    texts = [e for e in stack.call(Call.objects.get(run=run).sid)["timeline"] if e["event"] == "in:text"]
    pieces = [e for e in texts if e.get("last") is False]
    # The model's words arrived a few at a time (one frame per streamed piece), then the end mark.
    assert len(pieces) == len(LINE.split()), texts
    assert texts[-1].get("last") is True
    assert llm.streamed_chunks >= len(LINE.split())
    # The streamed answers carried their usage (asked for), and the run counts it as the caller's.
    assert all(r["body"]["stream_options"] == {"include_usage": True} for r in llm.requests)
    assert run.metrics["tokens"]["caller"] == {
        "prompt": sum(r["usage"]["prompt_tokens"] for r in llm.requests),
        "completion": sum(r["usage"]["completion_tokens"] for r in llm.requests)}
    assert run.metrics["tokens"]["caller"]["completion"] >= len(LINE.split())
