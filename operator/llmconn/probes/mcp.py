"""Model Context Protocol servers: the handshake, then tools/list, with the official SDK.

Connectivity is the handshake, negotiated by the SDK's own `Client` in auto mode: it sends
`server/discover` at the newest revision first, as the 2026-07-28 revision advises clients to
(its servers refuse an old-style `initialize`, with 400 or 404), and falls back to `initialize`
for servers of 2024-11-05 to 2025-11-25. The negotiated revision goes into the details. Legacy
HTTP+SSE exists only before 2026, so over it the SDK's `initialize` handshake is used as it is.
Model is the handshake plus `tools/list` (every page, up to MAX_TOOL_PAGES). MCP has no
completions: the provider is registered with inference=False, so the validation core refuses
Inference before any probe runs; called with it anyway, this probe does what Model does. The
transport is `spec.mcp.transport`: streamable HTTP (default) or legacy HTTP+SSE.

The SDK's HTTP client, and the watch that ends the session as soon as an HTTP answer decides
(401, 403, 429, 5xx, a 404 without a JSON-RPC error, an HTML page, an off-origin redirect,
an oversized body, a network failure), are in `mcp_http`. Here: the protocol steps, and the
reasons for what the SDK raised. An answer that is JSON but not JSON-RPC, or a handshake that
goes wrong in any other way, is ProtocolError; network failures are re-raised exactly as
`ctx.http` raised them, outside any ExceptionGroup, for the caller to name by phase. The
protocol step running (the method of the latest request, which the watch reads) is in
`ctx.found.step`, for messages.
"""

from __future__ import annotations

import re

import anyio
import httpx2
import mcp_types
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from llmconn.model.blocks import McpTransport
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.net.exchange import USER_AGENT
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.mcp_http import Watch, connect, transport_hint

MAX_TOOL_PAGES = 10  # tools/list pages followed for toolCount; each page is one request
_CLIENT_NAME, _, _CLIENT_VERSION = USER_AGENT.partition("/")
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
    oauth=True,
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    transport = ctx.mcp.transport if ctx.mcp is not None else McpTransport.STREAMABLE_HTTP
    ctx.found.step = "initialize"
    watch = Watch(ctx, transport)
    result: ProbeOutcome | None = None
    caught: Exception | None = None
    try:
        with anyio.CancelScope() as scope:
            watch.scope = scope
            client = Client(
                connect(ctx, transport, watch),
                # Legacy HTTP+SSE predates 2026: only the initialize handshake runs over it.
                mode="legacy" if transport is McpTransport.SSE else "auto",
                client_info=mcp_types.Implementation(name=_CLIENT_NAME, version=_CLIENT_VERSION),
                cache=None,  # one probe, one session: nothing to reuse
            )
            async with client:
                result = await _validate(ctx, client.session)
    except Exception as exc:  # the SDK's ExceptionGroups included; unwrapped below
        caught = exc
    if result is not None:
        return result  # whatever broke while closing the session does not change the verdict
    if watch.error is not None:
        raise watch.error  # from ctx.http: the caller names network failures by phase
    if watch.outcome is not None:
        return watch.outcome
    if caught is None:  # cancelled without a recorded reason: cannot happen, but never lie
        raise RuntimeError("MCP session ended without an outcome")
    return _classify(ctx, caught, watch)


async def _validate(ctx: ProbeContext, session: ClientSession) -> ProbeOutcome:
    """Report the handshake the SDK negotiated, then list tools for Model."""
    handshake = "server/discover" if session.discover_result is not None else "initialize"
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
        return ok(f"{said}.", None, **details)

    capabilities = session.server_capabilities
    if capabilities is not None and capabilities.tools is None:
        # Servers with tools must declare the capability; listing them anyway breaks the protocol.
        details["toolCount"] = "0"
        return ok(
            f"{said}; it declares no tools capability, so it offers no tools.", None, **details
        )
    ctx.found.step = "tools/list"
    count, complete = await _count_tools(session)
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


# --- exceptions the SDK raised ---------------------------------------------------------


def _classify(ctx: ProbeContext, exc: Exception, watch: Watch) -> ProbeOutcome:
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


def _mcp_outcome(exc: Exception, watch: Watch) -> ProbeOutcome | None:
    step = watch.step
    status = watch.statuses[-1] if watch.statuses else None
    hint = transport_hint(watch.transport, status, "POST")
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
            f"{transport_hint(watch.transport, None, 'GET')}",
        )
    if isinstance(exc, httpx2.HTTPStatusError):
        # Normally decided by the watch already; this covers answers it lets through.
        code = exc.response.status_code
        return ProbeOutcome(
            Reason.PROTOCOL_ERROR,
            f"The MCP server answered HTTP {code} during {step}"
            f"{transport_hint(watch.transport, code, exc.request.method)}",
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
            f"(the first event of legacy HTTP+SSE){transport_hint(watch.transport, None, 'GET')}",
        )
    if isinstance(exc, ValueError) and text.startswith("Endpoint origin does not match"):
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            "The SSE endpoint event named a POST URL on another origin; credentials are "
            "never sent there. Check spec.endpoint.",
        )
    return None


def _location(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "?"
    return ".".join(str(part) for part in errors[0]["loc"]) or "the top level"


def _shown(text: str, limit: int = 128) -> str:
    """A server-supplied string fit for status: printable, bounded."""
    return _SHOWN.sub("?", text)[:limit]
