"""The egress policy: where the platform may connect on a tenant's behalf.

Every outbound connection to a URL a tenant typed (chat targets, agent LLM endpoints, custom
functions and their probes, the completion webhooks, schedules' Slack webhooks) is made by a client
from this module:

- ``client_session()`` for aiohttp: an ``EgressResolver`` resolves each host once and keeps only
  the addresses the policy allows, so the connection uses exactly the checked addresses (no DNS
  rebinding between check and connect); a guard on every socket refuses literal IP addresses,
  which aiohttp never hands to a resolver.
- ``async_http_client()`` / ``http_client()`` for httpx (the openai SDK, the probe, the webhook):
  a network backend that resolves, checks and connects to the checked address, while TLS still
  verifies the certificate for the host name.

No client here follows a redirect: aiohttp callers pass ``allow_redirects=False``, httpx clients
have ``follow_redirects=False`` and refuse a 3xx even when a library asks to follow it.

The rules: link-local (169.254/16, fe80::/10), cloud metadata, multicast, unspecified, broadcast and
reserved addresses are always refused. Loopback and private ranges (10/8, 172.16/12, 192.168/16,
100.64/10, fc00::/7, 127/8, ::1) are refused unless ``EGRESS_ALLOW`` allows them: comma-separated
CIDRs, host names, or the words ``loopback`` and ``private``. The operator's own configuration is
trusted, never a tenant's: the built-in demo target (``DEMO_TARGET_URL``) and the server's LLM
endpoint (``LLM_BASE_URL``) are the only trusted origins (``trusted_origins``).

A refusal never contacts the address, so it cannot tell anyone what answers there.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpcore
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_MESSAGE = "blocked by the egress policy"

# Cloud instance metadata and host agents (AWS, GCP, Azure, Alibaba, ECS task metadata).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
))
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
))
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
BROADCAST = ipaddress.ip_address("255.255.255.255")
ALWAYS_REFUSED = frozenset({"cloud metadata", "link-local", "multicast", "unspecified", "broadcast", "reserved"})
ALLOW_WORDS = frozenset({"loopback", "private"})
HOST_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")


class EgressRefused(OSError):
    """A connection the policy does not allow; nothing was sent to the address."""

    def __init__(self, detail: str):
        super().__init__(f"{BLOCKED_MESSAGE}: {detail}")


class RedirectRefused(httpx.RequestError):
    """An httpx response was a redirect: reported, never followed."""


def category(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified or (address.version == 4 and address in THIS_NETWORK):
        return "unspecified"
    if address == BROADCAST:
        return "broadcast"
    if address.is_loopback:
        return "loopback"
    if any(address in network for network in PRIVATE_NETWORKS if network.version == address.version):
        return "private"
    if not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class EgressPolicy:
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()
    trusted: frozenset[tuple[str, int]] = frozenset()  # (host, port) of the operator's own endpoints

    def is_trusted(self, host: str, port: int) -> bool:
        return (_normal_host(host), port) in self.trusted

    def refusal(self, host: str | None, port: int, address: str) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None when allowed."""
        if self.is_trusted(address if host is None else host, port):
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "not an IP address"
        kind = category(ip)
        if kind is None:
            return None
        if kind in ALWAYS_REFUSED:
            return kind
        if kind in self.words or (host is not None and _normal_host(host) in self.hosts):
            return None
        if any(ip in network for network in self.networks if network.version == ip.version):
            return None
        return kind


def parse_allow(items: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str], frozenset[str]]:
    """``EGRESS_ALLOW``'s entries as (networks, host names, words); ValueError names a bad entry."""
    networks, hosts, words = [], set(), set()
    for item in items:
        entry = item.strip().lower()
        if entry in ALLOW_WORDS:
            words.add(entry)
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            if "/" in entry or ":" in entry:
                raise ValueError(f"{item!r} is not a valid CIDR") from None
        if not HOST_NAME_RE.match(entry.rstrip(".")):
            raise ValueError(f"{item!r} is not a CIDR, a host name, 'loopback' or 'private'")
        hosts.add(entry.rstrip("."))
    return tuple(networks), frozenset(hosts), frozenset(words)


def trusted_origins() -> frozenset[tuple[str, int]]:
    """The one place that says which endpoints are the operator's, not a tenant's: the built-in
    demo target (served by our own web process) and the server's LLM endpoint."""
    from django.conf import settings

    origins = set()
    for url in (settings.DEMO_TARGET_URL, settings.LLM_BASE_URL):
        if url:
            parts = urlsplit(url)
            if parts.hostname:
                origins.add((_normal_host(parts.hostname), parts.port or (443 if parts.scheme in ("https", "wss") else 80)))
    return frozenset(origins)


def current_policy() -> EgressPolicy:
    from django.conf import settings

    return _policy(tuple(settings.EGRESS_ALLOW), trusted_origins())


@functools.lru_cache(maxsize=8)
def _policy(allow: tuple[str, ...], trusted: frozenset[tuple[str, int]]) -> EgressPolicy:
    networks, hosts, words = parse_allow(allow)
    return EgressPolicy(networks=networks, hosts=hosts, words=words, trusted=trusted)


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _refused(host: str, reasons: Iterable[str]) -> EgressRefused:
    kinds = sorted(set(reasons))
    hint = (" unless its operator allows them (EGRESS_ALLOW)" if set(kinds) <= {"loopback", "private"} else "")
    return EgressRefused(f"{host} is a {' / '.join(kinds)} address, which this deployment does not connect to{hint}")


def static_refusal(url: str) -> str | None:
    """The policy's verdict on ``url`` where no DNS lookup is needed (a literal IP address, or
    ``localhost``); None when the URL is allowed or only a run-time lookup can tell."""
    parts = urlsplit(url)
    host = _normal_host(parts.hostname or "")
    try:
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    except ValueError:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        addresses = ["127.0.0.1", "::1"]
    else:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            return None
    policy = current_policy()
    reasons = [r for r in (policy.refusal(host, port, a) for a in addresses) if r]
    return str(_refused(host, reasons)) if len(reasons) == len(addresses) else None


def refusal_in(exc: BaseException | None) -> BaseException | None:
    """The egress refusal (a blocked address or a refused redirect) behind ``exc``, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (EgressRefused, RedirectRefused)):
            return exc
        nested = getattr(exc, "os_error", None)
        if isinstance(nested, EgressRefused):
            return nested
        exc = exc.__cause__ or exc.__context__
    return None


# aiohttp ---------------------------------------------------------------------------------------

class EgressResolver(AbstractResolver):
    """Resolves once and keeps only the addresses the policy allows; the connector connects to
    exactly these. Addresses allowed because of their host name (a trusted origin, a host name in
    ``EGRESS_ALLOW``) are remembered in ``approved`` for the socket guard."""

    def __init__(self, approved: set[tuple[str, int]]):
        self._resolver = aiohttp.ThreadedResolver()
        self._approved = approved

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        policy = current_policy()
        allowed, reasons = [], []
        for result in results:
            reason = policy.refusal(host, port, result["host"])
            if reason is None:
                allowed.append(result)
                if policy.refusal(None, port, result["host"]) is not None:
                    self._approved.add((result["host"], port))
            else:
                reasons.append(reason)
        if not allowed:
            raise _refused(host, reasons)
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def _guarded_socket(approved: set[tuple[str, int]], addr_info) -> socket.socket:
    """Every socket the connector opens: refuses addresses that never went through the resolver
    (aiohttp connects to a literal IP address without asking it)."""
    family, type_, proto, _, address = addr_info
    host, port = address[0], address[1]
    if (host, port) not in approved:
        reason = current_policy().refusal(None, port, host)
        if reason is not None:
            raise _refused(host, [reason])
    return socket.socket(family=family, type=type_, proto=proto)


def client_session() -> aiohttp.ClientSession:
    """An aiohttp session whose every connection obeys the policy. Callers pass
    ``allow_redirects=False`` on each request.

    Its cookie jar is a ``DummyCookieJar``: the session is shared by every conversation of a
    worker's loop (runs of many workspaces), so a cookie one target sets must never travel with
    another run's requests."""
    approved: set[tuple[str, int]] = set()
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=60, resolver=EgressResolver(approved),
        socket_factory=functools.partial(_guarded_socket, approved),
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


# httpx -----------------------------------------------------------------------------------------

def _checked_addresses(host: str, port: int, infos) -> list[str]:
    policy = current_policy()
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    allowed = [a for a in addresses if policy.refusal(host, port, a) is None]
    if not allowed:
        raise _refused(host, [policy.refusal(host, port, a) for a in addresses] or ["unresolvable"])
    return allowed


class _AsyncEgressBackend(httpcore.AsyncNetworkBackend):
    def __init__(self):
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        try:
            addresses = _checked_addresses(host, port, infos)
        except EgressRefused as refusal:
            raise httpcore.ConnectError(str(refusal)) from refusal
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                       socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError(f"{BLOCKED_MESSAGE}: unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _SyncEgressBackend(httpcore.NetworkBackend):
    def __init__(self):
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        try:
            addresses = _checked_addresses(host, port, infos)
        except EgressRefused as refusal:
            raise httpcore.ConnectError(str(refusal)) from refusal
        last_error: Exception | None = None
        for address in addresses:
            try:
                return self._backend.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                 socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError(f"{BLOCKED_MESSAGE}: unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _transport(transport_class, backend):
    transport = transport_class()
    # httpx (pinned in pyproject.toml) takes no network backend in its transports' constructor;
    # its pool reads this attribute for every new connection. tests/test_egress.py fails if not.
    transport._pool._network_backend = backend
    return transport


async def _refuse_redirect(response: httpx.Response) -> None:
    if response.is_redirect:
        raise RedirectRefused(f"{response.request.url.host} answered HTTP {response.status_code} (a redirect; "
                              "redirects are not followed)", request=response.request)


def _refuse_redirect_sync(response: httpx.Response) -> None:
    if response.is_redirect:
        raise RedirectRefused(f"{response.request.url.host} answered HTTP {response.status_code} (a redirect; "
                              "redirects are not followed)", request=response.request)


class BodyTooLarge(httpx.RequestError):
    """A response body passed the client's byte cap; reading stopped there."""


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, cap: int, request: httpx.Request):
        self.stream, self.cap, self.request = stream, cap, request

    async def __aiter__(self):
        size = 0
        async for chunk in self.stream:
            size += len(chunk)
            if size > self.cap:
                raise BodyTooLarge(f"{self.request.url.host} answered more than {self.cap // 1024} KB",
                                   request=self.request)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """Holds at most ``cap`` bytes of any response body (plus one chunk), whatever the server sends."""

    def __init__(self, transport: httpx.AsyncBaseTransport, cap: int):
        self.transport, self.cap = transport, cap

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.cap:
            await response.aclose()
            raise BodyTooLarge(f"{request.url.host} answered more than {self.cap // 1024} KB", request=request)
        return httpx.Response(status_code=response.status_code, headers=response.headers,
                              stream=_CappedStream(response.stream, self.cap, request),
                              extensions=response.extensions, request=request)

    async def aclose(self) -> None:
        await self.transport.aclose()


# An LLM provider's answer is a few KB; a megabyte is already absurd.
MAX_BODY_BYTES = 1024 * 1024


def async_http_client(*, timeout: float, max_body_bytes: int = MAX_BODY_BYTES) -> httpx.AsyncClient:
    """An httpx client for the openai SDK (``http_client=``): policy-checked connections, a
    redirect is an error even though the SDK asks httpx to follow redirects, and a body over
    ``max_body_bytes`` is ``BodyTooLarge`` (found behind the SDK's error with ``cause_in``)."""
    transport = _CappedTransport(_transport(httpx.AsyncHTTPTransport, _AsyncEgressBackend()), max_body_bytes)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False,
                             event_hooks={"response": [_refuse_redirect]})


def cause_in(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The exception of type ``kind`` in ``exc``'s chain of causes, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def http_client(*, timeout: float, refuse_redirects: bool = True) -> httpx.Client:
    """A blocking httpx client with policy-checked connections. With ``refuse_redirects=False`` a
    3xx comes back as a response (never followed) for the caller to report."""
    hooks = {"response": [_refuse_redirect_sync]} if refuse_redirects else {}
    return httpx.Client(transport=_transport(httpx.HTTPTransport, _SyncEgressBackend()), timeout=timeout,
                        follow_redirects=False, trust_env=False, event_hooks=hooks)
