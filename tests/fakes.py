"""Boundary fakes that speak the real wire protocols on real local sockets (aiohttp servers in a
background thread): an OpenAI-compatible chat-completions server and a websocket chat bot."""

from __future__ import annotations

import asyncio
import json
import threading
import time

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
    "tool_calls": [{"name": ..., "arguments": {...}}]}``."""

    def __init__(self, answer):
        self.requests: list[dict] = []
        self.streamed_chunks = 0

        async def completions(request):
            body = await request.json()
            self.requests.append({"body": body, "headers": dict(request.headers)})
            result = answer(body["messages"])
            if isinstance(result, int):
                return web.json_response({"error": {"message": "fake failure", "type": "server_error"}}, status=result)
            message = {"role": "assistant", "content": result}
            if isinstance(result, dict):
                message = {"role": "assistant", "content": result.get("content"), "tool_calls": [
                    {"id": f"call_{len(self.requests)}_{i}", "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
                    for i, call in enumerate(result.get("tool_calls", []))
                ] or None}
            if body.get("stream"):
                return await self._stream(request, body, message)
            return web.json_response({
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                             "message": message}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        super().__init__(app)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def _stream(self, request, body: dict, message: dict):
        """Server-sent events as OpenAI streams them: the content a word at a time, then each
        tool call whole, then the finish reason and ``[DONE]``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "fake")}

        async def chunk(delta: dict, finish: str | None = None):
            payload = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        words = (message.get("content") or "").split(" ")
        for i, word in enumerate(w for w in words if w):
            await chunk({"content": (" " if i else "") + word})
            self.streamed_chunks += 1
        for i, call in enumerate(message.get("tool_calls") or []):
            await chunk({"tool_calls": [{"index": i, **call}]})
        await chunk({}, "tool_calls" if message.get("tool_calls") else "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


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
