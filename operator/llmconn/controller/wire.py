"""The wire of the operator's Kubernetes API client: aiohttp's connection pool and compiled
HTTP/1.1 parser, with httpx2's exception types.

Measured on a status PATCH to a local kube-apiserver over TLS, aiohttp's exchange costs about a
third of the CPU of httpx2's own HTTP/2 connection (the h2 state machine) or HTTP/1.1 pool,
and building httpx2's request and response objects cost more than aiohttp's whole exchange
(`make bench`; docs/development.md, "Where the CPU goes"). aiohttp is already there: Kopf talks
to the API server with it. Its pool keeps idle connections in a queue without polling them.

Two shapes, one error mapping: `call` reads an answer whole (every request but watches), and
`stream` gives a watch's lines as they arrive. Connect, read and timeout errors map to httpx2's
exception types (`_mapped`), so callers and their retries name failures as the probes do.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple

import aiohttp
import httpx2

# Headers aiohttp would add that the caller sets itself, or the server need not see.
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# A hang-up, a cut answer, or an answer that is not HTTP.
_HUNG_UP = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)


class Answer(NamedTuple):
    """An answer read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Streamed:
    """An answer whose body is read line by line (a watch)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._request = request

    async def lines(self) -> AsyncIterator[bytes]:
        """Each non-empty line as it arrives. (Not aiohttp's readline: it refuses lines over
        its limit, and one event carries whatever the object holds.)"""
        pending = b""
        try:
            async for chunk in self._response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line
            if pending.strip():
                yield pending
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            # (aiohttp raises RuntimeError for a connection closed under the reader.)
            raise _mapped(exc, self._request, connecting=False) from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            raise _mapped(exc, self._request, connecting=False) from exc

    def close(self) -> None:
        # aiohttp pools a connection whose answer was read in full, and closes one left in
        # the middle of an answer (a watch given up). That one is aborted first: a TLS
        # goodbye would wait for the server's, and a loop ending meanwhile (shutdown, a test)
        # would leave the socket to the garbage collector.
        connection = self._response.connection
        transport = connection.transport if connection is not None else None
        if transport is not None and not self._response.content.at_eof():
            transport.abort()
        self._response.release()


class ApiWire:
    """One aiohttp session (created on first use, in the running loop).

    `max_connections` bounds the open connections (None: no bound, for watches that each
    hold one)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, max_connections: int | None) -> None:
        self._ssl = ssl_context
        self._limit = max_connections or 0
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else True,
                limit=self._limit,
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=_SKIP_AUTO,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Answer:
        """One request whose answer is read whole."""
        connecting = True
        try:
            async with self._open().request(
                method,
                url,
                headers=headers,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            ) as response:
                connecting = False
                return Answer(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, httpx2.Request(method, url), connecting=connecting) from exc

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
    ) -> AsyncIterator[Streamed]:
        """One request whose answer is read as it arrives, closed when the block ends."""
        request = httpx2.Request(method, url)
        try:
            response = await self._open().request(
                method, url, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, request, connecting=True) from exc
        streamed = Streamed(response, request)
        try:
            yield streamed
        finally:
            streamed.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client_timeout(timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx2's (`httpx2.Timeout.as_dict`)."""
    connect, pool = timeouts.get("connect"), timeouts.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's `connect` spans the wait for a pooled connection and the connect.
        connect=None if connect is None and pool is None else (connect or 0) + (pool or 0),
        sock_connect=connect,
        sock_read=timeouts.get("read"),
    )


def _mapped(
    exc: aiohttp.ClientError | TimeoutError | RuntimeError,
    request: httpx2.Request,
    *,
    connecting: bool,
) -> httpx2.TransportError:
    """httpx2's exception for an aiohttp one, or for a timeout."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx2.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx2.ConnectTimeout
    elif isinstance(exc, aiohttp.SocketTimeoutError):
        kind = httpx2.ReadTimeout
    elif isinstance(exc, TimeoutError):  # the pool's wait, or another timeout
        kind = httpx2.PoolTimeout if connecting else httpx2.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx2.ConnectError
    elif isinstance(exc, _HUNG_UP):
        kind = httpx2.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionError | RuntimeError):
        kind = httpx2.ReadError if not connecting else httpx2.ConnectError
    else:
        kind = httpx2.NetworkError
    return kind(message, request=request)
