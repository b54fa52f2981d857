"""The LLM caller: a simulated caller played by any OpenAI-compatible chat-completions model.

It gets the composed persona, speaks first, and decides each next message from the transcript so
far. Its tools: ``end_call``, ``press_digit`` and the agent's synced custom functions, which it
calls through their webhooks (signed like the sync probe: ``scenarios/sync.py``). Sampling is
seeded, so the same persona against the same target tends to take the same path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import openai

from assure import egress
from runs.connectors import ReplyTooLarge, TargetConnection, read_capped
from runs.engine import Clock, Outcome, Recorder, exchange, record_reply

MAX_CALLER_TURNS = 40
FUNCTION_TIMEOUT_SECONDS = 15.0
SEED = 7

SYSTEM_PROMPT = """You are role-playing a customer who contacts a business's AI agent; a QA team is testing that agent.
Stay in character as the customer described below, and never reveal that you are an AI or a test.
Write only what the customer says: one short, natural message at a time, in {language}.
When your request is handled or the conversation cannot go anywhere, call end_call.
{keypad}

{persona}"""

BUILTIN_TOOLS = [
    {"type": "function", "function": {
        "name": "end_call", "description": "Hang up / end the conversation.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}}}},
    {"type": "function", "function": {
        "name": "press_digit", "description": "Press keys on the phone keypad (0-9, * and #).",
        "parameters": {"type": "object", "properties": {"digits": {"type": "string", "pattern": "^[0-9*#]+$"}},
                       "required": ["digits"]}}},
]


# Endpoints that answered 400 to ``stream_options`` (not every OpenAI-compatible server knows it):
# their streamed answers go uncounted rather than unasked.
_no_stream_usage: set[str] = set()


class CallerError(Exception):
    """The LLM behind the caller could not be used; the message says what to check."""


@dataclass
class Function:
    name: str
    description: str
    parameters: dict
    url: str
    secret: str


class LLMCaller:
    def __init__(self, *, persona: str, language: str, llm: dict, functions: list[Function], channel: str,
                 http: aiohttp.ClientSession, run_id: str):
        if not llm.get("base_url"):
            raise CallerError(
                "This path has no script, so it needs the LLM caller, and no LLM provider is configured: set "
                "LLM_BASE_URL (and LLM_API_KEY, LLM_MODEL) on the server, or an LLM endpoint on the agent."
            )
        self.llm = llm
        self.client = openai.AsyncOpenAI(base_url=llm["base_url"], api_key=llm.get("api_key") or "not-needed",
                                         timeout=60, max_retries=1, http_client=egress.async_http_client(timeout=60))
        self.functions = {f.name: f for f in functions}
        self.tokens = {"prompt": 0, "completion": 0}  # used so far, from each answer's usage
        self.http = http
        self.run_id = run_id
        keypad = "To press phone keys, call press_digit." if channel == "voice" else ""
        self.messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT.format(
            language=language or "en-US", keypad=keypad, persona=persona)}]
        self.tools = BUILTIN_TOOLS + [
            {"type": "function", "function": {"name": f.name, "description": f.description, "parameters": f.parameters}}
            for f in functions
        ]

    async def converse(self, connection: TargetConnection, recorder: Recorder, clock: Clock) -> Outcome:
        outcome = Outcome(caller_tokens=self.tokens)
        try:
            greeting = await connection.open()
            if greeting is not None:
                await record_reply(greeting, recorder, clock, outcome, latency_ms=None)
                if greeting.ended:
                    outcome.duration_ms = clock.ms()
                    return outcome
            if greeting is not None and greeting.text:
                self.messages.append({"role": "user", "content": greeting.text})
            else:
                self.messages.append({"role": "user", "content": "[The conversation has started. You speak first.]"})
            # On a call the words go out as the model writes them: the provider speaks the first
            # ones while the rest are being generated (a connection that can says so).
            streaming = getattr(connection, "streams_speech", False)
            for _ in range(MAX_CALLER_TURNS):
                first_word_ms: list[int] = []

                async def speak(token: str) -> None:
                    if not first_word_ms:
                        first_word_ms.append(clock.ms())
                    await connection.speak(token)

                message = await self._next(speak=speak if streaming else None)
                calls = message.tool_calls or []
                text = (message.content or "").strip()
                self.messages.append(_assistant_message(message))
                if not text and not calls:
                    outcome.ended_by = "caller"  # the caller has nothing more to say
                    break
                # Tool results must follow the assistant message directly, so what goes to the
                # target (the words, key presses) is sent after every call has its result.
                sends = []
                if text:
                    at = clock.ms()
                    await recorder.turn(speaker="caller", text=text, started_ms=first_word_ms[0] if first_word_ms else at,
                                        ended_ms=at)
                    sends.append((connection.finish_speaking if streaming else connection.send, text))
                ended = False
                for call in calls:
                    name, arguments = call.function.name, _arguments(call.function.arguments)
                    at = clock.ms()
                    if name == "end_call":
                        await recorder.tool(name="end_call", arguments=arguments, result=None, at_ms=at)
                        self._tool_result(call.id, {"ok": True})
                        ended = True
                    elif name == "press_digit":
                        digits = str(arguments.get("digits", ""))
                        await recorder.tool(name="press_digit", arguments={"digits": digits}, result=None, at_ms=at)
                        self._tool_result(call.id, {"pressed": digits})
                        sends.append((connection.press, digits))
                    elif name in self.functions:
                        started = time.monotonic()
                        result, status = await self._call_function(self.functions[name], arguments)
                        await recorder.tool(name=name, arguments=arguments, result=result, at_ms=at,
                                            duration_ms=int((time.monotonic() - started) * 1000), status=status)
                        self._tool_result(call.id, result)
                    else:
                        await recorder.tool(name=name, arguments=arguments, result={"error": "unknown tool"}, at_ms=at,
                                            status="error")
                        self._tool_result(call.id, {"error": f"There is no tool named {name}."})
                for send, payload in sends:
                    reply = await exchange(send, payload, recorder, clock, outcome)
                    if reply is None or reply.ended:
                        break
                    if reply.text:
                        self.messages.append({"role": "user", "content": reply.text})
                else:
                    if not ended:
                        continue
                    outcome.ended_by = "caller"
                break
            outcome.duration_ms = clock.ms()
            return outcome
        finally:
            await self.client.close()

    async def _next(self, *, speak=None):
        """The model's next message. With ``speak``, it is streamed and each piece of its text is
        handed to ``speak`` as it arrives; tool calls are assembled from their streamed parts."""
        try:
            if speak is None:
                completion = await self.client.chat.completions.create(
                    model=self.llm["model"], messages=self.messages, tools=self.tools, seed=SEED, temperature=0.7,
                )
                self._count(completion.usage)
                if not completion.choices:
                    raise CallerError(f"The LLM at {self.llm['base_url']} returned no message.")
                return completion.choices[0].message
            stream = await self._stream()
            content, calls = [], {}
            async for chunk in stream:
                self._count(chunk.usage)  # the last chunk, with no choices, carries the usage
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    content.append(delta.content)
                    await speak(delta.content)
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = part.id or call["id"]
                    if part.function is not None:
                        call["name"] += part.function.name or ""
                        call["arguments"] += part.function.arguments or ""
        except openai.OpenAIError as exc:
            raise CallerError(f"The LLM caller could not get its next message from {self.llm['base_url']}: {exc}. "
                              "Check the LLM settings of the server or the agent.") from None
        return SimpleNamespace(content="".join(content), tool_calls=[
            SimpleNamespace(id=c["id"], function=SimpleNamespace(name=c["name"], arguments=c["arguments"]))
            for _, c in sorted(calls.items())
        ] or None)

    async def _stream(self):
        """A streamed answer, with its usage asked for where the endpoint accepts that."""
        base_url = self.llm["base_url"]
        request = dict(model=self.llm["model"], messages=self.messages, tools=self.tools, seed=SEED, temperature=0.7,
                       stream=True)
        if base_url in _no_stream_usage:
            return await self.client.chat.completions.create(**request)
        try:
            return await self.client.chat.completions.create(**request, stream_options={"include_usage": True})
        except openai.BadRequestError:
            stream = await self.client.chat.completions.create(**request)
            _no_stream_usage.add(base_url)  # only once asking without it worked: the 400 was about it
            return stream

    def _count(self, usage) -> None:
        if usage is not None:
            self.tokens["prompt"] += usage.prompt_tokens or 0
            self.tokens["completion"] += usage.completion_tokens or 0

    def _tool_result(self, call_id: str, result) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)})

    async def _call_function(self, function: Function, arguments: dict) -> tuple[object, str]:
        """POST the call to the function's webhook, signed like the sync probe."""
        from scenarios.sync import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

        body = json.dumps({"type": "assure.tool_call", "function": function.name, "arguments": arguments,
                           "run": self.run_id}).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "AssureAgent/1", TIMESTAMP_HEADER: timestamp}
        if function.secret:
            headers[SIGNATURE_HEADER] = sign(function.secret, timestamp, body)
        try:
            async with self.http.post(function.url, data=body, headers=headers, allow_redirects=False,
                                      timeout=aiohttp.ClientTimeout(total=FUNCTION_TIMEOUT_SECONDS)) as response:
                if 300 <= response.status < 400:
                    return {"error": f"HTTP {response.status}: a redirect, which is not followed"}, "error"
                text = (await read_capped(response)).decode(response.get_encoding(), errors="replace")
                if response.status >= 400:
                    return {"error": f"HTTP {response.status}", "body": text[:500]}, "error"
        except ReplyTooLarge as exc:
            return {"error": f"function result {exc}"}, "error"
        except (aiohttp.ClientError, TimeoutError) as exc:
            refusal = egress.refusal_in(exc)
            return {"error": str(refusal) if refusal else f"could not call {function.url}: {exc or type(exc).__name__}"}, "error"
        try:
            return json.loads(text), "ok"
        except ValueError:
            return text[:2000], "ok"


def _arguments(raw: str | None) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {"_unparsed": raw}
    return value if isinstance(value, dict) else {"value": value}


def _assistant_message(message) -> dict:
    entry = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments or "{}"}}
            for c in message.tool_calls
        ]
    return entry
