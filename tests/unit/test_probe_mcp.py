"""The MCP probe against a real MCP server (official SDK) on loopback, over both transports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from llmconn.model.blocks import McpSpec, McpTransport
from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec, registry
from llmconn.probes.base import ProbeContext, ProbeOutcome
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.mcp_server import TestMCPApp, make_app
from servers.serve import free_port, serve

TOKEN = "mcp-token-5f3a9c1e7d"
WRONG = "mcp-token-wrong-0b8e2a"
STREAMABLE, SSE = McpTransport.STREAMABLE_HTTP, McpTransport.SSE
PATHS = {STREAMABLE: "/mcp", SSE: "/sse"}
both_transports = pytest.mark.parametrize("transport", [STREAMABLE, SSE], ids=["streamable", "sse"])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[str, TestMCPApp]]]:
    """One server per behaviour, shared by the module: name -> (base URL, app)."""
    apps = {
        "open": make_app(),
        "token": make_app(token=TOKEN),
        "forbidden": make_app(token=TOKEN, mode="forbidden"),
        "html": make_app(mode="html"),
        "json": make_app(mode="json"),
        "huge": make_app(mode="huge"),
        "unavailable": make_app(mode="unavailable"),
        "rate-limited": make_app(mode="rate-limited"),
        "old": make_app(mode="old-revision", tools=1),
        "old-paged": make_app(mode="old-revision", tools=5),
        "old-many": make_app(mode="old-revision", tools=25),
        "old-no-tools": make_app(mode="old-revision", tools=0),
        "modern": make_app(mode="modern-only"),
        "modern-strict": make_app(mode="modern-strict"),
        "modern-404": make_app(mode="modern-404"),
        "legacy-sdk": make_app(mode="legacy-sdk"),
        "five-tools": make_app(tools=5),
        "hang": make_app(mode="hang"),
        "silent": make_app(mode="silent"),
    }
    with contextlib.ExitStack() as stack:
        yield {name: (stack.enter_context(serve(app)), app) for name, app in apps.items()}


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    # The operator's own client: its transport holds the body size cap.
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    try:
        yield pool.client()
    finally:
        await pool.aclose()


def context(
    http: httpx2.AsyncClient,
    url: str,
    transport: McpTransport = STREAMABLE,
    *,
    key: str | None = None,
    vtype: ValidationType = ValidationType.MODEL,
    headers: dict[str, str] | None = None,
    key_ref: SecretKeyRef | None = None,
) -> ProbeContext:
    return ProbeContext(
        provider=registry.get("mcp"),
        endpoint=url,
        validation_type=vtype,
        http=http,
        timeout=5,
        api_key=key,
        api_key_ref=key_ref,
        headers=headers or {},
        mcp=McpSpec(transport=transport),
    )


async def run(ctx: ProbeContext) -> ProbeOutcome:
    # A guard against a hung session failing the whole run; not an assertion on speed.
    async with asyncio.timeout(30):
        return await ctx.provider.probe(ctx)


def url_of(servers: dict[str, tuple[str, TestMCPApp]], name: str, transport: McpTransport) -> str:
    return servers[name][0] + PATHS[transport]


def assert_secret_free(outcome: ProbeOutcome, *secrets: str) -> None:
    shown = " ".join([outcome.message, outcome.code or "", *outcome.details.values()])
    for secret in secrets:
        assert secret not in shown


# --- success ----------------------------------------------------------------------------


@both_transports
async def test_open_server_validates_with_details(servers, http, transport) -> None:
    ctx = context(http, url_of(servers, "open", transport), transport)
    outcome = await run(ctx)

    # The SDK server speaks both eras: over streamable HTTP the SDK's auto mode negotiates
    # 2026-07-28 with server/discover; legacy HTTP+SSE has only the initialize handshake.
    protocol, handshake = {
        STREAMABLE: ("2026-07-28", "server/discover"),
        SSE: ("2025-11-25", "initialize"),
    }[transport]
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert dict(outcome.details) == {
        "serverName": "llmconn-test-mcp",
        "serverVersion": "1.0",
        "protocolVersion": protocol,
        "toolCount": "2",
    }
    assert outcome.message == (
        f"MCP server llmconn-test-mcp 1.0 answered {handshake} (protocol {protocol}); "
        "2 tools listed."
    )
    assert ctx.found.step == "tools/list"  # the protocol step, apart from the network phase


@both_transports
async def test_good_token_validates_and_is_sent_on_every_request(servers, http, transport) -> None:
    base, app = servers["token"]
    before = len(app.seen)
    outcome = await run(context(http, base + PATHS[transport], transport, key=TOKEN))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["serverName"] == "llmconn-test-mcp"
    seen = app.seen[before:]
    assert seen, "the server saw no request"
    assert {s.headers.get("authorization") for s in seen} == {f"Bearer {TOKEN}"}
    assert_secret_free(outcome, TOKEN)


@both_transports
async def test_tool_count_is_the_servers(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "five-tools", transport), transport))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["toolCount"] == "5"
    assert outcome.message.endswith("; 5 tools listed.")


@both_transports
async def test_connectivity_is_the_handshake_only(servers, http, transport) -> None:
    url = url_of(servers, "five-tools", transport)
    outcome = await run(context(http, url, transport, vtype=ValidationType.CONNECTIVITY))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert "toolCount" not in outcome.details
    said = {
        STREAMABLE: "server/discover (protocol 2026-07-28)",
        SSE: "initialize (protocol 2025-11-25)",
    }[transport]
    assert outcome.message == f"MCP server llmconn-test-mcp 1.0 answered {said}."


async def test_inference_means_model_for_mcp(servers, http) -> None:
    url = url_of(servers, "five-tools", STREAMABLE)
    outcome = await run(context(http, url, vtype=ValidationType.INFERENCE))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["toolCount"] == "5"


async def test_an_older_revision_is_accepted(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "old", STREAMABLE)))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert dict(outcome.details) == {
        "serverName": "old-mcp",
        "serverVersion": "0.9",
        "protocolVersion": "2025-03-26",
        "toolCount": "1",
    }
    assert outcome.message.endswith("(protocol 2025-03-26); 1 tool listed.")


async def test_every_page_of_tools_is_counted(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "old-paged", STREAMABLE)))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["toolCount"] == "5"  # three pages of two


async def test_the_tool_count_stops_after_ten_pages(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "old-many", STREAMABLE)))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["toolCount"] == "20+"
    assert outcome.message.endswith("; more than 20 tools listed.")


async def test_a_server_without_tools_is_validated_with_none(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "old-no-tools", STREAMABLE)))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["toolCount"] == "0"
    assert "declares no tools capability" in outcome.message


# Issue 10, item 8: servers that speak only 2026-07-28 refuse an old-style initialize (400 or
# 404 with a JSON-RPC error); the SDK's auto mode asks server/discover first. Servers of the
# handshake era still validate through the fallback to initialize.
@pytest.mark.parametrize("name", ["modern-strict", "modern-404", "modern"])
async def test_a_2026_only_server_is_validated_with_discover(servers, http, name) -> None:
    ctx = context(http, url_of(servers, name, STREAMABLE))
    outcome = await run(ctx)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["protocolVersion"] == "2026-07-28"
    assert outcome.details["toolCount"] == "2"
    assert "answered server/discover" in outcome.message


@pytest.mark.parametrize(
    ("name", "protocol"), [("legacy-sdk", "2025-11-25"), ("old", "2025-03-26")]
)
async def test_a_handshake_era_server_falls_back_to_initialize(
    servers, http, name, protocol
) -> None:
    outcome = await run(context(http, url_of(servers, name, STREAMABLE)))

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.details["protocolVersion"] == protocol
    assert "answered initialize" in outcome.message


async def test_the_shared_client_carries_the_traffic_and_stays_open(servers) -> None:
    sent: list[str] = []

    async def hook(request: httpx2.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    async with httpx2.AsyncClient(event_hooks={"request": [hook]}) as shared:
        for transport in (STREAMABLE, SSE):
            outcome = await run(context(shared, url_of(servers, "open", transport), transport))
            assert outcome.reason is Reason.VALIDATED, outcome.message
        assert not shared.is_closed
        # The shared client still works after both sessions closed their own clients.
        assert (await shared.get(servers["open"][0] + "/elsewhere")).status_code == 404

    assert "POST /mcp" in sent
    assert "GET /sse" in sent
    assert any(s.startswith("POST /messages/") for s in sent)


class Refused(Exception):
    """What an egress policy in ctx.http raises."""


class _Policy(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise Refused(f"{request.url.host} is not allowed")


@both_transports
async def test_the_egress_policy_of_the_shared_client_applies(servers, transport) -> None:
    async with httpx2.AsyncClient(transport=_Policy()) as shared:
        ctx = context(shared, url_of(servers, "open", transport), transport)
        with pytest.raises(Refused):
            await run(ctx)


@both_transports
async def test_extra_headers_arrive(servers, http, transport) -> None:
    base, app = servers["token"]
    before = len(app.seen)
    extra = {"X-Gateway-Token": "gw-secret-1", "X-Team": "agents"}
    ctx = context(http, base + PATHS[transport], transport, key=TOKEN, headers=extra)
    outcome = await run(ctx)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    seen = app.seen[before:]
    assert seen
    for request in seen:
        assert request.headers.get("x-gateway-token") == "gw-secret-1"
        assert request.headers.get("x-team") == "agents"
    assert_secret_free(outcome, "gw-secret-1")


# --- credentials ------------------------------------------------------------------------


@both_transports
async def test_wrong_token_is_invalid_api_key(servers, http, transport) -> None:
    ref = SecretKeyRef(name="mcp-credentials", key="token")
    ctx = context(http, url_of(servers, "token", transport), transport, key=WRONG, key_ref=ref)
    outcome = await run(ctx)

    assert outcome.reason is Reason.INVALID_API_KEY, outcome.message
    assert outcome.http_status == 401
    assert outcome.code == "invalid_token"
    assert "update key token of Secret mcp-credentials" in outcome.message
    assert_secret_free(outcome, WRONG, TOKEN)


@both_transports
async def test_missing_token_is_invalid_api_key(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "token", transport), transport))

    assert outcome.reason is Reason.INVALID_API_KEY, outcome.message
    assert outcome.http_status == 401
    assert "no bearer token was sent" in outcome.message
    assert "spec.apiKeySecretRef" in outcome.message
    # The OAuth challenge: where the protected resource metadata is, and the scope it wants.
    metadata = outcome.details["resourceMetadata"]
    assert metadata.startswith(servers["token"][0] + "/.well-known/oauth-protected-resource")
    assert outcome.details["requiredScope"] == "tools:read"
    assert metadata in outcome.message and "scope tools:read" in outcome.message


@both_transports
async def test_forbidden_is_permission_denied(servers, http, transport) -> None:
    ctx = context(http, url_of(servers, "forbidden", transport), transport, key=TOKEN)
    outcome = await run(ctx)

    assert outcome.reason is Reason.PERMISSION_DENIED, outcome.message
    assert outcome.http_status == 403
    assert outcome.code == "insufficient_scope"
    assert "needs scope tools:write" in outcome.message
    assert outcome.details["requiredScope"] == "tools:write"
    assert_secret_free(outcome, TOKEN)


# --- not an MCP server ------------------------------------------------------------------


@both_transports
async def test_an_html_page_is_unexpected_response(servers, http, transport) -> None:
    # An HTML page is a web site or a login wall in front of the server: UnexpectedResponse
    # (transient, like every provider's HTML answer), not a broken MCP handshake.
    outcome = await run(context(http, url_of(servers, "html", transport), transport))

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert "HTML" in outcome.message
    assert outcome.http_status == 200


@both_transports
async def test_json_that_is_not_json_rpc_is_protocol_error(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "json", transport), transport))

    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.message
    assert "application/json" in outcome.message


@both_transports
async def test_a_server_that_never_answers_in_mcp_is_protocol_error(
    servers, http, transport
) -> None:
    outcome = await run(context(http, url_of(servers, "silent", transport), transport))

    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.message


@both_transports
async def test_a_wrong_path_is_unexpected_response(servers, http, transport) -> None:
    outcome = await run(context(http, servers["open"][0] + "/nowhere", transport))

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert outcome.http_status == 404
    assert "No MCP server at this path" in outcome.message


async def test_streamable_at_an_sse_endpoint_suggests_the_sse_transport(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "open", SSE), STREAMABLE))

    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.message
    assert outcome.http_status == 405
    assert "spec.mcp.transport: sse" in outcome.message


async def test_sse_at_a_streamable_endpoint_is_protocol_error(servers, http) -> None:
    outcome = await run(context(http, url_of(servers, "open", STREAMABLE), SSE))

    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.message
    assert "streamable-http" in outcome.message


@both_transports
async def test_an_oversized_answer_is_unexpected_response(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "huge", transport), transport))

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert "larger than 1 MiB" in outcome.message


@both_transports
async def test_503_is_provider_unavailable(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "unavailable", transport), transport))

    assert outcome.reason is Reason.PROVIDER_UNAVAILABLE, outcome.message
    assert outcome.http_status == 503


@both_transports
async def test_429_is_rate_limited_with_retry_after(servers, http, transport) -> None:
    outcome = await run(context(http, url_of(servers, "rate-limited", transport), transport))

    assert outcome.reason is Reason.RATE_LIMITED, outcome.message
    assert outcome.retry_after == 7


# --- redirects and the network ----------------------------------------------------------


@both_transports
async def test_an_off_origin_redirect_is_not_followed(http, transport) -> None:
    target = make_app()
    with serve(target) as elsewhere:
        redirector = make_app(token=TOKEN, mode="redirect", redirect_to=elsewhere + "/mcp")
        with serve(redirector) as base:
            ctx = context(http, base + PATHS[transport], transport, key=TOKEN)
            outcome = await run(ctx)

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert outcome.http_status == 307
    assert "another host" in outcome.message
    assert target.seen == []  # nothing, and so no token, went to the other origin
    assert_secret_free(outcome, TOKEN)


@both_transports
async def test_a_refused_port_raises_the_network_error_itself(http, transport) -> None:
    url = f"http://127.0.0.1:{free_port()}{PATHS[transport]}"

    with pytest.raises(httpx2.ConnectError) as raised:
        await run(context(http, url, transport, key=TOKEN))

    assert not isinstance(raised.value, BaseExceptionGroup)
    assert TOKEN not in str(raised.value)


@both_transports
async def test_the_callers_timeout_is_not_swallowed(servers, http, transport) -> None:
    # The caller's asyncio.timeout is the probe budget; the SDK's task groups and the
    # probe's own cancel scope must let its cancellation through.
    ctx = context(http, url_of(servers, "hang", transport), transport)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await ctx.provider.probe(ctx)

    assert ctx.found.phase == "response"  # waiting for the answer: the caller names it Timeout


# --- through the validation core, as the operator runs it -------------------------------


class Secrets:
    def __init__(self, **data: dict[str, bytes]) -> None:
        self._data = data

    async def get(self, name: str) -> SecretData | None:
        found = self._data.get(name.replace("-", "_"))
        return SecretData(found, "7") if found is not None else None


def mcp_spec(url: str, transport: McpTransport, **extra: object) -> LLMConnectionSpec:
    raw: dict[str, object] = {
        "provider": "mcp",
        "endpoint": url,
        "apiKeySecretRef": {"name": "mcp-credentials", "key": "token"},
        "mcp": {"transport": transport.value},
        "validation": {"type": "Model", "timeout": "5s"},
    }
    return parse_spec({**raw, **extra})


@both_transports
async def test_validate_names_every_outcome(servers, transport) -> None:
    good = Secrets(mcp_credentials={"token": TOKEN.encode()})
    bad = Secrets(mcp_credentials={"token": WRONG.encode()})
    url = url_of(servers, "token", transport)
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    try:
        validated = await validate(mcp_spec(url, transport), good, pool, Defaults())
        rejected = await validate(mcp_spec(url, transport), bad, pool, Defaults())
        refused_url = f"http://127.0.0.1:{free_port()}{PATHS[transport]}"
        refused = await validate(mcp_spec(refused_url, transport), good, pool, Defaults())
    finally:
        await pool.aclose()

    assert validated.reason is Reason.VALIDATED, validated.message
    assert validated.details["serverName"] == "llmconn-test-mcp"
    assert validated.details["toolCount"] == "2"
    assert rejected.reason is Reason.INVALID_API_KEY, rejected.message
    assert "update key token of Secret mcp-credentials" in rejected.message
    assert refused.reason is Reason.CONNECTION_FAILED, refused.message
    for verdict in (validated, rejected, refused):
        shown = " ".join([verdict.message, verdict.code or "", *verdict.details.values()])
        assert TOKEN not in shown and WRONG not in shown


async def test_validate_holds_mcp_to_the_egress_policy(servers) -> None:
    base, app = servers["open"]
    before = len(app.seen)
    good = Secrets(mcp_credentials={"token": TOKEN.encode()})
    pool = ClientPool(
        EgressPolicy.from_strings(deny=["127.0.0.0/8"]), resolver=loopback_only, proxies={}
    )
    try:
        verdict = await validate(mcp_spec(base + "/mcp", STREAMABLE), good, pool, Defaults())
    finally:
        await pool.aclose()

    assert verdict.reason is Reason.EGRESS_DENIED, verdict.message
    assert len(app.seen) == before


def test_the_provider_is_registered_without_inference() -> None:
    info = registry.get("mcp")
    assert info.default_endpoint is None
    assert info.inference is False
    assert info.title == "Model Context Protocol server"
