"""The probe behind a custom function's sync status: one signed POST to the function's webhook.

A function is usable in runs only once its webhook has answered the probe with any 2xx status.
The probe is an ordinary HTTPS request, so customers can tell it apart from tool calls and verify
that it comes from AssureAgent.

The request
-----------
``POST <the function's URL>`` with these headers::

    Content-Type: application/json
    User-Agent: AssureAgent-sync/1
    X-Assure-Timestamp: 1767225600
    X-Assure-Signature: sha256=5d41402abc4b2a76b9719d911017c592...

and this body (UTF-8 JSON)::

    {"type": "assure.probe", "function": "book_slot",
     "parameters": {"type": "object", "properties": {...}}, "sent_at": "2026-01-01T00:00:00Z"}

Redirects are not followed: give the final URL. The webhook has ``PROBE_TIMEOUT_SECONDS`` (10 s)
to answer; the body of the answer is ignored unless the status is an error, in which case its first
200 characters are shown next to the function.

The signature
-------------
``X-Assure-Timestamp`` is the time the probe was sent, in whole Unix seconds. The signature is the
hex HMAC-SHA256, keyed with the function's secret (UTF-8), of the timestamp, a full stop, and the
raw request body exactly as received (before any JSON parsing)::

    signed = timestamp + "." + raw_body
    X-Assure-Signature: "sha256=" + hex(HMAC_SHA256(key=secret, message=signed))

To verify: recompute it from the raw body and compare in constant time (``hmac.compare_digest``);
also reject timestamps more than a few minutes from your clock, so a captured request cannot be
replayed later. ``verify_signature`` below does exactly that, and is what our tests check against.
A function with a blank secret is probed without ``X-Assure-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from assure import egress

# Module-level so tests can make it small; read at each probe.
PROBE_TIMEOUT_SECONDS = 10.0
USER_AGENT = "AssureAgent-sync/1"
TIMESTAMP_HEADER = "X-Assure-Timestamp"
SIGNATURE_HEADER = "X-Assure-Signature"
PROBE_TYPE = "assure.probe"
EXCERPT_CHARS = 200
# Enough of an error answer for the excerpt, however much the webhook sends.
MAX_ERROR_BODY_BYTES = 4096


class ProbeError(Exception):
    """The webhook did not accept the probe. The message says what went wrong and what to check;
    ``permanent`` is True when trying again unchanged cannot help (the webhook refused the probe),
    False when it may (unreachable, timed out, a server error)."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Assure-Signature`` value for ``body`` sent at ``timestamp`` (see the module docstring)."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes | str,
    header: str | None,
    *,
    tolerance_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """True if ``header`` (the ``X-Assure-Signature`` value) signs ``body`` at ``timestamp`` with
    ``secret``. With ``tolerance_seconds``, the timestamp must also lie within that many seconds of
    ``now`` (default: this machine's clock)."""
    if not secret or not header or not timestamp:
        return False
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if tolerance_seconds is not None and abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hmac.compare_digest(sign(secret, str(timestamp), raw), header.strip())


def probe_body(*, name: str, parameters: dict, sent_at: int) -> bytes:
    payload = {
        "type": PROBE_TYPE,
        "function": name,
        "parameters": parameters,
        "sent_at": datetime.fromtimestamp(sent_at, UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def probe(*, url: str, name: str, parameters: dict, secret: str) -> None:
    """POST the signed probe to ``url``; return on a 2xx answer, raise ``ProbeError`` otherwise.

    Blocks for up to ``PROBE_TIMEOUT_SECONDS`` per network step: never call it inside a database
    transaction.
    """
    timeout = PROBE_TIMEOUT_SECONDS
    timestamp = int(time.time())
    body = probe_body(name=name, parameters=parameters, sent_at=timestamp)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, str(timestamp), body)
    try:
        with egress.http_client(timeout=timeout, refuse_redirects=False) as client:
            with client.stream("POST", url, content=body, headers=headers) as response:
                if response.is_success:
                    return
                excerpt = _read_excerpt(response)
    except httpx.TimeoutException as exc:
        raise _timeout_error(url, exc, timeout) from None
    except httpx.ConnectError as exc:
        refusal = egress.refusal_in(exc)
        if refusal is not None:
            # Never contacted: the same answer whatever listens (or not) at that address.
            raise ProbeError(f"could not connect to {url}: {refusal}.", permanent=True) from None
        raise _connect_error(url, exc) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ProbeError(
            f"{url} broke off the probe ({exc or type(exc).__name__}) — check the webhook's logs, then retry.",
            permanent=False,
        ) from None
    raise _status_error(url, response, excerpt)


def _read_excerpt(response: httpx.Response) -> str:
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= MAX_ERROR_BODY_BYTES:
            break
    text = " ".join(data.decode(response.encoding or "utf-8", errors="replace").split())
    return text[:EXCERPT_CHARS]


def _status_error(url: str, response: httpx.Response, excerpt: str) -> ProbeError:
    code = response.status_code
    answered = f"{url} answered HTTP {code}: {excerpt}" if excerpt else f"{url} answered HTTP {code} with no body"
    if 300 <= code < 400:
        location = response.headers.get("Location", "")
        where = f" to {location}" if location else ""
        return ProbeError(f"{answered} — it redirects{where}; use the final URL (redirects are not followed).",
                          permanent=True)
    if code in (401, 403):
        return ProbeError(f"{answered} — check that the function's secret is the one your webhook verifies "
                          f"{SIGNATURE_HEADER} with.", permanent=True)
    if code in (404, 405, 410):
        return ProbeError(f"{answered} — check the URL's path, and that the webhook accepts POST.", permanent=True)
    if code in (408, 425, 429) or code >= 500:
        return ProbeError(f"{answered} — the webhook is failing or overloaded; check its logs, then retry.",
                          permanent=False)
    return ProbeError(f"{answered} — the webhook must answer the {PROBE_TYPE} request with a 2xx status.",
                      permanent=True)


def _host_port(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or url, f"{parts.hostname}:{port}"


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _connect_error(url: str, exc: httpx.ConnectError) -> ProbeError:
    host, address = _host_port(url)
    causes = list(_causes(exc))
    if any(isinstance(c, socket.gaierror) for c in causes):
        return ProbeError(f"could not connect to {url}: the host name {host} does not resolve (DNS) — check the "
                          "host name in the URL.", permanent=False)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return ProbeError(f"could not connect to {address}: connection refused — check the URL's host and port, "
                          "and that the webhook is running and reachable from AssureAgent's workers.",
                          permanent=False)
    tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return ProbeError(f"could not connect to {address}: the TLS handshake failed ({reason}) — check the "
                          "webhook's certificate: it must be valid for the host and signed by a public authority.",
                          permanent=False)
    return ProbeError(f"could not connect to {address}: {exc or type(exc).__name__} — check the URL, and that the "
                      "webhook is reachable from AssureAgent's workers.", permanent=False)


def _timeout_error(url: str, exc: httpx.TimeoutException, timeout: float) -> ProbeError:
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        _, address = _host_port(url)
        return ProbeError(f"could not connect to {address}: timed out after {timeout:g}s — check that the host is "
                          "reachable (a firewall may be dropping the connection).", permanent=False)
    return ProbeError(f"{url} timed out after {timeout:g}s — the webhook must answer the probe within "
                      f"{timeout:g}s; check that it is not stuck, then retry.", permanent=False)
