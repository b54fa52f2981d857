"""Target connections: how the conversation engine talks to the system under test.

One module per connector kind, each behind ``TargetConnection``, each raising ``ConnectorError``
(``TargetUnreachable`` when the session cannot be opened at all). Voice connections are
registered by the telephony app when it is ready; ``runs`` knows voice only through this registry.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from assure import egress

TURN_TIMEOUT_SECONDS = 30.0
# What one reply (or one function result) may weigh; more is an error, never buffered whole.
MAX_REPLY_BYTES = 256 * 1024


class ConnectorError(Exception):
    """The target failed to answer. ``permanent``: retrying the same request will not help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class TargetUnreachable(ConnectorError):
    """The session could not be opened: refused, DNS, timeout, or a 5xx on the first exchange."""


def failure(message: str, *, first_exchange: bool, cause: BaseException | None = None) -> ConnectorError:
    """A failed exchange: on the first one the session never opened, so the target is unreachable.

    A connection the egress policy refused is always unreachable, and its message says only that
    (the address was never contacted, so there is nothing to tell about it)."""
    refusal = egress.refusal_in(cause)
    if isinstance(refusal, egress.EgressRefused):
        return TargetUnreachable(str(refusal))
    return TargetUnreachable(message) if first_exchange else ConnectorError(message)


class ReplyTooLarge(ConnectorError):
    def __init__(self, cap: int = MAX_REPLY_BYTES):
        super().__init__(f"reply over {cap // 1024} KB", permanent=True)


async def read_capped(response, *, cap: int = MAX_REPLY_BYTES) -> bytes:
    """An aiohttp response's body, or ``ReplyTooLarge`` as soon as it passes ``cap`` bytes: at
    most ``cap`` + one chunk is ever held."""
    if response.content_length is not None and response.content_length > cap:
        raise ReplyTooLarge(cap)
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise ReplyTooLarge(cap)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Reply:
    text: str
    ended: bool = False  # the target ended the conversation
    # The target's response time, where the connection measures it better than the engine's clock
    # around ``send``: on a call, from the end of our caller's speech to the target's first words.
    latency_ms: int | None = None


@dataclass
class ConnectionContext:
    """What a connection needs besides the target: shared clients and the session id."""

    session_id: str
    http: Any  # aiohttp.ClientSession shared by every conversation of the event loop
    secrets: dict = field(default_factory=dict)  # the live target's headers (never snapshotted)


class TargetConnection(ABC):
    def __init__(self, target: dict, context: ConnectionContext):
        self.target = target
        self.context = context

    async def open(self) -> Reply | None:
        """Open the session; returns the target's greeting when it speaks first."""
        return None

    @abstractmethod
    async def send(self, text: str) -> Reply: ...

    async def press(self, digits: str) -> Reply:
        """Chat targets receive key presses as a message; voice connections send DTMF."""
        return await self.send(digits)

    async def listen(self) -> Reply | None:
        """Wait for the target to speak without saying anything first (a scripted ``expect`` before
        any reply). A chat target only ever answers messages, so there is nothing to wait for."""
        return None

    async def close(self) -> None:
        return None


_REGISTRY: dict[tuple[str, str], Callable[..., TargetConnection]] = {}


def register(channel: str, kind: str, factory: Callable[..., TargetConnection]) -> None:
    _REGISTRY[(channel, kind)] = factory


def connection_for(target: dict, context: ConnectionContext) -> TargetConnection:
    from runs.connectors import demo, http_json, openai_chat, websocket  # noqa: F401  (they register)

    factory = _REGISTRY.get((target["channel"], target["kind"]))
    if factory is None:
        raise ConnectorError(
            f"No {target['channel']} connector for targets of kind {target['kind']!r} is installed in this "
            "deployment.",
            permanent=True,
        )
    return factory(target, context)


def fill_template(template: Any, values: dict[str, str]) -> Any:
    """Replace ``{{name}}`` placeholders inside every string value of a JSON template."""
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{{" + name + "}}", value)
        return template
    if isinstance(template, dict):
        return {key: fill_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_template(value, values) for value in template]
    return template


@functools.lru_cache(maxsize=256)
def compiled_path(path: str):
    """A parsed JSONPath. Parsing runs a PLY parser (milliseconds of CPU): once per path, not per reply."""
    from jsonpath_ng.ext import parse

    return parse(path)


def extract(document: Any, path: str) -> str:
    """The text at JSONPath ``path`` in ``document``; several matches are joined."""
    matches = [m.value for m in compiled_path(path).find(document)]
    if not matches:
        raise ConnectorError(f"The reply has nothing at {path}: {json.dumps(document)[:300]}", permanent=True)
    return " ".join(v if isinstance(v, str) else json.dumps(v) for v in matches)
