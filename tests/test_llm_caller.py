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
