"""An MCP server and an OpenAI-compatible gateway behind OAuth 2.1, on loopback, from the `mcp`
SDK's own server-side auth.

Two apps, served apart (two origins, as a company's authorization server and its MCP server):

- `AuthorizationServer`: the SDK's `MetadataHandler` serves its RFC 8414 metadata (built by
  the SDK's `build_metadata`, with the client credentials grant, `private_key_jwt` and the
  assertion algorithms added), and its `ClientAuthenticator` checks client secrets
  (`client_secret_basic` and `client_secret_post`) at the token endpoint. The SDK's token
  handler implements only authorization_code, refresh_token and the ID-JAG jwt-bearer grant,
  so the client credentials grant (RFC 6749 section 4.4) is written here around those parts:
  client assertions (RFC 7523 section 2.2) are verified with PyJWT against the client's
  registered public key, or, for a client that federates with a Kubernetes issuer, against
  that issuer's JWKS (`servers.oidc`), as Entra's federated credentials are; `scope` must be
  within the client's allowed scopes (invalid_scope) and `resource` one the server serves
  (RFC 8707: invalid_target). Tokens go into the provider's table, where the resource server's
  verifier finds them.
- `ResourceServer`: the SDK's `create_protected_resource_routes` serves the RFC 9728
  metadata; the SDK's `BearerAuthBackend` (with `resource_server_url`: a token for another
  resource is refused) and `RequireAuthMiddleware` (401 with `resource_metadata`, 403
  `insufficient_scope`) guard the real MCP server (`servers.mcp_server`) at /mcp and a
  gateway-shaped OpenAI-compatible model list at /v1/models; the verifier is the SDK's
  `ProviderTokenVerifier` on the authorization server's provider.

`bind()` each app to its base URL once served: the metadata names the URLs.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import AccessToken, ProviderTokenVerifier
from mcp.server.auth.routes import build_metadata, create_protected_resource_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.mcp_server import TestMCPApp, make_app
from servers.oidc import TokenInvalid, TrustedIssuer

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 600


@dataclass
class Client:
    """A registered client: a secret, a public key (PEM) or a trusted Kubernetes issuer."""

    client_id: str
    scopes: set[str]
    secret: str | None = None
    method: str = "client_secret_basic"  # or client_secret_post, private_key_jwt
    public_key: str | None = None  # for private_key_jwt with a key
    issuer: TrustedIssuer | None = None  # for private_key_jwt with a ServiceAccount token
    subject: str | None = None  # the ServiceAccount token's sub it must carry
    may_use_client_credentials: bool = True  # else unauthorized_client (RFC 6749 5.2)


@dataclass
class Provider:
    """The SDK's `OAuthAuthorizationServerProvider`, as far as client credentials need it."""

    clients: dict[str, Client] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token, for leak checks

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        client = self.clients.get(client_id)
        if client is None or client.method == "private_key_jwt":
            return None
        return OAuthClientInformationFull(
            client_id=client.client_id,
            client_secret=client.secret,
            token_endpoint_auth_method=client.method,  # type: ignore[arg-type]
            grant_types=["client_credentials"],
            redirect_uris=None,
        )

    async def load_access_token(self, token: str) -> AccessToken | None:
        return self.tokens.get(token)


@dataclass
class AuthorizationServer:
    provider: Provider = field(default_factory=Provider)
    resources: set[str] = field(default_factory=set)  # RFC 8707: what it issues tokens for
    auth_methods: list[str] = field(
        default_factory=lambda: ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    )
    grants: list[str] = field(default_factory=lambda: ["client_credentials"])
    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)  # token request forms

    def bind(self, url: str) -> None:
        self.url = url

    @property
    def issuer(self) -> str:
        return self.url + "/"  # pydantic renders a root issuer with its slash

    def app(self) -> Starlette:
        async def metadata(request: Request) -> Response:
            built = build_metadata(
                AnyHttpUrl(self.url),
                None,
                ClientRegistrationOptions(enabled=False),
                RevocationOptions(enabled=False),
            )
            built.grant_types_supported = list(self.grants)
            built.token_endpoint_auth_methods_supported = list(self.auth_methods)
            built.token_endpoint_auth_signing_alg_values_supported = ["RS256", "ES256"]
            return await MetadataHandler(built).handle(request)

        return Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
                Route("/token", self._token, methods=["POST"]),
            ]
        )

    async def _token(self, request: Request) -> Response:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        self.requests.append(form)
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "client_credentials only")
        try:
            client = await self._authenticate(request, form)
        except AuthenticationError as exc:
            return _error(401, "invalid_client", exc.message)
        if not client.may_use_client_credentials:
            return _error(400, "unauthorized_client", "client credentials grant not allowed")
        asked = set(form.get("scope", "").split())
        if not asked <= client.scopes:
            refused = " ".join(sorted(asked - client.scopes))
            return _error(400, "invalid_scope", f"scope not allowed: {refused}")
        resource = form.get("resource")
        if resource is not None and resource.rstrip("/") not in self.resources:
            return _error(400, "invalid_target", "unknown resource")
        token = "at-" + secrets.token_urlsafe(24)
        self.provider.tokens[token] = AccessToken(
            token=token,
            client_id=client.client_id,
            scopes=sorted(asked),
            expires_at=int(time.time()) + TOKEN_LIFETIME,
            resource=resource,
        )
        self.provider.issued.append(token)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": " ".join(sorted(asked)),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def _authenticate(self, request: Request, form: dict[str, str]) -> Client:
        if "client_assertion" in form:
            return self._assertion(form)
        info = await ClientAuthenticator(self.provider).authenticate_request(request)  # type: ignore[arg-type]
        return self.provider.clients[info.client_id]

    def _assertion(self, form: dict[str, str]) -> Client:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthenticationError("unknown client_assertion_type")
        assertion = form["client_assertion"]
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("the client assertion is not a JWT") from None
        client_id = form.get("client_id") or unverified.get("sub")
        client = self.provider.clients.get(str(client_id))
        if client is None or client.method != "private_key_jwt":
            raise AuthenticationError("unknown client")
        if client.issuer is not None:
            try:
                claims = client.issuer.verify(assertion, {self.issuer, self.url})
            except TokenInvalid as exc:
                raise AuthenticationError(f"assertion refused: {exc.what}") from None
            if claims.get("sub") != client.subject:
                raise AuthenticationError("assertion subject is not the client's")
            return client
        assert client.public_key is not None
        try:
            jwt.decode(
                assertion,
                client.public_key,
                algorithms=["RS256", "ES256", "PS256"],
                audience=[self.issuer, self.url],
                issuer=client.client_id,
                options={"require": ["exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"assertion refused: {exc}") from None
        return client


def _error(status: int, error: str, description: str) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


class ResourceServer:
    """The MCP server (/mcp) and a gateway's model list (/v1/models) behind the SDK's bearer
    middleware; `required_scopes` for each."""

    def __init__(
        self, authorization: AuthorizationServer, required_scopes: list[str] | None = None
    ) -> None:
        self.authorization = authorization
        self.required_scopes = required_scopes or []
        self.mcp: TestMCPApp = make_app()
        self.url = ""
        self.publish_metadata = True
        # The metadata elsewhere than at the well-known URLs (found through the challenge's
        # resource_metadata, RFC 9728 section 5), or the well-known URLs redirecting to
        # another origin.
        self.metadata_at: str | None = None
        self.redirect_metadata_to: str | None = None
        self.seen_tokens: list[str] = []
        self._guarded: Any = None
        self._metadata: Any = None

    def bind(self, url: str) -> None:
        """Build the guarded apps for this base URL (the metadata names it)."""
        self.url = url
        self.authorization.resources |= {url + "/mcp", url + "/v1"}
        verifier = ProviderTokenVerifier(self.authorization.provider)  # type: ignore[arg-type]

        def guarded(app: Any, resource: str) -> Any:
            at = self.metadata_at or "/.well-known/oauth-protected-resource"
            metadata_url = AnyHttpUrl(f"{url}{at}{resource.removeprefix(url)}")
            required = _ScopeChallenge(
                RequireAuthMiddleware(app, self.required_scopes, metadata_url),
                self.required_scopes,
            )
            backend = BearerAuthBackend(verifier, resource_server_url=AnyHttpUrl(resource))
            return AuthenticationMiddleware(required, backend=backend)

        self._guarded = {
            "/mcp": guarded(self.mcp, url + "/mcp"),
            "/v1": guarded(_models, url + "/v1"),
        }
        routes = []
        for path in ("/mcp", "/v1"):
            routes += create_protected_resource_routes(
                AnyHttpUrl(url + path), [AnyHttpUrl(self.authorization.url)], ["mcp:tools"]
            )
        self._metadata = Starlette(routes=routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.mcp(scope, receive, send)
            return
        path: str = scope["path"]
        if self.metadata_at and path.startswith(self.metadata_at + "/"):
            rest = path.removeprefix(self.metadata_at)
            scope = {**scope, "path": "/.well-known/oauth-protected-resource" + rest}
            await self._metadata(scope, receive, send)
            return
        if path.startswith("/.well-known/") and self.redirect_metadata_to:
            moved = Response(
                status_code=302, headers={"location": self.redirect_metadata_to + path}
            )
            await moved(scope, receive, send)
            return
        if path.startswith("/.well-known/"):
            if not self.publish_metadata or self.metadata_at:
                await JSONResponse({"error": "not found"}, status_code=404)(scope, receive, send)
                return
            await self._metadata(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"authorization" in headers:
            self.seen_tokens.append(headers[b"authorization"].decode("latin-1"))
        prefix = "/v1" if path.startswith("/v1") else "/mcp"
        await self._guarded[prefix](scope, receive, send)


class _ScopeChallenge:
    """The scope the resource needs in its Bearer challenges (RFC 6750 section 3), which the
    SDK's middleware leaves out."""

    def __init__(self, app: Any, scopes: list[str]) -> None:
        self.app, self.scopes = app, scopes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.scopes:
            await self.app(scope, receive, send)
            return
        wanted = f', scope="{" ".join(self.scopes)}"'.encode()

        async def send_with_scope(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                message = {
                    **message,
                    "headers": [
                        (k, v + wanted if k.lower() == b"www-authenticate" else v)
                        for k, v in message["headers"]
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_with_scope)


async def _models(scope: Any, receive: Any, send: Any) -> None:
    """A gateway's OpenAI-compatible model list."""
    if scope["path"] != "/v1/models":
        await JSONResponse({"error": {"message": "not found"}}, status_code=404)(
            scope, receive, send
        )
        return
    body = {
        "object": "list",
        "data": [{"id": "gpt-gateway", "object": "model", "created": 0, "owned_by": "gateway"}],
    }
    await JSONResponse(body)(scope, receive, send)
