"""spec.oauth on the real control plane: the operator process asks the loopback authorization
server (servers/oauth_world.py, the `mcp` SDK's server-side auth) for a token before each
validation, and probes the MCP server (and a gateway's model list) behind it with that token.

- clientCredentials: Ready=True; the client secret rotated to a wrong one in the Secret is
  InvalidAPIKey naming the Secret, and rotated to the new right one (in the authorization
  server and the Secret) Ready=True again, through the Secret watch (the interval is an hour);
- each failure the verdict must name, through the operator: a discovery step and its URL,
  invalid_client, invalid_scope, a token the resource server refuses though fresh (its error
  and scope challenge), a refused resource indicator;
- serviceAccount: the API server mints the ServiceAccount's token (TokenRequest) for the
  authorization server's issuer, which verifies it against the cluster's issuer and keys;
- privateKeyJWT, so that a private key is in play too;
- no client secret, private key, assertion or access token in any status, Event, metric or
  line of the operator's log at debug level.
"""

from __future__ import annotations

import base64
import contextlib
import secrets as pysecrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opkit import Api, OperatorProcess, condition, leaked, manifest, secret, wait_for

from controlplane.cluster import ControlPlane
from servers.oauth_world import AuthorizationServer, Client, ResourceServer
from servers.oidc import TrustedIssuer
from servers.serve import serve

CLIENT = "llmconn-probe"
FIRST = "cs-first-" + pysecrets.token_hex(12)
WRONG = "cs-wrong-" + pysecrets.token_hex(12)
ROTATED = "cs-rotated-" + pysecrets.token_hex(12)
SECRETS = (FIRST, WRONG, ROTATED)
SCOPES = {"mcp:tools", "models:read"}
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


@dataclass
class World:
    authz: AuthorizationServer
    rs: ResourceServer
    strict: ResourceServer  # wants a scope no client gets

    @property
    def mcp(self) -> str:
        return self.rs.url + "/mcp"


@pytest.fixture(scope="module")
def issuer(cluster: ControlPlane) -> TrustedIssuer:
    """The cluster's issuer as the authorization server reaches it: discovery and keys
    readable without credentials."""
    cluster.public_issuer_discovery()
    trusted = TrustedIssuer(cluster.server, ssl.create_default_context(cafile=str(cluster.ca_file)))
    wait_for("the issuer's keys, anonymously", lambda: trusted.jwks(refresh=True).get("keys"))
    return trusted


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    authz = AuthorizationServer()
    rs = ResourceServer(authz)
    strict = ResourceServer(authz, required_scopes=["mcp:admin"])
    with contextlib.ExitStack() as stack:
        authz.bind(stack.enter_context(serve(authz.app())))
        rs.bind(stack.enter_context(serve(rs)))
        strict.bind(stack.enter_context(serve(strict)))
        authz.provider.clients[CLIENT] = Client(CLIENT, SCOPES, secret=FIRST)
        authz.provider.clients["interactive"] = Client(
            "interactive", SCOPES, secret=FIRST, may_use_client_credentials=False
        )
        public = KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        authz.provider.clients["pk-client"] = Client(
            "pk-client", SCOPES, method="private_key_jwt", public_key=public.decode()
        )
        yield World(authz, rs, strict)


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    name = cluster.create_namespace("oauth")
    yield name
    cluster.kubectl("delete", "llmconnections", "--all", "-n", name, "--wait=false")
    cluster.delete_namespace(name)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oauth-logs")


@pytest.fixture(scope="module")
def operator(cluster: ControlPlane, ns: str, logs: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, logs, "-n", ns, "--default-interval", "1h", name="oauth")
    op.start()
    yield op
    assert op.stop() == 0, op.log()[-3000:]


def apply(cluster: ControlPlane, *docs: str) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))


def client_secret(ns: str, value: str, name: str = "mcp-client") -> str:
    return secret(ns, name, {"clientId": CLIENT, "clientSecret": value})


def oauth_spec(endpoint: str, provider: str = "mcp", **oauth: Any) -> dict[str, Any]:
    form = {"clientCredentials": {"secretName": "mcp-client"}, "scopes": ["mcp:tools"]}
    spec: dict[str, Any] = {"provider": provider, "endpoint": endpoint, "oauth": form | oauth}
    if provider == "openai-compatible":
        spec["model"] = "gpt-gateway"
    return spec


def verdict(api: Api, ns: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        found = api.status(ns, name)
        return found if found.get("reason") == reason else None

    try:
        return wait_for(f"{name}: {reason}", status, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {api.status(ns, name)}") from None


# --- clientCredentials and its rotation ----------------------------------------------------


def test_client_credentials_ready_then_rotated_wrong_then_right(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    apply(cluster, client_secret(ns, FIRST), manifest(ns, "mcp-cc", oauth_spec(world.mcp)))
    status = verdict(api, ns, "mcp-cc", "Validated")
    assert condition(status, "Ready")["status"] == "True"
    assert status["details"]["oauthIssuer"] == world.authz.issuer
    assert status["details"]["oauthScopes"] == "mcp:tools"
    assert [s["name"] for s in status["observedSecrets"]] == ["mcp-client"]
    # The MCP server was called with a token the authorization server issued for it.
    assert f"Bearer {world.authz.provider.issued[-1]}" in world.rs.seen_tokens

    # A wrong secret in the Secret: the Secret watch revalidates (the interval is an hour).
    apply(cluster, client_secret(ns, WRONG))
    status = verdict(api, ns, "mcp-cc", "InvalidAPIKey")
    assert condition(status, "Ready")["status"] == "False"
    assert status["code"] == "invalid_client"
    assert "Secret mcp-client" in status["message"] and "clientSecret" in status["message"]
    assert world.authz.issuer in status["message"]

    # The client's secret rotated at the authorization server, then in the Secret.
    world.authz.provider.clients[CLIENT].secret = ROTATED
    apply(cluster, client_secret(ns, ROTATED))
    status = verdict(api, ns, "mcp-cc", "Validated")
    assert condition(status, "Ready")["status"] == "True"


def test_a_gateway_validates_with_the_same_chain(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    world.authz.provider.clients[CLIENT].secret = ROTATED
    spec = oauth_spec(
        world.rs.url + "/v1",
        provider="openai-compatible",
        clientCredentials={"secretName": "gw-client"},
        scopes=["models:read"],
    )
    apply(cluster, client_secret(ns, ROTATED, "gw-client"), manifest(ns, "gateway", spec))
    status = verdict(api, ns, "gateway", "Validated")
    assert status["details"]["oauthResourceMetadata"].endswith("/oauth-protected-resource/v1")
    assert status["details"]["oauthScopes"] == "models:read"


# --- each failure, named -------------------------------------------------------------------


def _failures(world: World) -> list[tuple[str, dict[str, Any], str, str | None, list[str]]]:
    """(name, spec, reason, code, what the message names) for each failure."""
    nowhere = world.rs.url + "/nowhere"
    elsewhere = "http://127.0.0.1:9/elsewhere"  # a resource the server does not serve
    return [
        (
            "discovery",
            oauth_spec(world.mcp, issuer=nowhere),
            "InvalidConfiguration",
            None,
            [f"{world.rs.url}/.well-known/oauth-authorization-server/nowhere (HTTP 404)"],
        ),
        (
            "client",
            oauth_spec(world.mcp, clientCredentials={"secretName": "wrong-client"}),
            "InvalidAPIKey",
            "invalid_client",
            ["Secret wrong-client", "clientSecret", world.authz.issuer],
        ),
        (
            "unauthorized",
            oauth_spec(world.mcp, clientCredentials={"secretName": "interactive-client"}),
            "InvalidAPIKey",
            "unauthorized_client",
            ["Secret interactive-client", "client interactive"],
        ),
        (
            "scope",
            oauth_spec(world.mcp, scopes=["mcp:tools", "admin:all"]),
            "PermissionDenied",
            "invalid_scope",
            ["mcp:tools admin:all", "scope not allowed: admin:all"],
        ),
        (
            "fresh-token-refused",
            oauth_spec(world.mcp, resource=world.rs.url + "/v1", issuer=world.authz.issuer),
            "InvalidAPIKey",
            "invalid_token",
            ["fresh from " + world.authz.issuer, "HTTP 401 invalid_token"],
        ),
        (
            "scope-challenge",
            oauth_spec(world.strict.url + "/mcp"),
            "PermissionDenied",
            "insufficient_scope",
            ["HTTP 403 insufficient_scope", "It needs scope mcp:admin"],
        ),
        (
            "resource",
            oauth_spec(world.mcp, resource=elsewhere, issuer=world.authz.issuer),
            "InvalidConfiguration",
            "invalid_target",
            [f"refused resource {elsewhere}", "spec.oauth.resource"],
        ),
    ]


FAILURES = [
    "discovery",
    "client",
    "unauthorized",
    "scope",
    "fresh-token-refused",
    "scope-challenge",
    "resource",
]


@pytest.mark.parametrize("case", FAILURES)
def test_each_failure_is_named(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess, case: str
) -> None:
    api = Api(cluster)
    [(name, spec, reason, code, named)] = [f for f in _failures(world) if f[0] == case]
    world.authz.provider.clients[CLIENT].secret = ROTATED
    apply(
        cluster,
        client_secret(ns, ROTATED),
        client_secret(ns, WRONG, "wrong-client"),
        secret(ns, "interactive-client", {"clientId": "interactive", "clientSecret": FIRST}),
        manifest(ns, f"fails-{name}", spec),
    )
    status = verdict(api, ns, f"fails-{name}", reason)
    assert condition(status, "Ready")["status"] == "False"
    assert status.get("code") == code
    for words in named:
        assert words in status["message"], status["message"]


# --- serviceAccount with the API server's tokens, and privateKeyJWT ------------------------


def test_service_account_token_is_the_client_assertion(
    cluster: ControlPlane, world: World, issuer: TrustedIssuer, ns: str, operator: OperatorProcess
) -> None:
    api, subject = Api(cluster), f"system:serviceaccount:{ns}:agent"
    world.authz.provider.clients["sa-client"] = Client(
        "sa-client", SCOPES, method="private_key_jwt", issuer=issuer, subject=subject
    )
    cluster.kubectl("create", "serviceaccount", "agent", "-n", ns)
    cluster.kubectl("create", "serviceaccount", "stranger", "-n", ns)
    form = {"serviceAccount": {"serviceAccountName": "agent", "clientId": "sa-client"}}
    stranger = {"serviceAccount": {"serviceAccountName": "stranger", "clientId": "sa-client"}}
    apply(
        cluster,
        manifest(ns, "sa", {"provider": "mcp", "endpoint": world.mcp, "oauth": form}),
        manifest(ns, "sa-stranger", {"provider": "mcp", "endpoint": world.mcp, "oauth": stranger}),
    )
    status = verdict(api, ns, "sa", "Validated")
    assert status["details"]["oauthIssuer"] == world.authz.issuer
    # The authorization server verified a token the API server minted for this ServiceAccount,
    # for its own issuer as the audience.
    assertions = [
        r["client_assertion"] for r in world.authz.requests if r.get("client_id") == "sa-client"
    ]
    # (sa-stranger asks with the same client id: its assertion may come first.)
    claimed = {
        (claims["iss"], claims["sub"])
        for claims in (issuer.verify(a, {world.authz.issuer}) for a in assertions)
    }
    assert (cluster.server, subject) in claimed

    status = verdict(api, ns, "sa-stranger", "IdentityExchangeFailed")
    assert f"subject system:serviceaccount:{ns}:stranger" in status["message"]
    assert "ServiceAccount stranger" in status["message"]


def test_private_key_jwt_validates(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    form = {"privateKeyJWT": {"clientId": "pk-client", "secretName": "mcp-key"}}
    apply(
        cluster,
        secret(ns, "mcp-key", {"privateKey": PEM}),
        manifest(ns, "pk", {"provider": "mcp", "endpoint": world.mcp, "oauth": form}),
    )
    verdict(api, ns, "pk", "Validated")


def test_without_spec_oauth_the_challenge_says_which_form_would_work(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    apply(cluster, manifest(ns, "no-oauth", {"provider": "mcp", "endpoint": world.mcp}))
    status = verdict(api, ns, "no-oauth", "InvalidAPIKey")
    assert (
        f"Its authorization server {world.authz.issuer} grants client credentials"
        in (status["message"])
    )
    assert "set spec.oauth.clientCredentials" in status["message"]
    assert "spec.oauth.serviceAccount" in status["message"]


# --- nothing leaks -------------------------------------------------------------------------


def test_no_secret_key_assertion_or_token_leaks(
    cluster: ControlPlane, world: World, ns: str, operator: OperatorProcess, logs: Path
) -> None:
    """After this module's connections (good, wrong, rotated, refused; every form), none of
    the client secrets, the private key, the assertions, the HTTP Basic credentials or the
    access tokens is in any status, Event, metric or log line, not even a piece of one."""
    api = Api(cluster)
    verdict(api, ns, "pk", "Validated")  # the module's other tests ran: their material too
    everything = cluster.kubectl("get", "llmconnections,events", "-A", "-o", "json").stdout
    everything += operator.metrics()
    everything += "".join(f.read_text(errors="replace") for f in logs.glob("*.log"))
    assert ns in everything and "invalid_client" in everything  # the scan sees this module
    assertions = [r["client_assertion"] for r in world.authz.requests if "client_assertion" in r]
    basics = [base64.b64encode(f"{CLIENT}:{value}".encode()).decode() for value in SECRETS]
    pem_lines = [line for line in PEM.splitlines() if not line.startswith("-----")]
    signatures = [jwt.rsplit(".", 1)[1] for jwt in assertions]  # a JWT's secret part
    assert assertions and world.authz.provider.issued
    material = [*SECRETS, *basics, *world.authz.provider.issued, *pem_lines, *signatures]
    assert leaked(material, everything) == []
