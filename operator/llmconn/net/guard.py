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
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import httpcore2
import httpx2

from llmconn.net import seams
from llmconn.net.egress import EgressPolicy

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_T = TypeVar("_T")

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


# A connection's bytes held unread before it stops reading from the socket (a body larger
# than this waits in the kernel until the probe reads on; the body's own cap is bodies.py's).
_HIGH_WATER = 256 * 1024


class _Connection(asyncio.Protocol):
    """One TCP connection's protocol (and the TLS transport's over it, after `start_tls`): the
    bytes received and not yet read, whether the peer ended it, and a waiter to wake."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False  # the peer's EOF, or the connection lost
        self.error: BaseException | None = None
        self.writable = True
        # A read waiting for bytes, a write waiting for room: apart, as HTTP/2 runs both.
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        _wake(self._reader)

    def eof_received(self) -> bool:
        self.ended = True
        _wake(self._reader)
        return False  # and close

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended, self.error, self.writable = True, exc, True
        _wake(self._reader)
        _wake(self._writer)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        _wake(self._writer)

    async def readable(self) -> None:
        """Until bytes come, or the end."""
        self._reader = asyncio.get_running_loop().create_future()
        try:
            await self._reader
        finally:
            self._reader = None

    async def drained(self) -> None:
        """Until the transport takes writes again, or the end."""
        self._writer = asyncio.get_running_loop().create_future()
        try:
            await self._writer
        finally:
            self._writer = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _within(timeout: float | None, step: Awaitable[_T]) -> _T:
    if timeout is None:
        return await step
    async with asyncio.timeout(timeout):
        return await step


class _Stream(httpcore2.AsyncNetworkStream):
    """httpcore's network stream on asyncio's own transports: the probes' only one.

    In place of httpcore's anyio backend, which yields to the event loop on every read and
    write, wraps each in a cancel scope, and builds a mapping of all the stream's attributes
    to answer whether an idle keep-alive connection is readable (docs/development.md, "Where
    the CPU goes"). Here the protocol knows whether the peer ended the connection, without a
    system call.

    A TLS handshake that fails or is cancelled (a probe's timeout) ends the connection at once
    (asyncio's `start_tls` closes the transport; it is aborted here too, so that no close
    handshake waits on a peer that may never answer)."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        conn = self._conn
        try:
            while not conn.buffer:
                if conn.ended:
                    if conn.error is not None:
                        raise httpcore2.ReadError(str(conn.error)) from conn.error
                    return b""
                await _within(timeout, conn.readable())
        except TimeoutError as exc:
            raise httpcore2.ReadTimeout(str(exc)) from exc
        data = bytes(conn.buffer[:max_bytes])
        del conn.buffer[:max_bytes]
        if len(conn.buffer) <= _HIGH_WATER // 4 and conn.transport is not None:
            conn.transport.resume_reading()  # (nothing when it reads already)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        conn = self._conn
        if conn.ended or conn.transport is None or conn.transport.is_closing():
            raise httpcore2.WriteError("the connection is closed") from conn.error
        try:
            conn.transport.write(buffer)
            while not conn.writable and not conn.ended:
                await _within(timeout, conn.drained())
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.WriteError(str(exc)) from exc
        if conn.ended and conn.error is not None:
            raise httpcore2.WriteError(str(conn.error)) from conn.error

    async def aclose(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        conn, raw = self._conn, self._conn.transport
        assert raw is not None
        loop = asyncio.get_running_loop()
        try:
            tls = await _within(
                timeout, loop.start_tls(raw, conn, ssl_context, server_hostname=server_hostname)
            )
        except BaseException as exc:
            raw.abort()
            if isinstance(exc, TimeoutError):
                raise httpcore2.ConnectTimeout(str(exc)) from exc
            if isinstance(exc, OSError):  # ssl.SSLError too
                raise httpcore2.ConnectError(str(exc)) from exc
            raise
        if tls is None:  # the peer ended the connection during the handshake
            raw.abort()
            raise httpcore2.ConnectError("the server closed the connection during the handshake")
        conn.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        conn = self._conn
        if info == "is_readable":  # an idle connection: the server ended it, or spoke unasked
            return conn.ended or bool(conn.buffer)
        if conn.transport is None:
            return None
        if info == "client_addr":
            return conn.transport.get_extra_info("sockname")
        if info == "server_addr":
            return conn.transport.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return conn.transport.get_extra_info(info)
        return None


async def dial(
    address: str,
    port: int,
    timeout: float | None = None,
    local_address: str | None = None,
    socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
) -> httpcore2.AsyncNetworkStream:
    """A TCP connection to an address (never a name: the guard resolved and checked it)."""
    loop = asyncio.get_running_loop()
    options = list(socket_options or ())
    sock: socket.socket | None = None
    try:
        if options:  # set before the connect, as asked (asyncio sets TCP_NODELAY itself)
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            for option in options:
                sock.setsockopt(*option)
            if local_address is not None:
                sock.bind((local_address, 0))
            await _within(timeout, loop.sock_connect(sock, (address, port)))
            _, conn = await loop.create_connection(_Connection, sock=sock)
        else:
            local = (local_address, 0) if local_address is not None else None
            _, conn = await _within(
                timeout, loop.create_connection(_Connection, address, port, local_addr=local)
            )
    except BaseException as exc:
        if sock is not None:
            sock.close()
        if isinstance(exc, TimeoutError):
            raise httpcore2.ConnectTimeout(str(exc)) from exc
        if isinstance(exc, OSError):
            raise httpcore2.ConnectError(str(exc)) from exc
        raise
    return _Stream(conn)


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore network backend that dials only addresses the egress policy permits."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

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
                return await dial(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                failure = exc
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
        await asyncio.sleep(seconds)


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
