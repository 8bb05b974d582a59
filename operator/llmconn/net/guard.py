"""Egress at the socket: an httpcore network backend that resolves the host itself, checks
every address against the `EgressPolicy`, and connects to the address it checked.

TLS still verifies the certificate against the host name: httpcore hands the origin's host
name (not the address) to `start_tls` for SNI and hostname checks. So DNS rebinding cannot
walk around the policy: the name is resolved once per connection, and what was checked is
what is dialled.

The backend also marks the network phase (`dns`, then `connect`) on the recorder that the
probe's transport (`llmconn.net.exchange`) puts in `PHASE_RECORDER` around each request, so a
lookup that never answers can be told from a connect that never completes. httpcore's trace
events mark the later phases.

Proxies: behind an HTTP(S) proxy the operator still resolves the target host itself and checks
every address before the request is sent to the proxy. This refuses endpoints that name or
resolve to a denied address as the operator sees it, and host patterns apply as usual. It does
not bind the proxy: the proxy resolves the name again (a name that re-resolves elsewhere
between the two lookups, or a split-horizon DNS, reaches whatever the proxy's own rules
allow). A target the operator cannot resolve (networks where only the proxy resolves names)
is passed on when host patterns permit it, and refused when an allow list has no host
pattern for it. The proxy's own address is the administrator's choice and is not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import anyio
import httpcore2
import httpx2

from llmconn.net import seams
from llmconn.net.egress import EgressPolicy

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Behind a proxy the target may be resolvable only by the proxy: do not wait long for our
# own lookup there (a direct connection has no such shortcut: without an address, no dial).
PROXY_LOOKUP_TIMEOUT = 2.0


class DNSLookupError(Exception):
    """The host name did not resolve."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"lookup of {host} failed: {detail}")
        self.host = host
        self.detail = detail


class EgressDenied(Exception):
    """The egress policy refused the destination; nothing was sent to it."""

    def __init__(self, host: str, ip: str | None, why: str) -> None:
        super().__init__(why)
        self.host = host
        self.ip = ip
        self.why = why


class Phase(StrEnum):
    """The network phase a probe's request is in; a timeout is named by the one that ran out."""

    START = "start"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    REQUEST = "request"
    RESPONSE = "response"
    DONE = "done"  # an answer was read whole


class PhaseRecorder(Protocol):
    """What the backend writes to: a probe's findings (`llmconn.probes.base.Findings`)."""

    phase: Phase
    phase_ms: dict[Phase, float]


# Set around each request of a probe (llmconn.net.exchange), in the task that connects.
PHASE_RECORDER: ContextVar[PhaseRecorder | None] = ContextVar("llmconn_phase", default=None)


def _mark(phase: Phase) -> float:
    if (recorder := PHASE_RECORDER.get()) is not None:
        recorder.phase = phase
    return time.perf_counter()


def _took(phase: Phase, started: float) -> None:
    if (recorder := PHASE_RECORDER.get()) is not None:
        spent = (time.perf_counter() - started) * 1000
        recorder.phase_ms[phase] = recorder.phase_ms.get(phase, 0.0) + spent


async def system_resolver(host: str, port: int) -> list[str]:
    """Addresses of `host` from the system resolver, in its order of preference."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DNSLookupError(host, exc.strerror or str(exc)) from None
    except UnicodeError:
        raise DNSLookupError(host, "the name is not a valid host name") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


@dataclass(frozen=True)
class Guard:
    """Resolution plus policy: the addresses a host may be dialled at."""

    policy: EgressPolicy
    resolver: Resolver = system_resolver

    async def addresses(self, host: str, port: int, *, timed: bool = True) -> list[str]:
        """Resolve once and check every address; any denied address refuses the host (a
        name that mixes allowed and denied answers is not to be trusted).

        `timed`: record the lookup as the `dns` phase time (which the caller subtracts from
        the connect time that spans it; behind a proxy the lookup is outside the connect)."""
        if (ip := _literal_ip(host)) is not None:
            candidates = [ip]
        else:
            started = _mark(Phase.DNS)
            try:
                candidates = list(await self.resolver(host, port))
            finally:
                if timed:
                    _took(Phase.DNS, started)
            if not candidates:
                raise DNSLookupError(host, "no addresses")
        for candidate in candidates:
            if (why := self.policy.check(host, candidate)) is not None:
                raise EgressDenied(host, candidate, why)
        return candidates

    async def check_via_proxy(self, host: str, port: int) -> None:
        """The check made before a request goes to a proxy (see the module docstring)."""
        try:
            async with asyncio.timeout(PROXY_LOOKUP_TIMEOUT):
                await self.addresses(host, port, timed=False)
        except (DNSLookupError, TimeoutError):
            if (why := self.policy.check(host, None)) is not None:
                raise EgressDenied(host, None, why) from None


class _ClosingStream(httpcore2.AsyncNetworkStream):
    """A TCP stream (or the TLS stream over it) that is closed when its TLS handshake is
    cancelled, and that answers the pool's idle check from the socket it keeps.

    httpcore closes the socket when a handshake fails with an exception, but not when it is
    cancelled (a probe's timeout): the socket would stay open until garbage collection.

    Before each request, httpcore's pool asks every idle keep-alive connection whether its
    socket is readable (the server closed it). anyio answers that by building the mapping of
    all the stream's attributes first: with dozens of idle connections, the largest single
    cost of a probe at 10,000 connections (docs/development.md, "Where the CPU goes"). The
    raw socket is looked up once here, and polled (`_readable`)."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream, raw: socket.socket | None = None):
        self._inner = inner
        self._socket = raw if raw is not None else inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._inner.aclose()
            raise
        return _ClosingStream(tls, self._socket)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore network backend that dials only addresses the egress policy permits."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await self._guard.addresses(host, port)
        _mark(Phase.CONNECT)
        failure: Exception | None = None
        for address in addresses:
            try:
                # The checked address, never the name: no second lookup to rebind.
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                failure = exc
            else:
                return _ClosingStream(stream)
        assert failure is not None  # addresses is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not used by probes")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool built on `GuardedBackend`."""

    def __init__(self, guard: Guard, ssl_context: ssl.SSLContext, limits: httpx2.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # Built as httpx builds it, plus the backend httpx gives no argument for.
        seams.replace_pool(
            self,
            httpcore2.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=GuardedBackend(guard),
                # HTTP/2 where the provider offers it (TLS + ALPN): one multiplexed connection per
                # origin instead of a pool whose idle connections are each polled per request.
                http1=True,
                http2=True,
            ),
        )


class ProxiedTransport(httpx2.AsyncHTTPTransport):
    """httpx's proxy transport, checking the target against the policy before sending."""

    def __init__(
        self, guard: Guard, proxy: str, ssl_context: ssl.SSLContext, limits: httpx2.Limits
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits, proxy=proxy)
        self._guard = guard

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        await self._guard.check_via_proxy(host, port)
        return await super().handle_async_request(request)


def _readable(sock: socket.socket) -> bool:
    """Whether a socket has something to read (or is closed: a read would return at once)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed, or no descriptor: a read would end at once
        return True
