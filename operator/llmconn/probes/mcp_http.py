"""The HTTP client the MCP SDK uses for one probe, and the watch on its answers.

The SDK gets a thin `httpx2.AsyncClient` per probe on the probe's transport (`ctx.transport`:
ctx.http's egress policy, TLS settings, proxies and pool, and the phases, request ids and
headroom every probe records). Its default headers carry the bearer token and `ctx.headers`;
the SDK adds its own per request (Accept, Content-Type, Mcp-Session-Id,
MCP-Protocol-Version). `streamable_http_client` never closes a client it is given (we close
ours), `sse_client` closes what its `httpx_client_factory` returns: closing ours closes only
the thin transport, never `ctx.http`.

Watching the answers. The SDK turns HTTP failures into bare JSON-RPC errors ("Server
returned an error response"), or on the SSE transport into a log line and a request that
never ends. So the transport reads each answer itself: a 401 (InvalidAPIKey, with the
OAuth challenge's `resource_metadata` and `scope` in the details), 403 (PermissionDenied,
naming a missing scope), 404 without a JSON-RPC error (UnexpectedResponse: no MCP server at
this path), 429, 5xx, an HTML page, an off-origin redirect, an oversized body or a network
failure ends the session at once. A 404 or 400 whose body is a JSON-RPC error is the server
speaking MCP (a 2026-07-28 server refuses an old-style `initialize` so), and is left to the
SDK; so is any 4xx other than 401, 403 and 429 answering `server/discover`, the SDK's probe,
which a server of an older revision may refuse in many ways before the SDK falls back to
`initialize`. The step is the method of the request being answered. An HTML page is
UnexpectedResponse (a web site or login wall in front: transient, as
for every provider). Network failures are kept exactly as `ctx.http` raised them, for the
caller to name by phase. The body size cap is ctx.http's (`llmconn.net.bodies`) and counts per
HTTP answer: over legacy SSE the one event stream carries the handshake and every tools/list
page, 1 MiB in all, so a server that sends small events without end is stopped there or by
the probe's timeout, whichever comes first.

Redirects: `ctx.http` does not follow them; the SDK follows only same-origin redirects that
keep the method, whatever `follow_redirects` says; anything else ends the probe as
UnexpectedResponse, so the credentials never leave the endpoint's origin.

Its length is one adapter's: the MCP SDK's HTTP transport seen from both sides (the
requests it makes, the answers it must not misread), kept together so the two stay in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from llmconn.model.blocks import McpTransport
from llmconn.model.reasons import Reason
from llmconn.net.bodies import ResponseTooLarge
from llmconn.net.exchange import MAX_REDIRECTS, USER_AGENT
from llmconn.net.oauth import bearer_challenge
from llmconn.probes.base import ProbeContext, ProbeOutcome
from llmconn.probes.errors import rate_limited

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_AUTH_ERROR = re.compile(r'error="?([A-Za-z0-9_.-]{1,64})')
_DISCOVER = "server/discover"


def connect(
    ctx: ProbeContext, transport: McpTransport, watch: Watch
) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    """The SDK's streams over `transport`, on a client whose every request `watch` sees."""
    sent = httpx2.Headers(ctx.http.headers)
    sent["User-Agent"] = USER_AGENT
    sent.update(ctx.headers)
    sent.update(ctx.auth_headers())

    def client(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        # The SDK's own arguments are unused (we pass it none): ctx.http's timeout applies,
        # and the caller's budget bounds the whole probe.
        return httpx2.AsyncClient(
            transport=_Watched(ctx.transport, watch),
            headers=sent,
            timeout=ctx.http.timeout,
            max_redirects=MAX_REDIRECTS,
            trust_env=False,  # proxies are ctx.http's business
        )

    if transport is McpTransport.SSE:
        # sse_client closes the client its factory makes; that closes only our _Watched.
        return sse_client(ctx.endpoint, httpx_client_factory=client)
    # streamable_http_client never closes a client it was given: the exit stack closes it.
    return _streamable(ctx.endpoint, client())


@asynccontextmanager
async def _streamable(url: str, http: httpx2.AsyncClient) -> AsyncIterator[tuple[Any, Any]]:
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


class _Watched(httpx2.AsyncBaseTransport):
    """The probe's transport (ctx.http's egress policy, TLS, proxies, pool; phases and records
    as for every probe), with `watch` seeing each answer."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        watched = self._watch.watched(request)
        if watched:
            self._watch.note(request)
        try:
            response = await self._inner.handle_async_request(request)
            if watched and response.status_code in (403, 404):
                # Its body decides (a JSON-RPC error, insufficient_scope): read it (capped).
                body = await response.aread()
                response = httpx2.Response(
                    status_code=response.status_code,
                    headers=response.headers,
                    content=body,
                    extensions=response.extensions,
                )
        except ResponseTooLarge as exc:
            self._watch.stop(_unfit(self._watch, exc.what))
            raise
        except Exception as exc:
            if watched:
                self._watch.stop(error=exc)
            raise
        if watched:
            self._watch.see(request, response)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Bounded(response.stream, self._watch, watched),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        pass  # ctx.http is shared and outlives this probe


class _Bounded(httpx2.AsyncByteStream):
    """A response body that ends the probe when it breaks, or when ctx.http's transport finds
    it too large or undecodable (that transport holds the size cap, for the SDK too)."""

    def __init__(self, stream: Any, watch: Watch, watched: bool) -> None:
        self._stream = stream
        self._watch = watch
        self._watched = watched

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._stream.__aiter__()
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except ResponseTooLarge as exc:
                    # Any stream, watched or not: the next read would be as large.
                    self._watch.stop(self._unfit(exc.what))
                    raise
                except httpx2.DecodingError as exc:
                    if self._watched:
                        self._watch.stop(self._unfit(f"not readable: {exc}"))
                    raise
                except Exception as exc:
                    # The SDK reads SSE bodies under `except Exception`: a dropped connection
                    # would otherwise become "stream ended without a response", a ProtocolError.
                    if self._watched:
                        self._watch.stop(error=exc)
                    raise
                yield chunk
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def _unfit(self, what: str) -> ProbeOutcome:
        return _unfit(self._watch, what)


def _unfit(watch: Watch, what: str) -> ProbeOutcome:
    return ProbeOutcome(
        Reason.UNEXPECTED_RESPONSE,
        f"The answer to {watch.step} was {what}; that is not an MCP server's answer.",
    )


@dataclass
class Watch:
    """What the HTTP answers said, and the scope to cancel once one of them decides."""

    ctx: ProbeContext
    transport: McpTransport
    scope: anyio.CancelScope | None = None
    outcome: ProbeOutcome | None = None
    error: Exception | None = None
    statuses: list[int] = field(default_factory=list)  # watched non-2xx answers, in order
    content_types: list[str] = field(default_factory=list)  # of watched answers

    @property
    def step(self) -> str:
        """The protocol step running, for messages."""
        return self.ctx.found.step or "initialize"

    def watched(self, request: httpx2.Request) -> bool:
        if self.transport is McpTransport.SSE:
            return True  # the event stream GET and the message POSTs
        # Streamable HTTP: the optional GET stream may fail (405 is normal) and the closing
        # DELETE may be refused; only the POSTs carry the handshake.
        return request.method == "POST"

    def note(self, request: httpx2.Request) -> None:
        """The step is the JSON-RPC method of the request (not of notifications)."""
        if request.method != "POST":
            return
        try:
            message = json.loads(request.content)
        except (ValueError, UnicodeDecodeError, httpx2.RequestNotRead):
            return
        if isinstance(message, dict) and "id" in message and isinstance(message.get("method"), str):
            self.ctx.found.step = message["method"][:64]

    def stop(self, outcome: ProbeOutcome | None = None, error: Exception | None = None) -> None:
        if self.outcome is None and self.error is None:
            self.outcome, self.error = outcome, error
        if self.scope is not None:
            self.scope.cancel()

    def see(self, request: httpx2.Request, response: httpx2.Response) -> None:
        status = response.status_code
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        self.content_types.append(ctype)
        if status >= 300:
            self.statuses.append(status)
        verdict = self._verdict(request, response, status, ctype)
        if verdict is not None:
            self.stop(verdict)

    def _verdict(
        self, request: httpx2.Request, response: httpx2.Response, status: int, ctype: str
    ) -> ProbeOutcome | None:
        path = request.url.path
        step = self.step
        if status in _REDIRECTS and "location" in response.headers:
            return _redirect(request, response, step)
        if status == 401:
            return self._unauthorized(response, step)
        if status == 403:
            challenge = response.headers.get("www-authenticate", "")
            scope = bearer_challenge(challenge).get("scope")
            insufficient = "insufficient_scope" in challenge or "insufficient_scope" in _text(
                response
            )
            needs = f" It needs scope {scope}." if scope else ""
            return ProbeOutcome(
                Reason.PERMISSION_DENIED,
                f"The MCP server accepted the credentials but refused {step} (HTTP 403"
                f"{' insufficient_scope' if insufficient else ''}).{needs} Check the token's "
                "scopes and the server's access rules.",
                http_status=403,
                code="insufficient_scope" if insufficient else None,
                details={"requiredScope": scope} if scope else {},
            )
        if step == _DISCOVER and 400 <= status < 500 and status != 429:
            return None  # the SDK's probe: an older server's refusal, the SDK falls back
        if status == 404 and not _jsonrpc_error(response):
            return ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"No MCP server at this path: {request.method} {path} answered HTTP 404. "
                "Check spec.endpoint (the server's full MCP URL, often ending in /mcp or /sse).",
                http_status=404,
            )
        if status == 429:
            return rate_limited(
                response.headers,
                f"The MCP server is rate limiting (HTTP 429) during {step}.",
                http_status=429,
            )
        if status >= 500:
            return ProbeOutcome(
                Reason.PROVIDER_UNAVAILABLE,
                f"The MCP server is unavailable (HTTP {status} during {step}).",
                http_status=status,
            )
        if "html" in ctype:
            return ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"{request.method} {path} answered an HTML page (HTTP {status}), not MCP: "
                "a web site or login page, not an MCP server. Check spec.endpoint.",
                http_status=status,
            )
        if status >= 400 and self.transport is McpTransport.SSE:
            # The SDK's SSE transport only logs a failed POST and waits for an answer forever.
            return ProbeOutcome(
                Reason.PROTOCOL_ERROR,
                f"{request.method} {path} answered HTTP {status} during {step}"
                f"{transport_hint(self.transport, status, request.method)}",
                http_status=status,
            )
        return None

    def _unauthorized(self, response: httpx2.Response, step: str) -> ProbeOutcome:
        challenge = response.headers.get("www-authenticate", "")
        match = _AUTH_ERROR.search(challenge)
        code = match.group(1) if match else None
        said = f"HTTP 401{' ' + code if code else ''}"
        found = bearer_challenge(challenge)
        details = {
            name: value
            for name, value in (
                ("resourceMetadata", found.get("resource_metadata")),
                ("requiredScope", found.get("scope")),
            )
            if value
        }
        oauth = ""
        if details:
            where = found.get("resource_metadata")
            oauth = (
                " The server uses OAuth"
                + (f" (protected resource metadata at {where})" if where else "")
                + (f" and asks for scope {found['scope']}" if found.get("scope") else "")
                + ": put an access token for it in the Secret, or have the operator get one "
                "(spec.oauth)."
            )
        if self.ctx.oauth is not None:
            wants = f" It asks for scope {found['scope']}." if found.get("scope") else ""
            message = (
                f"The MCP server refused the access token ({said}) during {step}; "
                f"{self.ctx.key_hint}.{wants}"
            )
        elif self.ctx.api_key or self.ctx.bearer_token is not None:
            message = (
                f"The MCP server rejected the bearer token ({said}) during {step}; "
                f"{self.ctx.key_hint}.{oauth}"
            )
        else:
            message = (
                f"The MCP server requires authorization ({said}) and no bearer token was "
                "sent; set spec.apiKeySecretRef (or the header the server expects in "
                f"spec.headersFromSecret).{oauth}"
            )
        return ProbeOutcome(
            Reason.INVALID_API_KEY, message, http_status=401, code=code, details=details
        )


def _text(response: httpx2.Response) -> str:
    try:
        return response.content[:4096].decode("utf-8", "replace")
    except httpx2.ResponseNotRead:
        return ""


def _jsonrpc_error(response: httpx2.Response) -> bool:
    """The body (read: 404s are) is a JSON-RPC error: the server speaks MCP at this path."""
    try:
        message = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, httpx2.ResponseNotRead):
        return False
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("error"), dict)
    )


def _redirect(request: httpx2.Request, response: httpx2.Response, step: str) -> ProbeOutcome | None:
    target = request.url.join(response.headers["location"])
    status = response.status_code
    if _within_origin(request.url, target):
        if status in (307, 308) or request.method == "GET":
            return None  # the SDK follows it, with the same credentials on the same origin
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"{request.method} {request.url.path} redirected (HTTP {status}) to {target.path}, "
            "which an MCP client does not follow (it would drop the message). Set "
            "spec.endpoint to that URL.",
            http_status=status,
        )
    return ProbeOutcome(
        Reason.UNEXPECTED_RESPONSE,
        f"The MCP endpoint redirected (HTTP {status}) to another host ({target.host}) during "
        f"{step}; credentials are never sent there. Set spec.endpoint to the server's real "
        "MCP URL.",
        http_status=status,
    )


def _within_origin(url: httpx2.URL, target: httpx2.URL) -> bool:
    """The SDK's rule: same scheme, host and port, or the https upgrade on default ports."""
    if (url.scheme, url.host, url.port) == (target.scheme, target.host, target.port):
        return True
    return (
        url.host == target.host
        and (url.scheme, target.scheme) == ("http", "https")
        and url.port is None
        and target.port is None
    )


def transport_hint(transport: McpTransport, status: int | None, method: str) -> str:
    """Where to look when the transport may be the wrong one; starts with ". "."""
    if transport is McpTransport.STREAMABLE_HTTP and status == 405 and method == "POST":
        return (
            ". The endpoint does not take POSTs: for a legacy HTTP+SSE server set "
            "spec.mcp.transport: sse."
        )
    if transport is McpTransport.SSE:
        return (
            ". Check spec.endpoint (the SSE URL, often ending in /sse); for a streamable "
            "HTTP server, set spec.mcp.transport: streamable-http."
        )
    return ". Check spec.endpoint and spec.mcp.transport."
