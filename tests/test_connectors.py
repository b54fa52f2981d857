"""Each chat connector against a fake of the customer's bot speaking the real protocol."""

import asyncio

import aiohttp
import pytest

from runs.connectors import ConnectionContext, ConnectorError, TargetUnreachable, connection_for
from tests.fakes import FakeOpenAI, FakeWebsocketBot
from tests.support import FakeTarget


def run(coro):
    return asyncio.run(coro)


async def converse(target: dict, messages: list[str], secrets=None):
    async with aiohttp.ClientSession() as http:
        connection = connection_for(target, ConnectionContext(session_id="s-1", http=http, secrets=secrets or {}))
        try:
            greeting = await connection.open()
            replies = [await connection.send(m) for m in messages]
        finally:
            await connection.close()
    return greeting, replies


def http_json(url, **extra):
    return {"channel": "chat", "kind": "http_json", "url": url,
            "request_template": {"session": "{{session_id}}", "input": {"text": "{{message}}"}},
            "response_path": "$.data.messages[0].text", **extra}


def test_http_json_fills_the_template_sends_secret_headers_and_reads_the_reply_path():
    bot = FakeTarget(lambda message, n: (200, {"data": {"messages": [{"text": f"you said {n}"}]}}))
    try:
        _, replies = run(converse(http_json(bot.url), ["hello", "again"], secrets={"X-Api-Key": "s3cret"}))
    finally:
        bot.close()
    assert [r.text for r in replies] == ["you said 1", "you said 2"]
    assert bot.requests[0]["body"] == {"session": "s-1", "input": {"text": "hello"}}
    assert bot.requests[0]["headers"]["X-Api-Key"] == "s3cret"


def test_http_json_failures_say_whether_the_session_ever_opened():
    bot = FakeTarget(lambda message, n: (200, {"data": {"messages": [{"text": "hi"}]}}) if n == 1 else (502, {}))
    try:
        with pytest.raises(ConnectorError) as exc:
            run(converse(http_json(bot.url), ["one", "two"]))
        assert not isinstance(exc.value, TargetUnreachable) and "HTTP 502" in str(exc.value)
    finally:
        bot.close()
    with pytest.raises(TargetUnreachable, match="could not connect"):
        run(converse(http_json("http://127.0.0.1:9/chat"), ["one"]))


def test_http_json_reply_without_the_path_is_a_clear_error():
    bot = FakeTarget(lambda message, n: (200, {"answer": "hi"}))
    try:
        with pytest.raises(ConnectorError, match=r"nothing at \$\.data\.messages\[0\]\.text"):
            run(converse(http_json(bot.url), ["one"]))
    finally:
        bot.close()


def test_openai_chat_keeps_the_history_and_sends_the_key_from_the_authorization_header():
    fake = FakeOpenAI(lambda messages: f"reply {len(messages)}")
    try:
        target = {"channel": "chat", "kind": "openai_chat", "url": fake.base_url, "model": "receptionist-1"}
        _, replies = run(converse(target, ["hi", "book me"], secrets={"Authorization": "Bearer sk-test"}))
    finally:
        fake.close()
    assert [r.text for r in replies] == ["reply 1", "reply 3"]
    second = fake.requests[1]
    assert second["body"]["model"] == "receptionist-1"
    assert [m["role"] for m in second["body"]["messages"]] == ["user", "assistant", "user"]
    assert second["headers"]["Authorization"] == "Bearer sk-test"


def test_openai_chat_5xx_on_the_first_message_is_unreachable():
    fake = FakeOpenAI(lambda messages: 503)
    try:
        target = {"channel": "chat", "kind": "openai_chat", "url": fake.base_url, "model": "m"}
        with pytest.raises(TargetUnreachable, match="HTTP 503"):
            run(converse(target, ["hi"]))
    finally:
        fake.close()


def test_websocket_collects_a_streamed_reply_until_the_idle_gap_and_sees_the_close():
    bot = FakeWebsocketBot(greeting="Welcome!", parts=2)
    try:
        target = {"channel": "chat", "kind": "websocket", "url": bot.url, "request_template": {}, "response_path": ""}
        greeting, replies = run(converse(target, ["hello", "bye"]))
    finally:
        bot.close()
    assert greeting.text == "Welcome!"
    assert replies[0].text == "part1 of reply to hello part2 of reply to hello"
    assert replies[1].ended is True
    assert bot.frames[0] == {"session_id": "s-1", "message": "hello"}


def test_websocket_refused_is_unreachable():
    target = {"channel": "chat", "kind": "websocket", "url": "ws://127.0.0.1:9/ws", "request_template": {}, "response_path": ""}
    with pytest.raises(TargetUnreachable):
        run(converse(target, ["hi"]))


def test_a_kind_with_no_connector_is_a_permanent_error():
    with pytest.raises(ConnectorError, match="No voice connector") as exc:
        run(converse({"channel": "voice", "kind": "phone", "url": ""}, []))
    assert exc.value.permanent
