"""Model Context Protocol servers: the initialize handshake, then tools/list, with the official SDK.

Connectivity is the handshake: `initialize` (every revision the SDK negotiates, 2024-11-05
to 2025-11-25), or, when a server refuses it with -32022 naming only stateless revisions
(2026-07-28), `server/discover`. Model is the handshake plus `tools/list` (every page, up to
MAX_TOOL_PAGES). MCP has no completions: the provider is registered with inference=False,
so the validation core refuses Inference before any probe runs; called with it anyway, this
probe does what Model does. The transport is `spec.mcp.transport`: streamable HTTP (default)
or legacy HTTP+SSE.

HTTP client. The SDK gets a thin `httpx2.AsyncClient` per probe whose transport hands every
request to `ctx.http.send`, so the operator's egress policy, TLS settings, proxies, pool
and phase marks apply. Its default headers carry the bearer token and `ctx.headers`; the SDK
adds its own per request (Accept, Content-Type, Mcp-Session-Id, MCP-Protocol-Version).
`streamable_http_client` never closes a client it is given (we close ours), `sse_client`
closes what its `httpx_client_factory` returns: closing ours closes only the thin transport,
never `ctx.http`.

Watching the answers. The SDK turns HTTP failures into bare JSON-RPC errors ("Server
returned an error response"), or on the SSE transport into a log line and a request that
never ends. So the transport reads each answer itself: a 401 (InvalidAPIKey), 403
(PermissionDenied), 404 (UnexpectedResponse: no MCP server at this path), 429, 5xx, an HTML
page, an off-origin redirect, an oversized body or a network failure ends the session at
once. An HTML page is UnexpectedResponse (a web site or login wall in front: transient, as
for every provider); JSON that is not JSON-RPC, or a handshake that goes wrong in any other
way, is ProtocolError. Network failures are re-raised exactly as `ctx.http` raised them,
outside any ExceptionGroup, for the caller to name by phase. The body size cap is ctx.http's
(`llmconn.http`) and counts per HTTP answer: over legacy SSE the one event stream carries the
handshake and every tools/list page, 1 MiB in all, so a server that sends small events
without end is stopped there or by the probe's timeout, whichever comes first.

Redirects: `ctx.http` does not follow them; the SDK follows only same-origin redirects that
keep the method, whatever `follow_redirects` says; anything else ends the probe as
UnexpectedResponse, so the credentials never leave the endpoint's origin.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from llmconn.http import ResponseTooLarge
from llmconn.probes.base import (
    MAX_REDIRECTS,
    USER_AGENT,
    Auth,
    ProbeContext,
    ProbeFailure,
    ProbeOutcome,
    Reply,
    ok,
    registry,
)
from llmconn.probes.errors import retry_after
from llmconn.reasons import Reason
from llmconn.spec import McpTransport, ValidationType

MAX_TOOL_PAGES = 10  # tools/list pages followed for toolCount; each page is one request
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CLIENT_NAME, _, _CLIENT_VERSION = USER_AGENT.partition("/")
_AUTH_ERROR = re.compile(r'error="?([A-Za-z0-9_.-]{1,64})')
# What the SDK's streamable transport makes of an HTTP error without a JSON-RPC body.
_SDK_HTTP_ERROR = "Server returned an error response"
_SHOWN = re.compile(r"[^\x20-\x7e]")


@registry.provider(
    "mcp",
    default_endpoint=None,
    auth=Auth.BEARER,
    title="Model Context Protocol server",
    inference=False,
    accepts=("mcp",),
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    transport = ctx.mcp.transport if ctx.mcp is not None else McpTransport.STREAMABLE_HTTP
    watch = _Watch(ctx, transport)
    result: ProbeOutcome | None = None
    caught: Exception | None = None
    try:
        with anyio.CancelScope() as scope:
            watch.scope = scope
            async with _connect(ctx, transport, watch) as (read, write):
                client_info = mcp_types.Implementation(name=_CLIENT_NAME, version=_CLIENT_VERSION)
                async with ClientSession(read, write, client_info=client_info) as session:
                    result = await _validate(ctx, session, watch)
    except Exception as exc:  # the SDK's ExceptionGroups included; unwrapped below
        caught = exc
    if result is not None:
        ctx.phase = "done"  # closing the session ran more traffic through the trace
        return result  # and whatever broke while closing it does not change the verdict
    if watch.error is not None:
        raise watch.error  # from ctx.http: the caller names network failures by phase
    if watch.outcome is not None:
        return watch.outcome
    if caught is None:  # cancelled without a recorded reason: cannot happen, but never lie
        raise RuntimeError("MCP session ended without an outcome")
    return _classify(ctx, caught, watch)


async def _validate(ctx: ProbeContext, session: ClientSession, watch: _Watch) -> ProbeOutcome:
    watch.step = ctx.phase = "initialize"
    try:
        await session.initialize()
    except MCPError as exc:
        if not _modern_only(exc):
            raise
        # A 2026-only server: its stateless revision has server/discover instead.
        watch.step = ctx.phase = "server/discover"
        await session.discover()
    handshake = watch.step
    protocol = session.protocol_version or "unknown"
    info = session.server_info
    details: dict[str, str] = {"protocolVersion": _shown(protocol, 32)}
    who = "MCP server"
    if info is not None:
        details["serverName"] = _shown(info.name)
        details["serverVersion"] = _shown(info.version)
        who = f"MCP server {details['serverName']} {details['serverVersion']}".rstrip()
    said = f"{who} answered {handshake} (protocol {details['protocolVersion']})"

    if ctx.validation_type is ValidationType.CONNECTIVITY:
        ctx.phase = "done"
        return ok(f"{said}.", None, **details)

    capabilities = session.server_capabilities
    if capabilities is not None and capabilities.tools is None:
        # Servers with tools must declare the capability; listing them anyway breaks the protocol.
        ctx.phase = "done"
        details["toolCount"] = "0"
        return ok(
            f"{said}; it declares no tools capability, so it offers no tools.", None, **details
        )
    watch.step = ctx.phase = "tools/list"
    count, complete = await _count_tools(session)
    ctx.phase = "done"
    details["toolCount"] = str(count) if complete else f"{count}+"
    listed = f"{count} tool{'' if count == 1 else 's'}" if complete else f"more than {count} tools"
    return ok(f"{said}; {listed} listed.", None, **details)


async def _count_tools(session: ClientSession) -> tuple[int, bool]:
    count = 0
    cursor: str | None = None
    for _page in range(MAX_TOOL_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        listing = await session.list_tools(params=params)
        count += len(listing.tools)
        cursor = listing.next_cursor
        if not cursor:
            return count, True
    return count, False


def _modern_only(exc: MCPError) -> bool:
    """-32022 naming a stateless revision this SDK speaks: the server wants server/discover."""
    if exc.code != mcp_types.UNSUPPORTED_PROTOCOL_VERSION:
        return False
    try:
        data = mcp_types.UnsupportedProtocolVersionErrorData.model_validate(exc.data)
    except ValidationError:
        return False
    return any(version in MODERN_PROTOCOL_VERSIONS for version in data.supported)


# --- the HTTP client the SDK uses ------------------------------------------------------


def _connect(
    ctx: ProbeContext, transport: McpTransport, watch: _Watch
) -> AbstractAsyncContextManager[tuple[Any, Any]]:
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
            transport=_Through(ctx, watch),
            headers=sent,
            timeout=ctx.http.timeout,
            max_redirects=MAX_REDIRECTS,
            trust_env=False,  # proxies are ctx.http's business
        )

    if transport is McpTransport.SSE:
        # sse_client closes the client its factory makes; that closes only our _Through.
        return sse_client(ctx.endpoint, httpx_client_factory=client)
    # streamable_http_client never closes a client it was given: the exit stack closes it.
    return _streamable(ctx.endpoint, client())


@asynccontextmanager
async def _streamable(url: str, http: httpx2.AsyncClient) -> AsyncIterator[tuple[Any, Any]]:
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


class _Through(httpx2.AsyncBaseTransport):
    """Send each request with ctx.http (egress policy, TLS, proxies, pool) and watch the answer."""

    def __init__(self, ctx: ProbeContext, watch: _Watch) -> None:
        self._ctx = ctx
        self._watch = watch

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        watched = self._watch.watched(request)
        # Phase timings and the phase a network failure happened in, as for every probe.
        request.extensions = {**request.extensions, "trace": self._ctx._trace}
        try:
            response = await self._ctx.http.send(request, stream=True, follow_redirects=False)
        except Exception as exc:
            if watched:
                self._watch.stop(error=exc)
            raise
        self._ctx._record(response)
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

    def __init__(self, stream: Any, watch: _Watch, watched: bool) -> None:
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
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"The answer to {self._watch.step} was {what}; that is not an MCP server's answer.",
        )


@dataclass
class _Watch:
    """What the HTTP answers said, and the scope to cancel once one of them decides."""

    ctx: ProbeContext
    transport: McpTransport
    scope: anyio.CancelScope | None = None
    step: str = "initialize"
    outcome: ProbeOutcome | None = None
    error: Exception | None = None
    statuses: list[int] = field(default_factory=list)  # watched non-2xx answers, in order
    content_types: list[str] = field(default_factory=list)  # of watched answers

    def watched(self, request: httpx2.Request) -> bool:
        if self.transport is McpTransport.SSE:
            return True  # the event stream GET and the message POSTs
        # Streamable HTTP: the optional GET stream may fail (405 is normal) and the closing
        # DELETE may be refused; only the POSTs carry the handshake.
        return request.method == "POST"

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
            challenge = response.headers.get("www-authenticate", "")
            match = _AUTH_ERROR.search(challenge)
            code = match.group(1) if match else None
            said = f"HTTP 401{' ' + code if code else ''}"
            if self.ctx.api_key:
                message = (
                    f"The MCP server rejected the bearer token ({said}) during {step}; "
                    f"{self.ctx.key_hint}."
                )
            else:
                message = (
                    f"The MCP server requires authorization ({said}) and no bearer token was "
                    "sent; set spec.apiKeySecretRef (or the header the server expects in "
                    "spec.headersFromSecret)."
                )
            return ProbeOutcome(Reason.INVALID_API_KEY, message, http_status=401, code=code)
        if status == 403:
            return ProbeOutcome(
                Reason.PERMISSION_DENIED,
                f"The MCP server accepted the credentials but refused {step} (HTTP 403). "
                "Check the token's scopes and the server's access rules.",
                http_status=403,
            )
        if status == 404:
            return ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"No MCP server at this path: {request.method} {path} answered HTTP 404. "
                "Check spec.endpoint (the server's full MCP URL, often ending in /mcp or /sse).",
                http_status=404,
            )
        if status == 429:
            reply = Reply(status, response.headers, b"", str(request.url))
            wait = retry_after(reply)
            hint = f" Retrying after {wait:.0f}s." if wait is not None else ""
            return ProbeOutcome(
                Reason.RATE_LIMITED,
                f"The MCP server is rate limiting (HTTP 429) during {step}.{hint}",
                http_status=429,
                retry_after=wait,
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
                f"{_transport_hint(self.transport, status, request.method)}",
                http_status=status,
            )
        return None


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


# --- exceptions the SDK raised ---------------------------------------------------------


def _classify(ctx: ProbeContext, exc: Exception, watch: _Watch) -> ProbeOutcome:
    """The reason for an exception out of the SDK; anything not about MCP is re-raised."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, ProbeFailure):
            return leaf.outcome
    for leaf in leaves:
        network = isinstance(leaf, httpx2.TransportError | OSError | TimeoutError)
        if network and not isinstance(leaf, httpx2.SSEError):  # SSEError: not the network's
            raise leaf from leaf.__cause__  # a network failure the watch did not see
    for leaf in leaves:
        outcome = _mcp_outcome(leaf, watch)
        if outcome is not None:
            return outcome
    # Not an MCP failure (a network error the watch missed, a bug): the caller's to name.
    first = leaves[0]
    raise first from first.__cause__


def _leaves(exc: BaseException) -> list[Exception]:
    if isinstance(exc, BaseExceptionGroup):
        found: list[Exception] = []
        for inner in exc.exceptions:
            found += _leaves(inner)
        return found
    return [exc] if isinstance(exc, Exception) else []


def _mcp_outcome(exc: Exception, watch: _Watch) -> ProbeOutcome | None:
    step = watch.step
    status = watch.statuses[-1] if watch.statuses else None
    hint = _transport_hint(watch.transport, status, "POST")
    if isinstance(exc, MCPError):
        said_status = f" (HTTP {status})" if status else ""
        if exc.code == mcp_types.PARSE_ERROR:
            ctype = watch.content_types[-1] if watch.content_types else "none"
            what = f"a body that is not JSON-RPC (content-type {_shown(ctype, 64)})"
        elif status is not None and status >= 400 and exc.message == _SDK_HTTP_ERROR:
            what, said_status = f"HTTP {status} and no JSON-RPC error", ""
        elif exc.code == mcp_types.UNSUPPORTED_PROTOCOL_VERSION:
            what = "an unsupported protocol version error the client cannot resolve"
        else:
            what = f"JSON-RPC error {exc.code}: {_shown(exc.message, 200)}"
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server answered {step} with {what}{said_status}. It is not an MCP "
            f"server, or a broken one{hint}",
            http_status=status,
            code=str(exc.code),
        )
    if isinstance(exc, ValidationError):
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server's answer to {step} does not match the MCP schema "
            f"({exc.error_count()} errors, first at {_location(exc)}).",
        )
    if isinstance(exc, httpx2.SSEError):
        ctype = watch.content_types[-1] if watch.content_types else "none"
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server's event stream broke during {step} (content-type "
            f"{_shown(ctype, 64)}): {_shown(str(exc), 200).rstrip('.')}"
            f"{_transport_hint(watch.transport, None, 'GET')}",
        )
    if isinstance(exc, httpx2.HTTPStatusError):
        # Normally decided by the watch already; this covers answers it lets through.
        code = exc.response.status_code
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server answered HTTP {code} during {step}"
            f"{_transport_hint(watch.transport, code, exc.request.method)}",
            http_status=code,
        )
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith(
        ("Unsupported protocol version", "No mutually supported")
    ):
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server negotiated a protocol revision this client does not speak: "
            f"{_shown(text, 200)}.",
        )
    if isinstance(exc, RuntimeError) and text.startswith("Child exited without calling"):
        # anyio's words when the SDK's SSE reader ends before the `endpoint` event.
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server's event stream ended before it named the message endpoint "
            f"(the first event of legacy HTTP+SSE){_transport_hint(watch.transport, None, 'GET')}",
        )
    if isinstance(exc, ValueError) and text.startswith("Endpoint origin does not match"):
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            "The SSE endpoint event named a POST URL on another origin; credentials are "
            "never sent there. Check spec.endpoint.",
        )
    return None


def _transport_hint(transport: McpTransport, status: int | None, method: str) -> str:
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


def _location(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "?"
    return ".".join(str(part) for part in errors[0]["loc"]) or "the top level"


def _shown(text: str, limit: int = 128) -> str:
    """A server-supplied string fit for status: printable, bounded."""
    return _SHOWN.sub("?", text)[:limit]
