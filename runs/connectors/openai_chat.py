"""``openai_chat``: the target is an OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

import asyncio

import openai

from assure import egress
from runs.connectors import (
    MAX_REPLY_BYTES, TURN_TIMEOUT_SECONDS, ConnectorError, Reply, ReplyTooLarge, TargetConnection, failure, register,
)


class OpenAIChatConnection(TargetConnection):
    def __init__(self, target, context):
        super().__init__(target, context)
        headers = dict(context.secrets)
        authorization = headers.pop("Authorization", "")
        api_key = authorization.removeprefix("Bearer ").strip() or "not-needed"
        self.client = openai.AsyncOpenAI(
            base_url=target["url"], api_key=api_key, default_headers=headers or None,
            timeout=TURN_TIMEOUT_SECONDS, max_retries=0,
            http_client=egress.async_http_client(timeout=TURN_TIMEOUT_SECONDS, max_body_bytes=MAX_REPLY_BYTES),
        )
        self.messages: list[dict] = []

    async def send(self, text: str) -> Reply:
        first = not self.messages
        self.messages.append({"role": "user", "content": text})
        try:
            # httpx's timeout is per read; the deadline bounds the whole exchange (a slow drip).
            completion = await asyncio.wait_for(
                self.client.chat.completions.create(model=self.target["model"], messages=self.messages),
                TURN_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            raise failure(first_exchange=first,
                          message=f"{self.target['url']} did not answer within {TURN_TIMEOUT_SECONDS:.0f}s") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            if egress.cause_in(exc, egress.BodyTooLarge):
                raise ReplyTooLarge() from None
            refusal = egress.refusal_in(exc)
            raise failure(first_exchange=first, cause=exc,
                          message=str(refusal) if refusal else f"could not reach {self.target['url']}: {exc}") from None
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise failure(first_exchange=first, message=f"{self.target['url']} answered HTTP {exc.status_code}: {exc.message}") from None
            raise ConnectorError(f"{self.target['url']} refused the request with HTTP {exc.status_code}: {exc.message}", permanent=True) from None
        choice = completion.choices[0] if completion.choices else None
        content = (choice.message.content or "") if choice else ""
        self.messages.append({"role": "assistant", "content": content})
        return Reply(text=content)


    async def close(self) -> None:
        await self.client.close()


register("chat", "openai_chat", OpenAIChatConnection)
