"""spec.oauth end to end through `validate()`: an MCP server and a gateway behind the `mcp`
SDK's own server-side auth on loopback (servers/oauth_world.py), for each form and each
failure the verdict must name. Secrets come from a fake Secret source and ServiceAccount
tokens from a loopback issuer (the operator's e2e test mints real ones)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from starlette.responses import JSONResponse

from llmconn.model.limits import MAX_CREDENTIAL_BYTES
from llmconn.model.reasons import Reason
from llmconn.model.verdict import Defaults, SecretData, Verdict
from llmconn.net.egress import EgressPolicy
from llmconn.net.exchange import Reply, UnreadableAnswer
from llmconn.net.oauth import token_answer
from llmconn.net.pool import TENANT, ClientPool
from llmconn.probes import oauth_client, parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.misbehaving import Behaviour, RawServer, answer, by_path, hang
from servers.oauth_world import AuthorizationServer, Client, ResourceServer
from servers.oidc import Issuer, TrustedIssuer
from servers.serve import serve

SECRET = "cs-7a1f0e9b3c5d2a8e"
POST_SECRET = "cs-post-4b6e8d0f2a1c"
NAMESPACE, ACCOUNT = "team-a", "agent"


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass
class World:
    authz: AuthorizationServer
    rs: ResourceServer
    cluster: Issuer

    @property
    def mcp(self) -> str:
        return self.rs.url + "/mcp"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    authz = AuthorizationServer()
    rs = ResourceServer(authz)
    cluster = Issuer()
    with contextlib.ExitStack() as stack:
        authz.bind(stack.enter_context(serve(authz.app())))
        rs.bind(stack.enter_context(serve(rs)))
        cluster.url = stack.enter_context(serve(cluster.app()))
        scopes = {"mcp:tools", "models:read"}
        clients = authz.provider.clients
        clients["cc-basic"] = Client("cc-basic", scopes, secret=SECRET)
        clients["cc-post"] = Client(
            "cc-post", scopes, secret=POST_SECRET, method="client_secret_post"
        )
        clients["pk-rsa"] = Client(
            "pk-rsa", scopes, method="private_key_jwt", public_key=public_pem(RSA_KEY)
        )
        clients["pk-ec"] = Client(
            "pk-ec", scopes, method="private_key_jwt", public_key=public_pem(EC_KEY)
        )
        clients["sa-client"] = Client(
            "sa-client",
            scopes,
            method="private_key_jwt",
            issuer=TrustedIssuer(cluster.url),
            subject=f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
        )
        yield World(authz, rs, cluster)


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    try:
        yield pool
    finally:
        await pool.aclose()


class Secrets:
    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.data = data

    async def get(self, name: str) -> SecretData | None:
        found = self.data.get(name)
        if found is None:
            return None
        return SecretData({k: v.encode() for k, v in found.items()}, resource_version="7")


class Tokens:
    """TokenRequest, as the loopback cluster's issuer would answer it."""

    def __init__(self, cluster: Issuer, subject_name: str = ACCOUNT) -> None:
        self.cluster = cluster
        self.name = subject_name
        self.audiences: list[str] = []
        self.minted: list[str] = []

    async def token(self, service_account: str, audience: str) -> str | None:
        if service_account != ACCOUNT:
            return None
        self.audiences.append(audience)
        token = self.cluster.service_account_token(NAMESPACE, self.name, audience)
        self.minted.append(token)
        return token


def cc_secrets(client_id: str = "cc-basic", secret: str = SECRET) -> Secrets:
    return Secrets({"mcp-client": {"clientId": client_id, "clientSecret": secret}})


def spec(endpoint: str, oauth: dict[str, Any], provider: str = "mcp", **more: Any) -> Any:
    return parse_spec({"provider": provider, "endpoint": endpoint, "oauth": oauth, **more})


CC = {"clientCredentials": {"secretName": "mcp-client"}, "scopes": ["mcp:tools"]}


async def run(
    pool: ClientPool, raw: Any, secrets: Secrets | None = None, tokens: Tokens | None = None
) -> Verdict:
    return await validate(raw, secrets or Secrets({}), pool, Defaults(timeout=10), tokens=tokens)


def assert_no_leak(verdict: Verdict, world: World, *more: str) -> None:
    shown = json.dumps([verdict.message, verdict.code, dict(verdict.details), verdict.request_id])
    for value in [*world.authz.provider.issued, SECRET, POST_SECRET, *more]:
        assert value not in shown
    assert "BEGIN" not in shown and "PRIVATE" not in shown


# --- each form, end to end --------------------------------------------------------------


async def test_client_credentials_basic_validates_the_mcp_server_with_the_chain_in_details(
    world, pool
) -> None:
    before = len(world.authz.requests)
    raw = spec(world.mcp, CC, validation={"type": "Model"})  # the session and tools/list
    verdict = await run(pool, raw, cc_secrets())

    assert verdict.reason is Reason.VALIDATED, verdict.message
    details = dict(verdict.details)
    assert details["oauthResourceMetadata"] == (
        f"{world.rs.url}/.well-known/oauth-protected-resource/mcp"
    )
    assert details["oauthIssuer"] == world.authz.issuer
    assert details["oauthScopes"] == "mcp:tools"
    assert details["oauthTokenLifetime"] == "600s"
    assert details["oauthResource"] == world.mcp
    assert details["toolCount"] == "2"
    assert f"Access token from {world.authz.issuer} (scopes mcp:tools, valid 600 s)" in (
        verdict.message
    )
    # Basic authentication (the metadata offers both; Basic is RFC 8414's default), the
    # scope as given and the resource indicator, and the token on the MCP requests.
    form = world.authz.requests[before]
    assert "client_secret" not in form and form["client_id"] == "cc-basic"
    assert form["scope"] == "mcp:tools" and form["resource"] == world.mcp
    assert f"Bearer {world.authz.provider.issued[-1]}" in world.rs.seen_tokens
    assert_no_leak(verdict, world)


async def test_client_credentials_post_when_asked(world, pool) -> None:
    oauth = {
        "clientCredentials": {"secretName": "mcp-client", "authMethod": "client_secret_post"},
        "scopes": ["mcp:tools"],
    }
    before = len(world.authz.requests)
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets("cc-post", POST_SECRET))

    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert world.authz.requests[before]["client_id"] == "cc-post"
    assert_no_leak(verdict, world)


@pytest.mark.parametrize(
    ("client", "key", "algorithm"), [("pk-rsa", RSA_KEY, "RS256"), ("pk-ec", EC_KEY, "ES256")]
)
async def test_private_key_jwt_validates(world, pool, client, key, algorithm) -> None:
    oauth = {
        "privateKeyJWT": {"clientId": client, "secretName": "mcp-key", "algorithm": algorithm},
        "scopes": ["mcp:tools"],
    }
    before = len(world.authz.requests)
    verdict = await run(
        pool, spec(world.mcp, oauth), Secrets({"mcp-key": {"privateKey": pem(key)}})
    )

    assert verdict.reason is Reason.VALIDATED, verdict.message
    assertion = world.authz.requests[before]["client_assertion"]
    assert_no_leak(verdict, world, assertion)


async def test_service_account_token_is_the_client_assertion(world, pool) -> None:
    tokens = Tokens(world.cluster)
    oauth = {
        "serviceAccount": {"serviceAccountName": ACCOUNT, "clientId": "sa-client"},
        "scopes": ["mcp:tools"],
    }
    verdict = await run(pool, spec(world.mcp, oauth), tokens=tokens)

    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert tokens.audiences == [world.authz.issuer]  # minted for the issuer found
    assert_no_leak(verdict, world, *tokens.minted)


async def test_gateway_model_list_with_the_same_chain(world, pool) -> None:
    oauth = {**CC, "scopes": ["models:read"]}
    raw = spec(world.rs.url + "/v1", oauth, provider="openai-compatible", model="gpt-gateway")
    verdict = await run(pool, raw, cc_secrets())

    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert verdict.details["oauthResourceMetadata"].endswith("/oauth-protected-resource/v1")
    assert verdict.details["oauthScopes"] == "models:read"
    assert_no_leak(verdict, world)


# --- failures, each named ---------------------------------------------------------------


async def test_a_wrong_client_secret_is_invalid_api_key_naming_the_secret(world, pool) -> None:
    verdict = await run(pool, spec(world.mcp, CC), cc_secrets(secret="cs-wrong-000111222"))

    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "invalid_client"
    assert "Secret mcp-client" in verdict.message and "clientSecret" in verdict.message
    assert world.authz.issuer in verdict.message
    assert verdict.observed_secrets[0].name == "mcp-client"  # rotating it revalidates
    assert_no_leak(verdict, world, "cs-wrong-000111222")


async def test_a_key_the_client_is_not_registered_with_is_invalid_api_key(world, pool) -> None:
    oauth = {"privateKeyJWT": {"clientId": "pk-rsa", "secretName": "mcp-key"}}
    verdict = await run(
        pool, spec(world.mcp, oauth), Secrets({"mcp-key": {"privateKey": pem(OTHER_KEY)}})
    )

    assert verdict.reason is Reason.INVALID_API_KEY
    assert "key privateKey of Secret mcp-key" in verdict.message
    assert_no_leak(verdict, world)


async def test_a_refused_service_account_token_names_its_subject(world, pool) -> None:
    tokens = Tokens(world.cluster, subject_name="someone-else")
    oauth = {"serviceAccount": {"serviceAccountName": ACCOUNT, "clientId": "sa-client"}}
    verdict = await run(pool, spec(world.mcp, oauth), tokens=tokens)

    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert f"subject system:serviceaccount:{NAMESPACE}:someone-else" in verdict.message
    assert_no_leak(verdict, world, *tokens.minted)


async def test_a_scope_the_client_may_not_have_is_named(world, pool) -> None:
    oauth = {**CC, "scopes": ["mcp:tools", "admin:all"]}
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())

    assert verdict.reason is Reason.PERMISSION_DENIED
    assert verdict.code == "invalid_scope"
    assert "mcp:tools admin:all" in verdict.message


async def test_a_refused_resource_indicator_is_named(world, pool) -> None:
    oauth = {**CC, "resource": "https://elsewhere.example/mcp", "issuer": world.authz.issuer}
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())

    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert verdict.code == "invalid_target"
    assert "https://elsewhere.example/mcp" in verdict.message


async def test_a_token_for_another_resource_is_refused_by_the_mcp_server(world, pool) -> None:
    # The authorization server grants a token for the gateway; the MCP server refuses it.
    oauth = {**CC, "resource": world.rs.url + "/v1", "issuer": world.authz.issuer}
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())

    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "invalid_token"
    assert "fresh from " + world.authz.issuer in verdict.message
    assert_no_leak(verdict, world)


async def test_a_missing_scope_after_a_fresh_token_is_permission_denied(world, pool) -> None:
    strict = ResourceServer(world.authz, required_scopes=["mcp:admin"])
    with serve(strict) as url:
        strict.bind(url)
        verdict = await run(pool, spec(url + "/mcp", CC), cc_secrets())

    assert verdict.reason is Reason.PERMISSION_DENIED
    assert verdict.code == "insufficient_scope"
    assert "mcp:tools" in verdict.details["oauthScopes"]
    assert "It needs scope mcp:admin" in verdict.message  # the server's scope challenge
    assert_no_leak(verdict, world)


async def test_no_protected_resource_metadata_names_the_urls_tried(world, pool) -> None:
    bare = ResourceServer(world.authz)
    bare.publish_metadata = False
    with serve(bare) as url:
        bare.bind(url)
        verdict = await run(pool, spec(url + "/mcp", CC), cc_secrets())

    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"{url}/.well-known/oauth-protected-resource/mcp (HTTP 404)" in verdict.message
    assert f"{url}/.well-known/oauth-protected-resource (HTTP 404)" in verdict.message
    assert "spec.oauth.issuer" in verdict.message


async def test_resource_metadata_named_only_by_the_challenge_is_found(world, pool) -> None:
    # RFC 9728 section 5: no metadata at the well-known URLs; the 401's resource_metadata
    # names where it is.
    hidden = ResourceServer(world.authz)
    hidden.metadata_at = "/meta"
    with serve(hidden) as url:
        hidden.bind(url)
        verdict = await run(pool, spec(url + "/mcp", CC), cc_secrets())

    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert verdict.details["oauthResourceMetadata"] == url + "/meta/mcp"
    assert_no_leak(verdict, world)


async def test_an_off_origin_redirect_during_discovery_is_refused(world, pool) -> None:
    asked: list[str] = []

    async def elsewhere(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            asked.append(scope["path"])
        await JSONResponse({"resource": "x", "authorization_servers": []})(scope, receive, send)

    moving = ResourceServer(world.authz)
    with serve(elsewhere) as other, serve(moving) as url:
        moving.bind(url)
        moving.redirect_metadata_to = other
        before = len(world.authz.requests)
        verdict = await run(pool, spec(url + "/mcp", CC), cc_secrets())

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert verdict.http_status == 302
    assert (
        f"The Protected Resource Metadata at {url}/.well-known/oauth-protected-resource/mcp "
        "redirected (HTTP 302) to another host"
    ) in verdict.message
    assert asked == [] and len(world.authz.requests) == before  # nothing went anywhere


async def test_no_authorization_server_metadata_names_the_urls_tried(world, pool) -> None:
    oauth = {**CC, "issuer": world.rs.url + "/nowhere"}
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())

    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"{world.rs.url}/.well-known/oauth-authorization-server/nowhere" in verdict.message
    assert "spec.oauth.tokenURL" in verdict.message


async def test_a_token_url_the_egress_policy_refuses_sends_nothing(world) -> None:
    pool = ClientPool(
        EgressPolicy.from_strings(deny=["127.0.0.9/32"]), resolver=loopback_only, proxies={}
    )
    try:
        oauth = {**CC, "tokenURL": "http://127.0.0.9:9/token"}
        verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())
    finally:
        await pool.aclose()

    assert verdict.reason is Reason.EGRESS_DENIED
    assert "token service at 127.0.0.9" in verdict.message


async def test_an_issuer_that_metadata_does_not_name_is_refused(world, pool) -> None:
    # The metadata at the root names the root issuer; asked for another, nothing is sent.
    oauth = {**CC, "issuer": world.authz.url + "/tenant"}
    before = len(world.authz.requests)
    verdict = await run(pool, spec(world.mcp, oauth), cc_secrets())

    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert len(world.authz.requests) == before


async def test_spec_oauth_needs_exactly_one_form_and_a_provider_that_takes_it() -> None:
    with pytest.raises(ValueError, match="exactly one of clientCredentials"):
        spec("https://mcp.example/mcp", {"scopes": ["a"]})
    with pytest.raises(ValueError, match="oauth is only allowed with provider mcp or"):
        parse_spec({"provider": "openai", "oauth": {"clientCredentials": {"secretName": "x"}}})
    with pytest.raises(ValueError, match="mutually exclusive"):
        spec(
            "https://mcp.example/mcp",
            {"clientCredentials": {"secretName": "x"}},
            apiKeySecretRef={"name": "k"},
        )


async def test_the_client_id_secret_and_key_are_read_as_every_key(world, pool) -> None:
    big = Secrets({"mcp-key": {"privateKey": "x" * (17 * 1024)}})
    oauth = {"privateKeyJWT": {"clientId": "pk-rsa", "secretName": "mcp-key"}}
    verdict = await run(pool, spec(world.mcp, oauth), big)
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    # A private key's own limit, as a service-account key's (tests/security: its modulus).
    assert "the limit is 4096 bytes of PEM" in verdict.message

    verdict = await run(pool, spec(world.mcp, CC), Secrets({"mcp-client": {"clientId": "a"}}))
    assert verdict.reason is Reason.SECRET_KEY_NOT_FOUND


# --- a connection without spec.oauth meets an OAuth challenge -----------------------------


async def test_without_spec_oauth_the_challenge_says_which_form_would_work(world, pool) -> None:
    before = len(world.authz.requests)
    verdict = await run(pool, parse_spec({"provider": "mcp", "endpoint": world.mcp}))

    assert verdict.reason is Reason.INVALID_API_KEY
    assert f"Its authorization server {world.authz.issuer} grants client credentials" in (
        verdict.message
    )
    assert "client_secret_basic, client_secret_post, private_key_jwt" in verdict.message
    assert "set spec.oauth.clientCredentials" in verdict.message
    assert "spec.oauth.privateKeyJWT" in verdict.message
    assert "spec.oauth.serviceAccount" in verdict.message
    assert "spec.oauth.scopes from mcp:tools" in verdict.message
    assert len(world.authz.requests) == before  # metadata only: no token asked for


def challenging(server: RawServer, prm: Behaviour) -> Behaviour:
    """An MCP endpoint at /mcp that answers 401 with an RFC 9728 challenge naming /prm, which
    `prm` answers; the authorization server is the same origin."""
    url = server.url
    metadata = {
        "issuer": url,
        "token_endpoint": url + "/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }
    challenge = f'Bearer error="invalid_token", resource_metadata="{url}/prm"'
    return by_path(
        {
            "/mcp": answer(
                401, '{"error": "invalid_token"}', headers={"WWW-Authenticate": challenge}
            ),
            "/prm": prm,
            "/.well-known/oauth-authorization-server": answer(200, json.dumps(metadata)),
        }
    )


def prm_of(server: RawServer) -> Behaviour:
    return answer(
        200, json.dumps({"resource": server.url + "/mcp", "authorization_servers": [server.url]})
    )


async def test_the_advice_is_kept_not_fetched_on_every_validation(pool) -> None:
    """A connection refused on every validation (each 5 minutes, or each spec edit) tells the
    same advice without asking the resource's and the authorization server's metadata again."""
    async with RawServer(answer(404)) as server:
        server.behaviour = challenging(server, prm_of(server))
        raw = parse_spec({"provider": "mcp", "endpoint": server.url + "/mcp"})
        first, second = await run(pool, raw), await run(pool, raw)
        asked = [head.target for head in server.requests if head.target != "/mcp"]
    for verdict in (first, second):
        assert verdict.reason is Reason.INVALID_API_KEY
        assert "set spec.oauth.clientCredentials" in verdict.message
    assert asked == ["/prm", "/.well-known/oauth-authorization-server"]


async def test_the_advice_waits_no_longer_than_the_validation_may(
    pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resource whose metadata never answers holds the validation (and its worker) no
    longer than its timeout: the advice gets what time the probe left, not a budget more.
    Here the refusal itself takes most of the 3 s: the advice had 3 s more before."""
    monkeypatch.setattr(oauth_client, "ADVICE_BUDGET", 120.0)
    async with RawServer(answer(404)) as server:
        routes = challenging(server, hang())

        async def slowly(head: Any, writer: asyncio.StreamWriter) -> None:
            if head.target == "/mcp":
                await asyncio.sleep(2.5)
            await routes(head, writer)

        server.behaviour = slowly
        raw = parse_spec(
            {"provider": "mcp", "endpoint": server.url + "/mcp", "validation": {"timeout": "3s"}}
        )
        started = time.monotonic()
        verdict = await asyncio.wait_for(run(pool, raw), 30)
        took = time.monotonic() - started
    assert verdict.reason is Reason.INVALID_API_KEY, verdict.message
    assert "Its authorization server" not in verdict.message
    assert took < 4.5  # the 3 s timeout, with room for a loaded machine; 5.5 s before


async def test_an_authorization_server_without_client_credentials_is_said(pool) -> None:
    interactive = AuthorizationServer(grants=["authorization_code"], auth_methods=["none"])
    rs = ResourceServer(interactive)
    with serve(interactive.app()) as authz_url, serve(rs) as url:
        interactive.bind(authz_url)
        rs.bind(url)
        verdict = await run(pool, parse_spec({"provider": "mcp", "endpoint": url + "/mcp"}))

    assert verdict.reason is Reason.INVALID_API_KEY
    assert "grants no client credentials (grant_types_supported: authorization_code)" in (
        verdict.message
    )
    assert "spec.oauth.clientCredentials" not in verdict.message


def test_an_access_token_longer_than_a_credential_is_refused_at_its_byte() -> None:
    """A token service (a tenant's, with spec.oauth) cannot hand the operator a megabyte
    "token" to send as a header and to hold for redaction: over MAX_CREDENTIAL_BYTES the
    answer is unreadable, at the limit it is a token."""
    url = "http://127.0.0.1:9/oauth/token"

    def answer(token: str) -> Reply:
        body = json.dumps({"access_token": token, "token_type": "Bearer"}).encode()
        return Reply(200, httpx2.Headers({"content-type": "application/json"}), body, url)

    at_limit = token_answer(answer("t" * MAX_CREDENTIAL_BYTES), now=0.0)
    assert at_limit.token is not None and len(at_limit.token.token) == MAX_CREDENTIAL_BYTES

    with pytest.raises(UnreadableAnswer) as refused:
        token_answer(answer("t" * (MAX_CREDENTIAL_BYTES + 1)), now=0.0)
    assert refused.value.path == "/oauth/token" and refused.value.status == 200
    assert f"an access token of {MAX_CREDENTIAL_BYTES + 1:,} characters" in refused.value.what
    assert "t" * 64 not in str(refused.value)  # the token itself is not in the error


async def test_a_long_resource_metadata_url_is_read_whole(pool) -> None:
    """One reading of a Bearer challenge (net/oauth.bearer_challenge) for the MCP probe's
    details and for spec.oauth's discovery: a metadata URL of 600 characters is kept whole
    (the probe cut it at 256, and the advice then asked for another URL)."""
    async with RawServer(answer(404)) as server:
        long_path = "/prm/" + "p" * 595
        routes = challenging(server, prm_of(server))
        challenge = f'Bearer resource_metadata="{server.url}{long_path}", scope="mcp:tools"'

        async def behave(head: Any, writer: asyncio.StreamWriter) -> None:
            if head.target == "/mcp":
                headers = {"WWW-Authenticate": challenge}
                return await answer(401, "{}", headers=headers)(head, writer)
            if head.target == long_path:
                return await prm_of(server)(head, writer)
            return await routes(head, writer)

        server.behaviour = behave
        verdict = await run(pool, parse_spec({"provider": "mcp", "endpoint": server.url + "/mcp"}))
        asked = [head.target for head in server.requests]
    assert verdict.details["resourceMetadata"] == server.url + long_path
    assert verdict.details["requiredScope"] == "mcp:tools"
    assert long_path in asked
    assert "set spec.oauth.clientCredentials" in verdict.message


@pytest.mark.parametrize("field", ["tokenURL", "issuer", "resource"])
def test_an_oauth_url_with_a_port_out_of_range_is_refused_when_read(field: str) -> None:
    """As spec.endpoint's: the same reading of an http(s) URL (model/fields.http_url), so a
    port that is no port is a named refusal, not a failure of the token request later."""
    with pytest.raises(ValidationError, match="invalid port"):
        spec("https://mcp.example/mcp", {**CC, field: "https://auth.example:99999/token"})
    with pytest.raises(ValidationError, match="must not have a fragment"):
        spec("https://mcp.example/mcp", {**CC, field: "https://auth.example/token#x"})


async def test_a_kept_advice_is_one_tenants_not_anothers(pool) -> None:
    """The advice is fetched with the tenant's own TLS settings and headers, so what one
    tenant's fetch found is not told to another tenant with the same endpoint."""
    async with RawServer(answer(404)) as server:
        server.behaviour = challenging(server, prm_of(server))
        raw = parse_spec({"provider": "mcp", "endpoint": server.url + "/mcp"})

        async def as_tenant(tenant: str) -> Verdict:
            TENANT.set(tenant)
            return await run(pool, raw)

        for tenant in ("team-a", "team-a", "team-b"):
            verdict = await asyncio.create_task(as_tenant(tenant))
            assert "set spec.oauth.clientCredentials" in verdict.message
        asked = [head.target for head in server.requests if head.target == "/prm"]
    assert asked == ["/prm", "/prm"]  # once for team-a, once for team-b
