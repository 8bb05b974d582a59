"""HTTP clients for probes: pooled by TLS settings, and held to the egress policy.

Every TCP connection a probe opens goes through `GuardedBackend`, an httpcore network backend
that resolves the host itself, checks every address against the `EgressPolicy`, and
connects to the address it checked. TLS still verifies the certificate against the host
name: httpcore hands the origin's host name (not the address) to `start_tls` for SNI and
hostname checks. So DNS rebinding cannot walk around the policy: the name is resolved once
per connection, and what was checked is what is dialled.

The backend also marks the network phase (`dns`, then `connect`) on the recorder that the
probe's transport (`llmconn.net.exchange`) puts in `PHASE_RECORDER` around each request, so a
lookup that never answers can be told from a connect that never completes. httpcore's trace
events mark the later phases.

Proxies: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY are honoured (http and https
proxies; SOCKS is refused at startup). Behind a proxy the operator still resolves the target
host itself and checks every address before the request is sent to the proxy. This refuses
endpoints that name or resolve to a denied address as the operator sees it, and host
patterns apply as usual. It does not bind the proxy: the proxy resolves the name again (a
name that re-resolves elsewhere between the two lookups, or a split-horizon DNS, reaches
whatever the proxy's own rules allow). A target the operator cannot resolve (networks where
only the proxy resolves names) is passed on when host patterns permit it, and refused when
an allow list has no host pattern for it. The proxy's own address is the administrator's
choice and is not checked.

Response bodies: every client's transports are wrapped in `CappedTransport`, which undoes
Content-Encoding itself, in bounded steps, and ends a body that passes MAX_BODY_BYTES on the
wire or after any decoding step (`ResponseTooLarge`). httpx decodes without a total limit and
the MCP SDK reads whole answers into memory, so 300 KB of gzip became 300 MB there. The cap
lives here, below every reader, and httpx never sees a Content-Encoding left to decode.

One module on purpose, past the size the other modules keep: the egress backend, the pool
built around it and the bounded bodies are one adapter onto httpx's and httpcore's seams
(network backend, connection pool, transports, byte streams, some of them private), which
change together when httpx does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import ipaddress
import itertools
import socket
import ssl
import time
import zlib
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import anyio
import httpcore2
import httpx2
from httpcore2._backends.anyio import AnyIOBackend
from httpcore2._utils import is_socket_readable  # the pool's idle check, kept as-is
from httpx2._utils import get_environment_proxies  # httpx's NO_PROXY semantics, kept as-is

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


class InvalidCABundle(ValueError):
    """The CA bundle is not usable PEM."""


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
    raw socket is looked up once here, and polled with httpcore's own check."""

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
            return is_socket_readable(self._socket)
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore network backend that dials only addresses the egress policy permits."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = AnyIOBackend()

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
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(guard),
            # HTTP/2 where the provider offers it (TLS + ALPN): one multiplexed connection per
            # origin instead of a pool whose idle connections are each polled per request.
            http1=True,
            http2=True,
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


# --- response bodies ---------------------------------------------------------------------

MAX_BODY_BYTES = 1024 * 1024  # per response: on the wire, and after each decoding step
_STEP = 64 * 1024  # the most one decompression call may produce before it is counted
_MAX_CODINGS = 5  # as httpx: more content codings than this on one answer is an attack


class ResponseTooLarge(httpx2.DecodingError):
    """A response body passed MAX_BODY_BYTES, on the wire or once decoded; `what` says which,
    in words fit for a status message ("larger than 1 MiB once decoded (gzip)")."""

    def __init__(self, limit: int, codings: Sequence[str], *, decoded: bool) -> None:
        size = f"larger than {limit / (1024 * 1024):g} MiB"
        if not codings:
            what = size
        elif decoded:
            what = f"{size} once decoded ({', '.join(codings)})"
        else:
            what = f"{size} on the wire, before decoding ({', '.join(codings)})"
        super().__init__(what)
        self.what = what


class _Decoder:
    """One content coding, undone in steps of at most about _STEP bytes of output."""

    coding: str
    produced = 0  # bytes of output so far, counted by _CappedBody

    def decode(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def flush(self) -> Iterator[bytes]:
        return iter(())

    def _failed(self, exc: Exception) -> httpx2.DecodingError:
        return httpx2.DecodingError(f"the body is not valid {self.coding} ({exc})")


class _Zlib(_Decoder):
    def __init__(self, coding: str, wbits: int) -> None:
        self.coding = coding
        self._inflate = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inflate.eof:
            return  # what follows the stream is ignored, as httpx does
        try:
            out = self._inflate.decompress(data, _STEP)
            while out:
                yield out
                out = self._inflate.decompress(self._inflate.unconsumed_tail, _STEP)
        except zlib.error as exc:
            raise self._failed(exc) from None

    def flush(self) -> Iterator[bytes]:
        # decode() left no input unconsumed: this is at most what zlib still holds back.
        try:
            if out := self._inflate.flush():
                yield out
        except zlib.error as exc:
            raise self._failed(exc) from None


def _gzip() -> _Decoder:
    return _Zlib("gzip", 16 + zlib.MAX_WBITS)


class _Deflate(_Decoder):
    """Deflate, zlib-wrapped as RFC 9110 means it, or raw as some servers send it."""

    coding = "deflate"

    def __init__(self) -> None:
        self._head = b""
        self._inner: _Zlib | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inner is None:
            self._head += data
            if len(self._head) < 2:
                return
            wrapped = _zlib_header(self._head)
            self._inner = _Zlib(self.coding, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        yield from self._inner.decode(data)

    def flush(self) -> Iterator[bytes]:
        if self._head:
            raise self._failed(ValueError("one byte"))
        if self._inner is not None:
            yield from self._inner.flush()


def _zlib_header(head: bytes) -> bool:
    """RFC 1950: compression method 8, window at most 32 KiB, and a check on both bytes."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


_brotli = _optional("brotli")
if _brotli is not None and not hasattr(_brotli.Decompressor, "can_accept_more_data"):
    _brotli = None  # before brotli 1.2 its output cannot be bounded: do not ask for br
_zstd = _optional("compression.zstd") or _optional("backports.zstd")


class _Brotli(_Decoder):
    coding = "br"

    def __init__(self) -> None:
        self._inflate = _brotli.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._inflate.process(data, output_buffer_limit=_STEP)
            while out:
                yield out
                if self._inflate.can_accept_more_data():
                    return
                out = self._inflate.process(b"", output_buffer_limit=_STEP)
        except _brotli.error as exc:
            raise self._failed(exc) from None


class _Zstd(_Decoder):
    coding = "zstd"

    def __init__(self) -> None:
        self._inflate = self._decompressor()

    @staticmethod
    def _decompressor() -> Any:
        # RFC 9659: HTTP's zstd windows are at most 8 MiB; a frame asking for more is refused.
        return _zstd.ZstdDecompressor(options={_zstd.DecompressionParameter.window_log_max: 23})

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                if self._inflate.eof:  # one frame ended; another may follow
                    data = self._inflate.unused_data + data
                    if not data:
                        return
                    self._inflate = self._decompressor()
                out = self._inflate.decompress(data, _STEP)
                data = b""
                if out:
                    yield out
                elif not self._inflate.eof:
                    return
                if self._inflate.needs_input:
                    return
        except (_zstd.ZstdError, EOFError) as exc:
            raise self._failed(exc) from None


_DECODERS: dict[str, Callable[[], _Decoder]] = {"gzip": _gzip, "deflate": _Deflate}
if _brotli is not None:
    _DECODERS["br"] = _Brotli
if _zstd is not None:
    _DECODERS["zstd"] = _Zstd
# Asked for on every request, so servers send only what is decoded here.
ACCEPT_ENCODING = ", ".join(_DECODERS)


class _CappedBody(httpx2.AsyncByteStream):
    """A response body, decoded here and counted: wire bytes, and every decoder's output."""

    def __init__(self, inner: httpx2.AsyncByteStream, codings: list[str], limit: int) -> None:
        self._inner = inner
        self._codings = codings  # in the order they were applied
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if len(self._codings) > _MAX_CODINGS:
            raise httpx2.DecodingError(f"more than {_MAX_CODINGS} content codings")
        decoders = [_DECODERS[coding]() for coding in reversed(self._codings)]
        wire = 0
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                wire += len(chunk)
                if wire > self._limit:
                    raise ResponseTooLarge(self._limit, self._codings, decoded=False)
                for out in self._pipe(decoders, chunk, final=False):
                    yield out
            for out in self._pipe(decoders, b"", final=True):
                yield out
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    def _pipe(self, decoders: list[_Decoder], data: bytes, *, final: bool) -> Iterator[bytes]:
        # Generators all the way: each step is pulled only as far as the next one needs, so
        # no more than _STEP per decoder is ever held, and counting stops a bomb mid-way.
        chunks: Iterator[bytes] = iter((data,) if data else ())
        for decoder in decoders:
            chunks = self._counted(decoder, chunks, final)
        return chunks

    def _counted(
        self, decoder: _Decoder, upstream: Iterator[bytes], final: bool
    ) -> Iterator[bytes]:
        outputs = itertools.chain.from_iterable(decoder.decode(chunk) for chunk in upstream)
        if final:
            outputs = itertools.chain(outputs, decoder.flush())
        for out in outputs:
            decoder.produced += len(out)
            if decoder.produced > self._limit:
                raise ResponseTooLarge(self._limit, self._codings, decoded=True)
            yield out

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport so that no response body is read past MAX_BODY_BYTES, decoded or not.

    Content-Encoding is undone here (gzip, deflate, and br or zstd when their libraries are
    importable; only those are asked for) and the header is removed, so httpx never decodes
    again. Codings not known here are left as they are, as httpx does: the body stays opaque
    and is still counted."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int = MAX_BODY_BYTES) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        response = await self._inner.handle_async_request(request)
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            raise TypeError("an async transport answered with a sync body")
        named = response.headers.get_list("content-encoding", split_commas=True)
        if named:
            del response.headers["content-encoding"]
        codings = [c for c in (n.strip().lower() for n in named) if c in _DECODERS]
        response.stream = _CappedBody(response.stream, codings, self._limit)
        return response

    async def __aenter__(self) -> CappedTransport:
        await self._inner.__aenter__()
        return self

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(frozen=True)
class TLSOptions:
    """A connection's TLS settings; clients are shared between connections with equal ones."""

    ca_bundle: bytes | None = None  # PEM: extra trust roots on top of the system's
    insecure_skip_verify: bool = False

    @property
    def key(self) -> tuple[str, bool]:
        digest = hashlib.sha256(self.ca_bundle).hexdigest() if self.ca_bundle else ""
        return digest, self.insecure_skip_verify

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure_skip_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx = httpcore2.default_ssl_context()
        if self.ca_bundle:
            try:
                ctx.load_verify_locations(cadata=self.ca_bundle.decode("ascii"))
            except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
                raise InvalidCABundle(
                    f"not a PEM certificate bundle ({type(exc).__name__})"
                ) from None
        return ctx


def environment_proxies() -> dict[str, str | None]:
    """Proxy mounts from HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY (httpx's reading of them)."""
    return get_environment_proxies()


class ClientPool:
    """Long-lived `httpx2.AsyncClient`s keyed by TLS settings, least recently used first out.

    Most connections share the default TLS settings and so one client and its keep-alive
    connections. Use `lease()` around a probe: a client evicted while leased is closed only
    when its last lease ends.
    """

    def __init__(
        self,
        egress: EgressPolicy,
        *,
        max_clients: int = 32,
        max_connections: int = 200,
        max_keepalive_connections: int = 50,
        keepalive_expiry: float = 30.0,
        resolver: Resolver = system_resolver,
        proxies: Mapping[str, str | None] | None = None,
    ) -> None:
        self.guard = Guard(egress, resolver)
        self._max_clients = max_clients
        self._limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        )
        self._proxies = dict(environment_proxies() if proxies is None else proxies)
        for pattern, url in self._proxies.items():
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"proxy {url!r} for {pattern}: only http and https proxies")
        self._clients: OrderedDict[tuple[str, bool], httpx2.AsyncClient] = OrderedDict()
        self._leases: dict[int, int] = {}
        self._retired: list[httpx2.AsyncClient] = []

    def __len__(self) -> int:
        return len(self._clients)

    def client(self, tls: TLSOptions = TLSOptions()) -> httpx2.AsyncClient:
        """The client for these TLS settings (raises InvalidCABundle)."""
        key = tls.key
        if (existing := self._clients.get(key)) is not None:
            self._clients.move_to_end(key)
            return existing
        client = self._build(tls)
        self._clients[key] = client
        while len(self._clients) > self._max_clients:
            _, evicted = self._clients.popitem(last=False)
            self._retired.append(evicted)
        return client

    @contextlib.asynccontextmanager
    async def lease(self, tls: TLSOptions = TLSOptions()) -> AsyncIterator[httpx2.AsyncClient]:
        client = self.client(tls)
        self._leases[id(client)] = self._leases.get(id(client), 0) + 1
        try:
            yield client
        finally:
            left = self._leases[id(client)] - 1
            if left:
                self._leases[id(client)] = left
            else:
                del self._leases[id(client)]
            await self._close_retired()

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *self._retired]
        self._clients.clear()
        self._retired.clear()
        for client in clients:
            await client.aclose()

    async def _close_retired(self) -> None:
        idle = [c for c in self._retired if id(c) not in self._leases]
        self._retired = [c for c in self._retired if id(c) in self._leases]
        for client in idle:
            await client.aclose()

    def _build(self, tls: TLSOptions) -> httpx2.AsyncClient:
        ctx = tls.ssl_context()
        mounts: dict[str, httpx2.AsyncBaseTransport | None] = {
            pattern: None
            if url is None
            else CappedTransport(ProxiedTransport(self.guard, url, ctx, self._limits))
            for pattern, url in self._proxies.items()
        }
        return httpx2.AsyncClient(
            transport=CappedTransport(GuardedTransport(self.guard, ctx, self._limits)),
            mounts=mounts,
            trust_env=False,  # proxies are read once, above; nothing else from the environment
            follow_redirects=False,  # a probe's transport follows same-origin ones (exchange.py)
            timeout=None,  # the caller's asyncio.timeout is the one budget
        )
