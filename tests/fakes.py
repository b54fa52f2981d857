"""Boundary fakes that speak the real wire protocols on real local sockets (aiohttp servers in a
background thread): an OpenAI-compatible chat-completions server and a websocket chat bot."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import jsonschema
from aiohttp import web


class AiohttpServer:
    """Serves an aiohttp app on 127.0.0.1 from its own thread and event loop."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class FakeOpenAI(AiohttpServer):
    """``POST /v1/chat/completions`` as OpenAI answers it. ``answer(messages)`` returns the
    assistant's text, an int HTTP status to fail with, or ``{"content": str | None,
    "tool_calls": [{"name": ..., "arguments": {...}}]}``.

    Like a real provider it reports ``usage`` (a word count stands in for tokens; each request's
    is kept in ``requests``), streams it last when asked with ``stream_options``, and honours
    ``response_format``: the types named in ``refuse`` get a 400 (a provider without them; so does
    ``stream_options`` when named), and under a format it supports, an answer the format rules
    out cannot be produced (a real model is constrained to the format), so such a test mistake
    answers 500 and lands in ``violations``. ``delay_seconds`` holds every answer back that long
    (a slow model)."""

    def __init__(self, answer, *, refuse: tuple[str, ...] = (), delay_seconds: float = 0.0):
        self.requests: list[dict] = []
        self.streamed_chunks = 0
        self.violations: list[str] = []

        async def completions(request):
            body = await request.json()
            entry = {"body": body, "headers": dict(request.headers)}
            self.requests.append(entry)
            if "stream_options" in refuse and "stream_options" in body:
                return web.json_response({"error": {
                    "message": "Unrecognized request argument supplied: stream_options",
                    "type": "invalid_request_error", "param": "stream_options", "code": None}}, status=400)
            response_format = (body.get("response_format") or {}).get("type")
            if response_format in refuse:
                return web.json_response({"error": {
                    "message": f"Invalid parameter: 'response_format' of type '{response_format}' is not supported "
                               "with this model.",
                    "type": "invalid_request_error", "param": "response_format", "code": None}}, status=400)
            if delay_seconds:
                await asyncio.sleep(delay_seconds)
            result = answer(body["messages"])
            if isinstance(result, int):
                return web.json_response({"error": {"message": "fake failure", "type": "server_error"}}, status=result)
            violation = _format_violation(body.get("response_format"), result)
            if violation:
                self.violations.append(violation)
                return web.json_response({"error": {"message": violation, "type": "server_error"}}, status=500)
            message = {"role": "assistant", "content": result}
            if isinstance(result, dict):
                message = {"role": "assistant", "content": result.get("content"), "tool_calls": [
                    {"id": f"call_{len(self.requests)}_{i}", "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
                    for i, call in enumerate(result.get("tool_calls", []))
                ] or None}
            entry["usage"] = usage = _usage(body["messages"], message)
            if body.get("stream"):
                return await self._stream(request, body, message, usage)
            return web.json_response({
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                             "message": message}],
                "usage": usage,
            })

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        super().__init__(app)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def _stream(self, request, body: dict, message: dict, usage: dict):
        """Server-sent events as OpenAI streams them: the content a word at a time, then each
        tool call whole, then the finish reason, the usage when asked for, and ``[DONE]``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "fake")}

        async def send(payload: dict):
            await response.write(f"data: {json.dumps({**base, **payload})}\n\n".encode())

        async def chunk(delta: dict, finish: str | None = None):
            await send({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        **({"usage": None} if include_usage else {})})

        await chunk({"role": "assistant", "content": ""})
        words = (message.get("content") or "").split(" ")
        for i, word in enumerate(w for w in words if w):
            await chunk({"content": (" " if i else "") + word})
            self.streamed_chunks += 1
        for i, call in enumerate(message.get("tool_calls") or []):
            await chunk({"tool_calls": [{"index": i, **call}]})
        await chunk({}, "tool_calls" if message.get("tool_calls") else "stop")
        if include_usage:
            await send({"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _usage(messages: list[dict], message: dict) -> dict:
    """Token counts as a provider reports them; words stand in for tokens."""
    prompt = sum(len(str(m.get("content") or "").split()) + 1 for m in messages)
    completion = len((message.get("content") or "").split()) + sum(
        len(call["function"]["arguments"].split()) + 1 for call in message.get("tool_calls") or [])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _format_violation(response_format: dict | None, result) -> str | None:
    """Why ``result`` could not be a model's answer under ``response_format``, if it could not."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(result if isinstance(result, str) else "")
    except ValueError:
        return f"fake: {result!r} is not JSON, which {kind} rules out"
    if not isinstance(value, dict):
        return f"fake: {result!r} is not a JSON object, which {kind} rules out"
    if kind == "json_schema":
        try:
            jsonschema.validate(value, response_format["json_schema"]["schema"])
        except jsonschema.ValidationError as exc:
            return f"fake: {result!r} does not match the json_schema: {exc.message}"
    return None


class FakeWebsocketBot(AiohttpServer):
    """A chat bot over a websocket: greets on connect, then answers each JSON frame in ``parts``
    frames (a streamed reply), closing after a frame that says bye."""

    def __init__(self, *, greeting: str | None = "Welcome!", parts: int = 2):
        self.frames: list[dict] = []
        self.closed = threading.Event()  # set when a session ends, whichever side closed it

        async def chat(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            if greeting:
                await ws.send_str(json.dumps({"text": greeting}))
            async for message in ws:
                frame = json.loads(message.data)
                self.frames.append(frame)
                text = frame.get("message", "")
                for i in range(parts):
                    await ws.send_str(json.dumps({"text": f"part{i + 1} of reply to {text}"}))
                    await asyncio.sleep(0.01)
                if "bye" in text:
                    await ws.close()
            self.closed.set()
            return ws

        app = web.Application()
        app.router.add_get("/ws", chat)
        super().__init__(app)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
