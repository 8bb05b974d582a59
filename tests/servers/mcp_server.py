"""A real MCP server (official `mcp` SDK) behind a bearer-token gate, plus ways to misbehave.

`make_app()` serves one `MCPServer` over streamable HTTP at `/mcp` and legacy HTTP+SSE at
`/sse` (POSTs to `/messages/`). A small ASGI gate in front demands `Authorization: Bearer
<token>` when a token is configured and answers 401 with `WWW-Authenticate: Bearer
resource_metadata=...` otherwise, as MCP's authorization spec has it. Modes replace the MCP
server with answers a probe must classify: 403, 429, 503, an HTML page, JSON that is not
JSON-RPC, a 2 MiB body, an off-origin redirect, a hand-written server speaking an older
revision, and servers of one era only. Every request's headers are kept in `app.seen`.

Eras (sources: the mcp SDK 2.3.0 itself, which is the reference implementation of the
2026-07-28 revision: `mcp/server/streamable_http_manager.py` routes a request by its
MCP-Protocol-Version header, `mcp/server/_streamable_http_modern.py` serves 2026-07-28
requests, and `mcp/shared/inbound.py` ERROR_CODE_HTTP_STATUS sends a JSON-RPC error with
HTTP 400 for -32020 (header mismatch), -32022 and invalid params, and 404 for -32601 (method
not found); the 2026-07-28 versioning and streamable HTTP pages were not read here):
- "mcp": the SDK server as it is, speaking both eras (a client in auto mode gets 2026-07-28).
- "legacy-sdk": the SDK server as a 2025-11-25 server: the MCP-Protocol-Version header of a
  modern request is dropped, so `server/discover` reaches the handshake-era path and is
  refused there, as by servers released before 2026.
- "modern-strict": a 2026-07-28-only server: every POST goes to the SDK's modern path, where an
  old-style `initialize` is refused with a JSON-RPC error (HTTP 400).
- "modern-404": a 2026-07-28-only server that refuses `initialize` as an unknown method: HTTP
  404 with a JSON-RPC -32601 error.
- "modern-only": `initialize` refused with -32022 naming only 2026-07-28 (HTTP 400).

Run it as a process for the demo:
    python tests/servers/mcp_server.py --port 8765 --token demo-token
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

SERVER_NAME = "llmconn-test-mcp"
SERVER_VERSION = "1.0"
# The revision the hand-written "old-revision" server negotiates: the first with streamable HTTP.
OLD_REVISION = "2025-03-26"
MODERN_REVISION = "2026-07-28"
TOOLS_PER_PAGE = 2  # the "old-revision" server pages its tools/list

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Mode = Literal[
    "mcp",  # the real SDK server
    "forbidden",  # 403 after a good token: the key is valid but not allowed
    "html",  # an HTML page at every path: a web site, not an MCP server
    "json",  # JSON that is not JSON-RPC at every path: some other API
    "redirect",  # 307 to `redirect_to` (another origin)
    "unavailable",  # 503, as a gateway in front of a down server answers
    "rate-limited",  # 429 with Retry-After: 7
    "hang",  # accepts the request and never answers
    "silent",  # 202 to POSTs, an event stream without events to GETs: never an answer
    "huge",  # 2 MiB answers (JSON, or one SSE event for a GET): no MCP answer is that large
    "old-revision",  # hand-written JSON-only server that negotiates OLD_REVISION
    "modern-only",  # the SDK server, but `initialize` is refused with -32022
    "modern-strict",  # every POST on the SDK's 2026-07-28 path: initialize refused (400)
    "modern-404",  # initialize refused as an unknown method: 404 with a JSON-RPC error
    "legacy-sdk",  # the SDK server without its 2026-07-28 path: a 2025-11-25 server
]
MODES: tuple[str, ...] = Mode.__args__  # type: ignore[attr-defined]


def build_server(tools: int = 2) -> MCPServer:
    """The SDK server with a couple of tools (or more, to see toolCount move)."""
    server = MCPServer(name=SERVER_NAME, version=SERVER_VERSION, log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    for index in range(2, tools):

        def extra(value: int = 0) -> int:
            return value

        server.tool(name=f"extra_{index}", description="A filler tool.")(extra)
    return server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names


class TestMCPApp:
    """The ASGI app the tests and the demo serve: auth gate, mode, and a request log."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        token: str | None = None,
        mode: Mode = "mcp",
        redirect_to: str | None = None,
        tools: int = 2,
        host: str = "127.0.0.1",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "redirect" and not redirect_to:
            raise ValueError("mode 'redirect' needs redirect_to")
        self.token = token
        self.mode = mode
        self.redirect_to = redirect_to
        self.tools = tools
        self.seen: list[Seen] = []
        server = build_server(tools)
        security = _security_for(host)
        self._streamable = server.streamable_http_app(transport_security=security, host=host)
        self._sse = server.sse_app(transport_security=security, host=host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The streamable app's lifespan runs the SDK's session manager.
            await self._streamable(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        self.seen.append(Seen(scope["method"], path, headers))

        if self.token is not None:
            given = headers.get("authorization", "")
            if not given:
                await _unauthorized(scope, send, None)
                return
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                await _unauthorized(scope, send, "invalid_token")
                return

        match self.mode:
            case "forbidden":
                # MCP authorization (2025-11-25), scope challenge: 403 insufficient_scope names
                # the scope the request needs (RFC 6750 section 3.1).
                denied = {"error": "insufficient_scope", "error_description": "not allowed"}
                challenge = 'Bearer error="insufficient_scope", scope="tools:write"'
                await _reply(
                    send,
                    403,
                    json.dumps(denied).encode(),
                    "application/json",
                    [(b"www-authenticate", challenge)],
                )
            case "html":
                page = b"<!doctype html><html><body><h1>Welcome</h1></body></html>"
                await _reply(send, 200, page, "text/html; charset=utf-8")
            case "json":
                await _reply(send, 200, b'{"status": "ok", "items": [1, 2, 3]}', "application/json")
            case "redirect":
                assert self.redirect_to is not None
                await _reply(send, 307, b"", "text/plain", [(b"location", self.redirect_to)])
            case "unavailable":
                await _reply(send, 503, b'{"error": "upstream down"}', "application/json")
            case "rate-limited":
                body = b'{"error": "slow down"}'
                await _reply(send, 429, body, "application/json", [(b"retry-after", "7")])
            case "hang":
                await asyncio.Event().wait()
            case "silent" if scope["method"] == "GET":
                await _reply(send, 200, b": nothing to say\n\n", "text/event-stream")
            case "silent":
                await _reply(send, 202, b"", "text/plain")
            case "huge" if scope["method"] == "GET":
                await _reply(send, 200, b"data: " + b"x" * (2 << 20) + b"\n\n", "text/event-stream")
            case "huge":
                filler = b'{"jsonrpc": "2.0", "id": 0, "result": {"pad": "' + b"x" * (2 << 20)
                await _reply(send, 200, filler + b'"}}', "application/json")
            case "old-revision":
                await _old_revision(scope, receive, send, self.tools)
            case "modern-only" | "modern-404":
                await self._modern_only(scope, receive, send)
            case "modern-strict":
                await self._route(_with_version(scope, "2026-07-28"), receive, send)
            case "legacy-sdk":
                await self._route(_with_version(scope, None), receive, send)
            case "mcp":
                await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/sse" or path.startswith("/messages"):
            await self._sse(scope, receive, send)
        else:
            await self._streamable(scope, receive, send)

    async def _modern_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SDK server, refusing the initialize handshake the way a 2026-only server does."""
        if scope["method"] != "POST":
            await self._route(scope, receive, send)
            return
        body = await _read_body(receive)
        message = _loads(body)
        if isinstance(message, dict) and message.get("method") == "initialize":
            if self.mode == "modern-404":
                error = {
                    "jsonrpc": "2.0",
                    "id": message.get("id"),
                    "error": {"code": -32601, "message": "Method not found", "data": "initialize"},
                }
                await _reply(send, 404, json.dumps(error).encode(), "application/json")
                return
            error = {
                "jsonrpc": "2.0",
                "id": message.get("id"),
                "error": {
                    "code": -32022,
                    "message": "Unsupported protocol version",
                    "data": {
                        "supported": [MODERN_REVISION],
                        "requested": str(message.get("params", {}).get("protocolVersion")),
                    },
                },
            }
            await _reply(send, 400, json.dumps(error).encode(), "application/json")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._route(scope, replay, send)


def _with_version(scope: Scope, modern: str | None) -> Scope:
    """The request with its MCP-Protocol-Version header rewritten: `modern` unless the client
    sent a 2026 one (modern-strict), or without a 2026 one (legacy-sdk, `modern` None)."""
    name = b"mcp-protocol-version"
    sent = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == name), None)
    handshake = sent in HANDSHAKE_PROTOCOL_VERSIONS
    keep = handshake if modern is None else sent is not None and not handshake
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != name]
    if keep and sent is not None:
        headers.append((name, sent.encode("latin-1")))
    elif modern is not None:
        headers.append((name, modern.encode("latin-1")))
    return {**scope, "headers": headers}


def make_app(
    *,
    token: str | None = None,
    mode: Mode = "mcp",
    redirect_to: str | None = None,
    tools: int = 2,
    host: str = "127.0.0.1",
) -> TestMCPApp:
    """An MCP test server app: streamable HTTP at /mcp, legacy SSE at /sse."""
    return TestMCPApp(token=token, mode=mode, redirect_to=redirect_to, tools=tools, host=host)


def _security_for(host: str) -> TransportSecuritySettings | None:
    # The SDK turns on DNS-rebinding protection for loopback hosts by itself; on any other
    # bind address (a demo in a pod) the Host header is whatever clients used, so allow it.
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


async def _unauthorized(scope: Scope, send: Send, error: str | None) -> None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    scheme = scope.get("scheme", "http")
    metadata = f"{scheme}://{headers.get('host', 'localhost')}/.well-known/oauth-protected-resource"
    # MCP authorization (2025-11-25): the challenge names the protected resource metadata
    # (RFC 9728) and SHOULD name the scope the client needs.
    challenge = f'Bearer resource_metadata="{metadata}{scope["path"]}", scope="tools:read"'
    if error:
        challenge = f'Bearer error="{error}", ' + challenge.removeprefix("Bearer ")
    body = {"error": error or "invalid_request", "error_description": "Authentication required"}
    await _reply(
        send,
        401,
        json.dumps(body).encode(),
        "application/json",
        [(b"www-authenticate", challenge)],
    )


async def _old_revision(scope: Scope, receive: Receive, send: Send, tools: int) -> None:
    """A minimal streamable-HTTP server, JSON responses only, that negotiates OLD_REVISION.

    It lists `tools` tools, TOOLS_PER_PAGE to a page; with none it declares no tools
    capability at all."""
    if scope["path"] != "/mcp":
        await _reply(send, 404, b"Not Found", "text/plain")
        return
    if scope["method"] == "GET":
        await _reply(send, 405, b"", "text/plain")  # no server-initiated stream
        return
    if scope["method"] == "DELETE":
        await _reply(send, 200, b"", "text/plain")
        return
    message = _loads(await _read_body(receive))
    if not isinstance(message, dict) or "id" not in message:
        await _reply(send, 202, b"", "text/plain")  # a notification
        return
    result: dict[str, Any]
    match message.get("method"):
        case "initialize":
            result = {
                "protocolVersion": OLD_REVISION,
                "capabilities": {"tools": {}} if tools else {},
                "serverInfo": {"name": "old-mcp", "version": "0.9"},
            }
        case "tools/list":
            start = int((message.get("params") or {}).get("cursor") or 0)
            end = min(start + TOOLS_PER_PAGE, tools)
            schema = {"type": "object", "properties": {}}
            result = {
                "tools": [{"name": f"ping_{i}", "inputSchema": schema} for i in range(start, end)]
            }
            if end < tools:
                result["nextCursor"] = str(end)
        case _:
            error = {"code": -32601, "message": "Method not found"}
            body = {"jsonrpc": "2.0", "id": message["id"], "error": error}
            await _reply(send, 200, json.dumps(body).encode(), "application/json")
            return
    body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
    await _reply(
        send,
        200,
        json.dumps(body).encode(),
        "application/json",
        [(b"mcp-session-id", "old-session-1")],
    )


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, str]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(name, value.encode("latin-1")) for name, value in extra or []]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help="demand this bearer token")
    parser.add_argument("--mode", default="mcp", choices=MODES)
    parser.add_argument("--redirect-to", default=None)
    parser.add_argument("--tools", type=int, default=2)
    args = parser.parse_args()
    app = make_app(
        token=args.token,
        mode=args.mode,
        redirect_to=args.redirect_to,
        tools=args.tools,
        host=args.host,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
