"""The AssureAgent v1 API over HTTP, with every failure turned into a message a CI log can act on.

Each failure is a ``CliError`` that carries the exit code it stands for: the server refusing what
was asked (bad token, unknown id, rejected input, wrong address) is bad input (2); a server that
cannot be reached or fails on its side is a platform failure (4), which a CI job may retry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from assure_cli import __version__
from assure_cli.exits import BAD_INPUT, PLATFORM

# Reads that fail for a reason that may pass (connection refused during a deploy, a 502 from the
# proxy, the API throttle) are tried again this many times, waiting a little longer each time.
READ_ATTEMPTS = 4
LONGEST_RETRY_WAIT = 30.0


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ServerUnavailable(CliError):
    """The server could not be reached, or failed on its side: worth trying again later."""

    def __init__(self, message: str):
        super().__init__(message, PLATFORM)


def api_root(url: str) -> str:
    """``https://assure.example.com`` (or the same with ``/api/v1/``) → its v1 API root."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"ASSURE_URL must be the product's http:// or https:// address, not {url!r}.")
    base = url.rstrip("/")
    if base.endswith("/api/v1"):
        base = base[: -len("/api/v1")]
    return base + "/api/v1/"


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        self.root = api_root(url)
        self.site = self.root[: -len("api/v1/")]
        self.http = httpx.Client(
            base_url=self.root,
            headers={"Authorization": f"Token {token}", "Accept": "application/json",
                     "User-Agent": f"assureagent-cli/{__version__}"},
            timeout=timeout,
            # A redirect would turn a POST into a GET (and could carry the token elsewhere): report it.
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def page_url(self, path: str) -> str:
        return self.site + path.lstrip("/")

    # Requests -----------------------------------------------------------------------------------

    def get(self, path: str, *, params: dict | None = None, not_found: str | None = None) -> dict:
        return self._json(self._send("GET", path, params=params, not_found=not_found), path)

    def get_bytes(self, path: str, *, not_found: str | None = None) -> bytes:
        return self._send("GET", path, not_found=not_found).content

    def post(self, path: str, *, json: dict | None = None, content: bytes | None = None,
             content_type: str | None = None, params: dict | None = None, not_found: str | None = None) -> dict:
        headers = {"Content-Type": content_type} if content_type else None
        response = self._send("POST", path, json=json, content=content, headers=headers, params=params,
                              not_found=not_found)
        return self._json(response, path)

    def paginate(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """Every item of a paged list, following ``next`` links (each one on this same server)."""
        offset = 0
        while True:
            page = self.get(path, params={**(params or {}), "limit": 500, "offset": offset})
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise CliError(f"{self.root}{path} did not answer with a paged list: is ASSURE_URL the product's address?")
            yield from results
            if not page.get("next") or not results:
                return
            offset += len(results)

    # Internals ----------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, not_found: str | None, **kwargs) -> httpx.Response:
        """One request, tried again where that is safe: reads on any passing failure; a POST only
        when the server certainly did not act on it (no connection, or throttled)."""
        url = self.root + path
        for attempt in range(1, READ_ATTEMPTS + 1):
            retry_after = min(2.0 ** (attempt - 1), LONGEST_RETRY_WAIT)
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure: CliError = ServerUnavailable(
                    f"Cannot reach the AssureAgent server at {self.site} ({exc or type(exc).__name__}): "
                    "check ASSURE_URL and that the server is up.")
            except httpx.TransportError as exc:
                failure = ServerUnavailable(f"The connection to {self.site} failed during {method} {url}: "
                                            f"{exc or type(exc).__name__}.")
                if method != "GET":
                    raise failure from None
            else:
                if response.status_code == 429:
                    failure = ServerUnavailable(f"The server kept throttling this token (429) on {method} {url}.")
                    retry_after = _retry_after(response, retry_after)
                elif response.status_code >= 500 and method == "GET":
                    failure = _error_for(response, method, url, not_found)
                else:
                    if response.is_success:
                        return response
                    raise _error_for(response, method, url, not_found)
            if attempt == READ_ATTEMPTS:
                raise failure
            time.sleep(retry_after)
        raise AssertionError("unreachable")

    def _json(self, response: httpx.Response, path: str):
        if "json" not in response.headers.get("Content-Type", ""):
            raise CliError(f"{self.root}{path} answered with {response.headers.get('Content-Type') or 'no content type'}, "
                           "not JSON: is ASSURE_URL the product's address?")
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{self.root}{path} answered with malformed JSON.") from None


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", default)), 0.5), LONGEST_RETRY_WAIT)
    except ValueError:
        return default


def _error_for(response: httpx.Response, method: str, url: str, not_found: str | None) -> CliError:
    status = response.status_code
    detail = _detail(response)
    if 300 <= status < 400:
        return CliError(f"The server redirected {method} {url} to {response.headers.get('Location', '?')}: "
                        "set ASSURE_URL to the address it redirects to (https:// if the site uses it).")
    if status == 401:
        return CliError("The server refused the token (401): check ASSURE_TOKEN. It must be a workspace API token "
                        "(`manage.py create_api_token <workspace> --name ci`, or the admin's API tokens).")
    if status == 403:
        return CliError(f"The token may not do this (403) on {method} {url}" + (f": {detail}" if detail else "."))
    if status == 404:
        if "json" not in response.headers.get("Content-Type", ""):
            return CliError(f"The server has no {url} (404): is ASSURE_URL the product's base address, "
                            "and is the server a version with this endpoint?")
        return CliError(not_found or f"Not found (404): {url}" + (f" ({detail})" if detail else "") +
                        "; ids are those of the token's workspace.")
    if status >= 500:
        return ServerUnavailable(f"The server failed (HTTP {status}) on {method} {url}; "
                                 "try again, or look at the server's logs.")
    if status == 413:
        return CliError(f"The server refused the request as too large (413) on {method} {url}.")
    return CliError(f"The server refused {method} {url} ({status})" + (f": {detail}" if detail else "."))


def _detail(response: httpx.Response) -> str:
    """The server's explanation: DRF's ``{"detail": ...}`` or ``{"field": ["message", ...]}``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str) and len(body) == 1:
            return body["detail"]
        return "; ".join(f"{field}: {_flatten(messages)}" for field, messages in body.items())
    return _flatten(body)


def _flatten(value) -> str:
    if isinstance(value, list):
        return " ".join(_flatten(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_flatten(item)}" for key, item in value.items())
    return str(value)
