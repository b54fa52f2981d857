"""``websocket``: JSON frames both ways; a reply is complete once the target stays quiet for a gap."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from assure import egress
from runs.connectors import (
    MAX_REPLY_BYTES, TURN_TIMEOUT_SECONDS, ConnectorError, Reply, ReplyTooLarge, TargetConnection, TargetUnreachable,
    extract, fill_template, register,
)

IDLE_GAP_SECONDS = 0.5


class WebsocketConnection(TargetConnection):
    def __init__(self, target, context):
        super().__init__(target, context)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> Reply | None:
        try:
            self.ws = await self.context.http.ws_connect(
                self.target["url"], headers=self.context.secrets, timeout=aiohttp.ClientWSTimeout(ws_close=5),
                heartbeat=30, max_msg_size=MAX_REPLY_BYTES,
            )
        except asyncio.TimeoutError:
            raise TargetUnreachable(f"{self.target['url']} did not accept the websocket in time") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise TargetUnreachable(f"{self.target['url']} refused the websocket: HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            refusal = egress.refusal_in(exc)
            raise TargetUnreachable(str(refusal) if refusal else f"could not connect to {self.target['url']}: {exc}") from None
        # A target that greets on connect speaks within the gap.
        greeting = await self._collect(first_timeout=IDLE_GAP_SECONDS)
        return greeting if greeting.text or greeting.ended else None

    async def send(self, text: str) -> Reply:
        template = self.target.get("request_template") or {"session_id": "{{session_id}}", "message": "{{message}}"}
        frame = fill_template(template, {"message": text, "session_id": self.context.session_id})
        try:
            await self.ws.send_str(json.dumps(frame))
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ConnectorError(f"the websocket closed before the message was sent: {exc}") from None
        reply = await self._collect(first_timeout=TURN_TIMEOUT_SECONDS)
        if not reply.text and not reply.ended:
            raise ConnectorError(f"{self.target['url']} sent no reply within {TURN_TIMEOUT_SECONDS:.0f}s")
        return reply

    async def _collect(self, *, first_timeout: float) -> Reply:
        """The frames of one reply: until the target is quiet for a gap. A target that never stops
        sending is cut off at the turn's deadline and its reply's byte cap (frames add up)."""
        parts: list[str] = []
        size = 0
        timeout = first_timeout
        deadline = asyncio.get_running_loop().time() + first_timeout + TURN_TIMEOUT_SECONDS
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise ConnectorError(f"{self.target['url']} kept sending for over {TURN_TIMEOUT_SECONDS:.0f}s "
                                     "without a pause")
            try:
                message = await asyncio.wait_for(self.ws.receive(), min(timeout, remaining))
            except asyncio.TimeoutError:
                if timeout > remaining:
                    continue
                return Reply(" ".join(parts))
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return Reply(" ".join(parts), ended=True)
            if message.type == aiohttp.WSMsgType.ERROR:
                if getattr(self.ws.exception(), "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                    raise ReplyTooLarge()
                raise ConnectorError(f"websocket error: {self.ws.exception()}")
            if message.type == aiohttp.WSMsgType.TEXT:
                size += len(message.data.encode())
                if size > MAX_REPLY_BYTES:
                    raise ReplyTooLarge()
                parts.append(self._text_of(message.data))
                timeout = IDLE_GAP_SECONDS

    def _text_of(self, data: str) -> str:
        try:
            document = json.loads(data)
        except ValueError:
            return data
        if self.target.get("response_path"):
            return extract(document, self.target["response_path"])
        if isinstance(document, dict):
            for key in ("text", "message", "reply", "content"):
                if isinstance(document.get(key), str):
                    return document[key]
        return data

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()


register("chat", "websocket", WebsocketConnection)
