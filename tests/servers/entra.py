"""A loopback Entra ID token endpoint: client credentials with a federated client assertion.

Serves POST /{tenant}/oauth2/v2.0/token with a form body: `client_id`, `scope`,
`grant_type=client_credentials`, `client_assertion_type=urn:ietf:params:oauth:client-
assertion-type:jwt-bearer` and `client_assertion` (here, a Kubernetes ServiceAccount token).
Success is `{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}`, the
access token a JWT signed by this endpoint's own key for the scope's resource. Errors are
`{"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id",
"error_uri"}`, the description starting with the AADSTS code and ending with Entra's trace
block.

The directory it plays has tenants (by ID and by domain name) and applications (or
user-assigned managed identities) with federated identity credentials: an issuer, a subject
and an audience (`api://AzureADTokenExchange`). An assertion is checked as Entra does: a
credential for its `iss` (else AADSTS700211), its RS256 signature against the issuer's JWKS,
found through the issuer's discovery document (AADSTS50013), its validity window
(AADSTS700024), then the subject (AADSTS700213) and the audience (AADSTS700212).

Sources: Microsoft identity platform documentation, "OAuth 2.0 client credentials flow"
(the request with a federated credential's assertion, the success and error responses) and
"Workload identity federation" (what a federated identity credential matches: issuer,
subject, audience), and the AADSTS error code reference for the codes and their wording.
Entra answers invalid_client with 401 and the other errors with 400 (RFC 6749 section 5.2
allows either for invalid_client; users report 401).

A directory is one cloud's: `audience` is the Cognitive Services resource its tokens are for,
and a scope for another cloud's resource is refused (invalid_scope). The national clouds have
their own authorities and resources (azure-identity `AzureAuthorityHosts`:
login.microsoftonline.us, login.chinacloudapi.cn; Microsoft Learn, "Azure OpenAI in Azure
Government": https://cognitiveservices.azure.us); which wording a national Entra uses for the
refusal is not confirmed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.oidc import Issuer, TokenInvalid, TrustedIssuer, parts, verify_rs256
from servers.recording import DialectState, Seen

EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"
COGNITIVE_SERVICES_US_GOV = "https://cognitiveservices.azure.us"  # Azure Government
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

BEHAVIOURS = frozenset({"ok", "throttled", "unavailable", "html"})


@dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    audience: str = EXCHANGE_AUDIENCE


@dataclass
class EntraState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    tenants: dict[str, str] = field(default_factory=dict)  # ID or domain -> tenant ID
    # (tenant ID, client ID) -> the application's federated identity credentials
    apps: dict[tuple[str, str], list[FederatedCredential]] = field(default_factory=dict)
    # The CA the issuers' documents are fetched with (a loopback API server's).
    trust_store: ssl.SSLContext | None = None
    signer: Issuer = field(default_factory=lambda: Issuer(kid="entra-loopback-1"))
    issued: list[str] = field(default_factory=list)  # access tokens, for leak checks
    audience: str = COGNITIVE_SERVICES  # the cloud's Cognitive Services resource (module doc)
    _issuers: dict[str, TrustedIssuer] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_tenant(self, tenant_id: str, *domains: str) -> None:
        for name in (tenant_id, *domains):
            self.tenants[name.lower()] = tenant_id

    def add_app(self, tenant_id: str, client_id: str, *credentials: FederatedCredential) -> None:
        self.apps[(tenant_id, client_id.lower())] = list(credentials)

    def issuer(self, url: str) -> TrustedIssuer:
        if url not in self._issuers:
            self._issuers[url] = TrustedIssuer(url, self.trust_store)
        return self._issuers[url]

    def access_token_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token this endpoint issued and that is still valid; the
        resource server's check (signature, expiry)."""
        try:
            _, claims = verify_rs256(token, self.signer.jwks())
        except TokenInvalid:
            return None
        return claims if claims.get("exp", 0) > time.time() else None


def make_app(state: EntraState | None = None) -> Starlette:
    state = state or EntraState()

    def error(status: int, error: str, code: int, description: str) -> Response:
        now = dt.datetime.now(dt.UTC)
        trace, correlation = uuid.uuid4(), uuid.uuid4()
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        return JSONResponse(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                f"Correlation ID: {correlation} Timestamp: {stamp}",
                "error_codes": [code],
                "timestamp": stamp,
                "trace_id": str(trace),
                "correlation_id": str(correlation),
                "error_uri": f"https://login.microsoftonline.com/error?code={code}",
            },
            status_code=status,
        )

    def token(tenant_id: str, form: dict[str, str]) -> Response:
        if form.get("grant_type") != "client_credentials":
            return error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        client_id = form.get("client_id", "").lower()
        credentials = state.apps.get((tenant_id, client_id))
        if credentials is None:
            return error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant_id}'. This can happen if the application has not been installed by "
                "the administrator of the tenant or consented to by any user in the tenant.",
            )
        scope = form.get("scope", "")
        if scope != f"{state.audience}/.default":
            return error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier.",
            )
        assertion = form.get("client_assertion", "")
        if form.get("client_assertion_type") != JWT_BEARER or not assertion:
            return error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        try:
            _, unverified, _, _ = parts(assertion)
        except TokenInvalid:
            return error(401, "invalid_client", 50013, "Assertion is malformed.")
        iss = str(unverified.get("iss"))
        matching = [c for c in credentials if c.issuer == iss]
        if not matching:
            return error(
                401,
                "invalid_client",
                700211,
                f"No matching federated identity record found for presented assertion issuer "
                f"'{iss}'. Please check your federated identity credential Subject, Audience "
                "and Issuer against the presented assertion.",
            )
        try:
            claims = state.issuer(iss).verify(assertion, {c.audience for c in matching})
        except TokenInvalid as exc:
            if exc.what == "expired":
                return error(
                    401,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                )
            if exc.what == "audience":
                aud = unverified.get("aud")
                return error(
                    401,
                    "invalid_client",
                    700212,
                    f"No matching federated identity record found for presented assertion "
                    f"audience '{aud[0] if isinstance(aud, list) and aud else aud}'. Please "
                    "check your federated identity credential Subject, Audience and Issuer "
                    "against the presented assertion.",
                )
            return error(401, "invalid_client", 50013, "Assertion failed signature validation.")
        if not any(c.subject == claims.get("sub") for c in matching):
            return error(
                401,
                "invalid_client",
                700213,
                f"No matching federated identity record found for presented assertion subject "
                f"'{claims.get('sub')}'. Please check your federated identity credential "
                "Subject, Audience and Issuer against the presented assertion.",
            )
        now = int(time.time())
        access = state.signer.sign(
            {
                "aud": state.audience,
                "iss": f"https://sts.windows.net/{tenant_id}/",
                "iat": now,
                "nbf": now,
                "exp": now + 3599,
                "appid": client_id,
                "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
                "tid": tenant_id,
                "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
                "uti": secrets.token_urlsafe(16),
            }
        )
        state.issued.append(access)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": access,
            }
        )

    async def handle(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        state.seen.append(Seen(request.method, request.url.path, request.url.query, headers, form))
        match state.behaviour:
            case "throttled":
                return JSONResponse(
                    {
                        "error": "temporarily_unavailable",
                        "error_description": "AADSTS50196: "
                        "The server terminated an operation because it encountered a client "
                        "request loop.",
                    },
                    status_code=429,
                    headers={"Retry-After": "7"},
                )
            case "unavailable":
                return error(
                    503,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                )
            case "html":
                return Response("<html><body>Sign in</body></html>", media_type="text/html")
        tenant = state.tenants.get(request.path_params["tenant"].lower())
        if tenant is None:
            return error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{request.path_params['tenant']}' not found. Check to make sure you "
                "have the correct tenant ID and are signing into the correct cloud.",
            )
        # The issuer's keys are fetched over the network: off the event loop.
        return await anyio.to_thread.run_sync(token, tenant, form)

    app = Starlette(routes=[Route("/{tenant}/oauth2/v2.0/token", handle, methods=["POST"])])
    app.state.dialect = state
    return app
