"""The LLM caller against an OpenAI-compatible fake (driven by the real openai SDK), a customer's
bot and a custom function's webhook, all on real local sockets."""

import asyncio

import aiohttp
import pytest

from runs.connectors import ConnectionContext, connection_for
from runs.engine import Clock
from runs.llm_caller import CallerError, Function, LLMCaller
from scenarios.sync import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.fakes import FakeOpenAI
from tests.support import FakeTarget


class ListRecorder:
    def __init__(self):
        self.items = []

    async def turn(self, **row):
        self.items.append(("turn", row["speaker"], row["text"]))

    async def tool(self, **row):
        self.items.append(("tool", row["name"], row["arguments"], row.get("result"), row.get("status", "ok")))


def scripted_llm(steps):
    """An LLM that answers with ``steps`` in order, whatever it is asked."""
    calls = iter(steps)
    return lambda messages: next(calls)


def test_llm_caller_talks_uses_a_custom_function_and_ends_the_call():
    bot = FakeTarget(lambda message, n: (200, {"reply": f"bot heard: {message}"}))
    webhook = FakeTarget(lambda message, n: (200, {"slots": ["Tue 10am"]}))
    llm = FakeOpenAI(scripted_llm([
        "Hi, I'd like to book a cleaning.",
        {"content": None, "tool_calls": [{"name": "find_slots", "arguments": {"day": "Tuesday"}}]},
        "Tuesday at 10am, please.",
        {"content": "Thanks, bye!", "tool_calls": [{"name": "end_call", "arguments": {"reason": "booked"}}]},
    ]))
    recorder = ListRecorder()

    async def go():
        async with aiohttp.ClientSession() as http:
            caller = LLMCaller(
                persona="Maya wants a cleaning on Tuesday.", language="en-US",
                llm={"base_url": llm.base_url, "api_key": "k", "model": "caller-1"},
                functions=[Function(name="find_slots", description="Free slots on a day",
                                    parameters={"type": "object", "properties": {"day": {"type": "string"}}},
                                    url=webhook.url, secret="shh")],
                channel="chat", http=http, run_id="run-1",
            )
            target = {"channel": "chat", "kind": "http_json", "url": bot.url,
                      "request_template": {"text": "{{message}}"}, "response_path": "$.reply"}
            return await caller.converse(connection_for(target, ConnectionContext("s", http)), recorder, Clock())

    try:
        outcome = asyncio.run(go())
    finally:
        for server in (bot, webhook, llm):
            server.close()
    assert outcome.ended_by == "caller"
    assert recorder.items == [
        ("turn", "caller", "Hi, I'd like to book a cleaning."),
        ("turn", "target", "bot heard: Hi, I'd like to book a cleaning."),
        ("tool", "find_slots", {"day": "Tuesday"}, {"slots": ["Tue 10am"]}, "ok"),
        ("turn", "caller", "Tuesday at 10am, please."),
        ("turn", "target", "bot heard: Tuesday at 10am, please."),
        ("turn", "caller", "Thanks, bye!"),
        ("tool", "end_call", {"reason": "booked"}, None, "ok"),
        ("turn", "target", "bot heard: Thanks, bye!"),
    ]
    # The model saw the persona, the target's words as the other party, and the function's result.
    first, third = llm.requests[0]["body"], llm.requests[2]["body"]
    assert "Maya wants a cleaning" in first["messages"][0]["content"]
    assert first["seed"] == 7 and {t["function"]["name"] for t in first["tools"]} == {"end_call", "press_digit", "find_slots"}
    roles = [m["role"] for m in third["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool"]
    assert third["messages"][-1]["content"] == '{"slots": ["Tue 10am"]}'
    # The webhook call is signed like the sync probe.
    call = webhook.requests[0]
    headers = {name.lower(): value for name, value in call["headers"].items()}
    assert verify_signature("shh", headers[TIMESTAMP_HEADER.lower()], call["raw"], headers[SIGNATURE_HEADER.lower()],
                            tolerance_seconds=60)
    assert not verify_signature("another secret", headers[TIMESTAMP_HEADER.lower()], call["raw"],
                                headers[SIGNATURE_HEADER.lower()])
    assert call["body"] == {"type": "assure.tool_call", "function": "find_slots", "arguments": {"day": "Tuesday"}, "run": "run-1"}


def test_without_an_llm_the_caller_says_what_to_configure():
    with pytest.raises(CallerError, match="no LLM provider is configured: set LLM_BASE_URL"):
        LLMCaller(persona="p", language="en-US", llm={"base_url": None}, functions=[], channel="chat", http=None, run_id="r")


def test_an_unreachable_llm_is_a_caller_error():
    async def go():
        async with aiohttp.ClientSession() as http:
            caller = LLMCaller(persona="p", language="en-US", llm={"base_url": "http://127.0.0.1:9/v1", "model": "m"},
                               functions=[], channel="chat", http=http, run_id="r")
            target = {"channel": "chat", "kind": "http_json", "url": "http://127.0.0.1:9/x",
                      "request_template": {"t": "{{message}}"}, "response_path": "$.r"}
            await caller.converse(connection_for(target, ConnectionContext("s", http)), ListRecorder(), Clock())

    with pytest.raises(CallerError, match="could not get its next message"):
        asyncio.run(go())


class SpeakingConnection:
    """A chat connection that takes the caller's words as they are written, as a call does: the
    pieces go to ``spoken``, the whole utterance to the bot once finished."""

    streams_speech = True

    def __init__(self, connection):
        self.connection = connection
        self.spoken: list[str] = []

    async def open(self):
        return await self.connection.open()

    async def speak(self, token: str) -> None:
        self.spoken.append(token)

    async def finish_speaking(self, text: str):
        return await self.connection.send(text)

    async def close(self) -> None:
        await self.connection.close()


def converse_counting(llm, *, streaming: bool):
    """A two-message conversation against a bot; returns (outcome, what was spoken)."""
    bot = FakeTarget(lambda message, n: (200, {"reply": "Sure, for how many?"}))

    async def go():
        async with aiohttp.ClientSession() as http:
            caller = LLMCaller(persona="p", language="en-US", llm={"base_url": llm.base_url, "model": "m"},
                               functions=[], channel="voice", http=http, run_id="r")
            target = {"channel": "chat", "kind": "http_json", "url": bot.url,
                      "request_template": {"text": "{{message}}"}, "response_path": "$.reply"}
            connection = connection_for(target, ConnectionContext("s", http))
            if streaming:
                connection = SpeakingConnection(connection)
            outcome = await caller.converse(connection, ListRecorder(), Clock())
            return outcome, getattr(connection, "spoken", [])

    try:
        return asyncio.run(go())
    finally:
        bot.close()


def total_usage(requests):
    return {"prompt": sum(r["usage"]["prompt_tokens"] for r in requests),
            "completion": sum(r["usage"]["completion_tokens"] for r in requests)}


@pytest.mark.parametrize("streaming", [False, True])
def test_the_caller_counts_the_tokens_its_model_reports(streaming):
    llm = FakeOpenAI(scripted_llm([
        "Hi, a table for two tonight please.",
        {"content": "Two, thanks!", "tool_calls": [{"name": "end_call", "arguments": {}}]},
    ]))
    try:
        outcome, spoken = converse_counting(llm, streaming=streaming)
    finally:
        llm.close()
    assert len(llm.requests) == 2
    assert outcome.caller_tokens == total_usage(llm.requests) and outcome.caller_tokens["completion"] > 0
    if streaming:
        # Streamed answers carry their usage only when asked; the caller asks.
        assert all(r["body"]["stream"] and r["body"]["stream_options"] == {"include_usage": True} for r in llm.requests)
        assert "".join(spoken) == "Hi, a table for two tonight please.Two, thanks!"


def test_a_provider_refusing_stream_options_still_streams_uncounted():
    llm = FakeOpenAI(scripted_llm([
        "Hi, a table for two tonight please.",
        {"content": "Two, thanks!", "tool_calls": [{"name": "end_call", "arguments": {}}]},
    ]), refuse=("stream_options",))
    try:
        outcome, spoken = converse_counting(llm, streaming=True)
    finally:
        llm.close()
    # One refused request; the rest stream without asking again (the endpoint is remembered).
    assert ["stream_options" in r["body"] for r in llm.requests] == [True, False, False]
    assert "".join(spoken) == "Hi, a table for two tonight please.Two, thanks!"
    assert outcome.caller_tokens == {"prompt": 0, "completion": 0}
