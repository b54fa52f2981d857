"""``http_json``: POST a JSON template with the session id and the message; read the reply by JSONPath."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import yarl

from runs.connectors import (
    TURN_TIMEOUT_SECONDS, ConnectorError, Reply, TargetConnection, compiled_path, extract, failure,
    fill_template, read_capped, register,
)


TURN_TIMEOUT = aiohttp.ClientTimeout(total=TURN_TIMEOUT_SECONDS)


class HttpJsonConnection(TargetConnection):
    end_path: str | None = None  # JSONPath of a boolean "conversation over" flag, where a target has one

    def __init__(self, target, context):
        super().__init__(target, context)
        self.exchanges = 0
        # The worker's HTTP session is shared by every conversation and keeps no cookies; a bot that
        # keeps its conversation in a cookie gets it back from this jar, which lives and dies with
        # the run. ``unsafe``: bots are often reached by IP address.
        self.cookies = aiohttp.CookieJar(unsafe=True, quote_cookie=False)
        self.parsed_url = yarl.URL(self.url)  # parsed once, not on every message

    @property
    def url(self) -> str:
        return self.target["url"]

    async def send(self, text: str) -> Reply:
        body = fill_template(self.target["request_template"], {"message": text, "session_id": self.context.session_id})
        first = self.exchanges == 0
        self.exchanges += 1
        try:
            # ``total`` bounds the whole exchange, body included: a slow-drip reply cannot hold the
            # conversation past it.
            async with self.context.http.post(
                self.parsed_url, json=body, headers=self.context.secrets, allow_redirects=False,
                # Only a jar that holds cookies is filtered: aiohttp builds a cookie jar of its own
                # for every request given cookies, empty or not.
                cookies=self.cookies.filter_cookies(self.parsed_url) if len(self.cookies) else None,
                timeout=TURN_TIMEOUT,
            ) as response:
                self.cookies.update_cookies(response.cookies, response.url)
                status = response.status
                if 300 <= status < 400:
                    raise failure(first_exchange=first, message=f"{self.url} answered HTTP {status} (a redirect; "
                                  "redirects are not followed: give the final URL)")
                payload = await read_capped(response)
        except asyncio.TimeoutError:
            raise failure(first_exchange=first, message=f"{self.url} did not answer within {TURN_TIMEOUT_SECONDS:.0f}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise failure(first_exchange=first, message=f"could not connect to {self.url}: {exc.os_error or exc}",
                          cause=exc) from None
        except aiohttp.ClientError as exc:
            raise failure(first_exchange=first, message=f"request to {self.url} failed: {exc}") from None
        if status >= 500:
            raise failure(first_exchange=first, message=f"{self.url} answered HTTP {status}: {payload[:200].decode(errors='replace')}")
        if status >= 400:
            raise ConnectorError(
                f"{self.url} refused the message with HTTP {status}: {payload[:200].decode(errors='replace')}",
                permanent=True,
            )
        try:
            document = json.loads(payload)
        except ValueError:
            raise ConnectorError(f"{self.url} answered with something that is not JSON: {payload[:200]!r}", permanent=True) from None
        ended = bool(self.end_path and _flag(document, self.end_path))
        return Reply(text=extract(document, self.target["response_path"]), ended=ended)



def _flag(document, path: str) -> bool:
    return any(m.value is True for m in compiled_path(path).find(document))


register("chat", "http_json", HttpJsonConnection)
