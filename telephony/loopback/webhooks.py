"""Signed webhooks, as Twilio sends them.

Every request the emulator makes to the product carries ``X-Twilio-Signature``, computed with the
twilio SDK's own ``RequestValidator.compute_signature`` over the exact URL and the form fields, so
the product's validation is exercised for real. A GET webhook carries its fields in the query
string and is signed over the full URL with no form fields, as Twilio does.

Two ways to send:
- ``WebhookClient.request``: wait for the answer (the voice webhook and the ``<Connect action>``,
  whose TwiML matters).
- ``CallbackQueue``: fire-and-forget callbacks of one call (status and recording callbacks), sent in
  order from their own task so a slow product never holds up the call's conversation.

A webhook that fails (network error, timeout, or an answer other than 2xx/3xx) is logged and tried
once more; answers are read up to ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 15.0
RETRY_DELAY_SECONDS = 0.25
MAX_ANSWER_BYTES = 64 * 1024
MAX_QUEUED_CALLBACKS = 100


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400


class WebhookClient:
    def __init__(self, *, session: aiohttp.ClientSession, auth_token: str):
        self._session = session
        self._validator = RequestValidator(auth_token)

    def signature(self, url: str, params: dict[str, str]) -> str:
        return self._validator.compute_signature(url, params)

    async def request(self, url: str, params: dict[str, str], *, method: str = "POST") -> WebhookAnswer | None:
        """Send one webhook, retrying once. Returns the last answer (check ``ok``), or None when the
        product never answered."""
        for attempt in (1, 2):
            answer = await self._send(url, params, method)
            if answer is not None and answer.ok:
                return answer
            if attempt == 1:
                log.warning("Webhook %s %s failed (%s); retrying once", method, url, _describe(answer))
                await asyncio.sleep(RETRY_DELAY_SECONDS)
        log.error("Webhook %s %s failed twice (%s); giving up", method, url, _describe(answer))
        return answer

    async def _send(self, url: str, params: dict[str, str], method: str) -> WebhookAnswer | None:
        if method == "GET":
            if params:
                url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
            body, signed_params = None, {}
        else:
            body, signed_params = params, params
        headers = {
            "X-Twilio-Signature": self.signature(url, signed_params),
            "User-Agent": "TwilioProxy/1.1 (loopback)",
            "Accept": "*/*",
        }
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                return WebhookAnswer(response.status, raw.decode("utf-8", errors="replace"))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            log.debug("Webhook %s %s: %r", method, url, error)
            return None


class CallbackQueue:
    """One call's callbacks, delivered in order by a task of their own."""

    def __init__(self, webhooks: WebhookClient, *, on_sent: Callable[[str, str, WebhookAnswer | None], None]):
        self._webhooks = webhooks
        self._on_sent = on_sent
        self._queue: asyncio.Queue[tuple[str, str, dict[str, str], str] | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def send(self, kind: str, url: str, params: dict[str, str], *, method: str = "POST") -> None:
        if self._queue.qsize() >= MAX_QUEUED_CALLBACKS:
            log.error("Dropping %s callback to %s: %d callbacks already queued", kind, url, MAX_QUEUED_CALLBACKS)
            return
        self._queue.put_nowait((kind, url, params, method))
        if self._task is None:
            self._task = asyncio.create_task(self._deliver(), name="loopback-callbacks")

    async def close(self) -> None:
        """Wait until every queued callback has been delivered (or given up on)."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _deliver(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, url, params, method = item
            answer = await self._webhooks.request(url, params, method=method)
            self._on_sent(kind, url, answer)


def _describe(answer: WebhookAnswer | None) -> str:
    return "no answer" if answer is None else f"HTTP {answer.status}"
