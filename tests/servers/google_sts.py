"""A loopback Google STS and IAM Credentials: workload identity federation for a cluster.

Serves POST /v1/token, the OAuth 2.0 token exchange (RFC 8693) as Google's Security Token
Service takes it: a form body with `grant_type=urn:ietf:params:oauth:grant-type:token-
exchange`, `audience` (the workload identity pool provider's full resource name),
`scope`, `requested_token_type=urn:ietf:params:oauth:token-type:access_token`,
`subject_token` and `subject_token_type=urn:ietf:params:oauth:token-type:jwt`. Success is
`{"access_token", "issued_token_type", "token_type": "Bearer", "expires_in"}`; errors are
`{"error", "error_description"}` (google-auth's `google/oauth2/utils.py` reads those two).

The pool's providers each trust one issuer: the subject token's RS256 signature is checked
against the issuer's JWKS (through its discovery document), its `aud` against the provider's
allowed audiences (none configured: the provider's full name, with or without `https:`), and
its `sub` against the attribute condition (here: a set of subjects, or any).

Also serves POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken, IAM
Credentials' impersonation, with the federated token as `Authorization: Bearer` and a JSON
body `{"scope": [...], "lifetime": "600s"}`. Success is `{"accessToken", "expireTime"}`; a
principal without roles/iam.workloadIdentityUser on the account is 403 PERMISSION_DENIED in
Google's error shape `{"error": {"code", "message", "status"}}`.

Sources: google-auth's `google/oauth2/sts.py`, `google/auth/external_account.py` and
`google/auth/impersonated_credentials.py` (requests and the fields read from answers); the
IAM API reference for WorkloadIdentityPoolProvider.oidc.allowedAudiences (the default
audiences) and for projects.serviceAccounts.generateAccessToken; the STS API reference for
the token method. The wording of the error descriptions is as users report them, not
confirmed from a primary source.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.oidc import TokenInvalid, TrustedIssuer, parts
from servers.recording import DialectState, Seen

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"

BEHAVIOURS = frozenset({"ok", "unavailable"})


@dataclass(frozen=True)
class PoolProvider:
    """An OIDC provider of a workload identity pool: its full resource name (the STS
    audience), the issuer it trusts, and which subjects its attribute condition lets in."""

    name: str
    issuer: TrustedIssuer
    allowed_audiences: frozenset[str] = frozenset()  # empty: the name, with or without https:
    subjects: frozenset[str] | None = None  # None: no attribute condition

    @property
    def audiences(self) -> set[str]:
        return set(self.allowed_audiences) or {self.name, "https:" + self.name}

    def principal(self, subject: str) -> str:
        pool = self.name.removeprefix("//").split("/providers/")[0]
        return f"principal://{pool}/subject/{subject}"


@dataclass
class GoogleState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    providers: dict[str, PoolProvider] = field(default_factory=dict)
    federated: dict[str, str] = field(default_factory=dict)  # STS access token -> principal
    # service account email -> principals with roles/iam.workloadIdentityUser on it
    impersonators: dict[str, set[str]] = field(default_factory=dict)
    issued: dict[str, str] = field(default_factory=dict)  # IAM access token -> email

    def add_provider(self, provider: PoolProvider) -> None:
        self.providers[provider.name] = provider


def make_app(state: GoogleState | None = None) -> Starlette:
    state = state or GoogleState()

    def oauth_error(error: str, description: str, status: int = 400) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status_code=status)

    def google_error(status: int, name: str, message: str) -> Response:
        return JSONResponse(
            {"error": {"code": status, "message": message, "status": name}}, status_code=status
        )

    def exchange(form: dict[str, str]) -> Response:
        if form.get("grant_type") != GRANT:
            return oauth_error("unsupported_grant_type", "The grant_type is not supported.")
        if (
            form.get("requested_token_type") != ACCESS_TOKEN
            or form.get("subject_token_type") != JWT
        ):
            return oauth_error("invalid_request", 'Invalid value for "subject_token_type".')
        provider = state.providers.get(form.get("audience", ""))
        if provider is None:
            return oauth_error(
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid. This '
                "might either be because the pool or provider is disabled or deleted or "
                "because it doesn't exist.",
            )
        token = form.get("subject_token", "")
        try:
            _, unverified, _, _ = parts(token)
            if unverified.get("iss") != provider.issuer.url:
                return oauth_error(
                    "invalid_grant",
                    f"The issuer in ID Token {unverified.get('iss')} does not "
                    "match the expected ones.",
                )
            claims = provider.issuer.verify(token, provider.audiences)
        except TokenInvalid as exc:
            if exc.what == "audience":
                return oauth_error(
                    "invalid_grant",
                    f"The audience in ID Token [{unverified.get('aud')}] does not match the "
                    "expected audience.",
                )
            return oauth_error("invalid_grant", f"ID Token could not be verified ({exc.what}).")
        subject = str(claims.get("sub"))
        if provider.subjects is not None and subject not in provider.subjects:
            return oauth_error(
                "unauthorized_client",
                "The given credential is rejected by the attribute condition.",
            )
        access = "ya29.d.sts" + secrets.token_urlsafe(48)
        state.federated[access] = provider.principal(subject)
        return JSONResponse(
            {
                "access_token": access,
                "issued_token_type": ACCESS_TOKEN,
                "token_type": "Bearer",
                "expires_in": 3599,
            }
        )

    async def token(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        state.seen.append(Seen(request.method, request.url.path, request.url.query, headers, form))
        if state.behaviour == "unavailable":
            return oauth_error("server_error", "The service is currently unavailable.", 503)
        # The issuer's keys are fetched over the network: off the event loop.
        return await anyio.to_thread.run_sync(exchange, form)

    async def generate(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        state.seen.append(Seen(request.method, request.url.path, request.url.query, headers, body))
        target = unquote(request.path_params["target"])
        if not target.endswith(":generateAccessToken"):
            return google_error(404, "NOT_FOUND", "Method not found.")
        email = target.removesuffix(":generateAccessToken")
        bearer = headers.get("authorization", "")
        principal = state.federated.get(bearer.removeprefix("Bearer "))
        if principal is None:
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if not isinstance(body, dict) or not body.get("scope"):
            return google_error(400, "INVALID_ARGUMENT", "Scope required.")
        if principal not in state.impersonators.get(email, set()):
            return google_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it "
                "may not exist).",
            )
        access = "ya29.c.iam" + secrets.token_urlsafe(48)
        state.issued[access] = email
        lifetime = int(str(body.get("lifetime") or "3600s").removesuffix("s"))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
        return JSONResponse(
            {"accessToken": access, "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        )

    app = Starlette(
        routes=[
            Route("/v1/token", token, methods=["POST"]),
            Route("/v1/projects/-/serviceAccounts/{target:path}", generate, methods=["POST"]),
        ]
    )
    app.state.dialect = state
    return app
