"""httpx2 requests carried by aiohttp: the transport of the operator's Kubernetes API client.

The operator's own API calls (a status PATCH per validation, Secret reads, watches) keep
httpx2's client, types and errors; only the wire is aiohttp's: its connection pool keeps idle
connections in a queue without polling them, and its HTTP/1.1 parser is compiled. Measured on
a status PATCH to a local kube-apiserver over TLS, this costs about a third of the CPU that
httpx2's own HTTP/2 connection (the h2 state machine) or HTTP/1.1 pool does (`make bench`;
docs/development.md, "Where the CPU goes"). aiohttp is already there: Kopf talks to the API
server with it.

What httpx2 would raise, this raises too: connect, read and timeout errors map to httpx2's
exception types, so callers and their retries do not know which wire carried the request.

`call` is the same wire without httpx2's client around it, for the one request made per
validation (the status PATCH): building an httpx2 request and response cost more CPU than
aiohttp's whole exchange (about 0.13 ms of 0.3 ms per PATCH, measured on loopback).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx2

# Headers aiohttp sets itself from the request it sends (a second copy would be a protocol
# error), and those it must not add: httpx2 already chose them, or the server need not see.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CHUNK = 64 * 1024
# A hang-up, a cut answer, or an answer that is not HTTP.
_HUNG_UP = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """One aiohttp session (created on first use, in the running loop) behind httpx2.

    `max_connections` bounds the open connections (None: no bound, for watches that each
    hold one); responses are streamed, so a watch is read as its lines arrive."""

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
                auto_decompress=False,  # httpx2 decodes what its Accept-Encoding asked for
                skip_auto_headers=_SKIP_AUTO,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = client_timeout(request.extensions.get("timeout") or {})
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _OWN_HEADERS
        ]
        body = await request.aread()
        try:
            response = await self._open().request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, request, connecting=True) from exc
        return httpx2.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Stream(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",  # what aiohttp's client speaks
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, bytes]:
        """One request whose answer is read whole: (status code, body). Errors are httpx2's,
        as for `handle_async_request`."""
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
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, httpx2.Request(method, url), connecting=connecting) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Stream(httpx2.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, self._request, connecting=False) from exc

    async def aclose(self) -> None:
        # aiohttp pools a connection whose answer was read in full, and closes one left in
        # the middle of an answer (a watch given up). That one is aborted first: a TLS
        # goodbye would wait for the server's, and a loop ending meanwhile (shutdown, a test)
        # would leave the socket to the garbage collector.
        connection = self._response.connection
        transport = connection.transport if connection is not None else None
        if transport is not None and not self._response.content.at_eof():
            transport.abort()
        self._response.release()


def client_timeout(timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx2's (its request extension, or `httpx2.Timeout.as_dict`)."""
    connect, pool = timeouts.get("connect"), timeouts.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's `connect` spans the wait for a pooled connection and the connect.
        connect=None if connect is None and pool is None else (connect or 0) + (pool or 0),
        sock_connect=connect,
        sock_read=timeouts.get("read"),
    )


def _mapped(
    exc: aiohttp.ClientError | TimeoutError, request: httpx2.Request, *, connecting: bool
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
    elif isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionError):
        kind = httpx2.ReadError if not connecting else httpx2.ConnectError
    else:
        kind = httpx2.NetworkError
    return kind(message, request=request)
