"""A loopback Google OAuth 2.0 token endpoint for service-account keys, and test keys for it.

POST {url}/token takes the JWT bearer grant as Google's "Using OAuth 2.0 for Server to
Server Applications" describes it and google-auth sends it (`google/oauth2/_client.py`,
`jwt_grant`): a form with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and
`assertion`, a JWT signed RS256 whose header names the key (`kid`) and whose claims are `iss`
(the account's email), `scope`, `aud`, `iat` and `exp` (at most an hour after `iat`). It
verifies the assertion as the real service must: the signature against the public key of
the key id in the header, `iss` the account that key belongs to, `aud` this very token URL,
the lifetime, and a scope. A good assertion gets `{"access_token", "expires_in": 3599,
"token_type": "Bearer"}`; a refusal is RFC 6749 section 5.2's shape, `{"error",
"error_description"}`, with Google's wording where it is known ("Invalid JWT Signature." for a
key it does not know: a deleted key). Tokens it issues are kept, so the Vertex AI server
(vertex_dialect.py) accepts exactly those.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.recording import DialectState, Seen

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
MAX_LIFETIME = 3600
SKEW = 300  # seconds of clock difference the server forgives

BEHAVIOURS = frozenset(
    {
        "ok",
        "unavailable",  # 503 with an RFC 6749 error body
        "html",  # a portal's page with 200
        "no_token",  # 200 JSON without access_token
    }
)


@dataclass(frozen=True)
class ServiceAccount:
    """A test service account with one RSA key, as Google issues a JSON key for it."""

    email: str
    key_id: str
    private_pem: str
    public_key: RSAPublicKey
    project_id: str = "vertex-test-project"

    def key_file(self, token_uri: str) -> str:
        """The JSON key file (the fields Google's key files have, `type` first)."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": self.key_id,
                "private_key": self.private_pem,
                "client_email": self.email,
                "client_id": "100000000000000000001",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
                "universe_domain": "googleapis.com",
            },
            indent=2,
        )


def make_account(name: str = "prober", project: str = "vertex-test-project") -> ServiceAccount:
    """A new account with a fresh 2048-bit key (what Google generates)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ServiceAccount(
        email=f"{name}@{project}.iam.gserviceaccount.com",
        key_id=secrets.token_hex(20),
        private_pem=pem,
        public_key=private.public_key(),
        project_id=project,
    )


@dataclass(kw_only=True)
class TokenState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    accounts: dict[str, ServiceAccount] = field(default_factory=dict)  # by key id
    issued: dict[str, str] = field(default_factory=dict)  # access token -> account email
    refusals: list[str] = field(default_factory=list)  # error_description of each refusal

    def trust(self, account: ServiceAccount) -> None:
        self.accounts[account.key_id] = account

    def forget(self, account: ServiceAccount) -> None:
        """The key is deleted: assertions signed with it are refused from now on."""
        self.accounts.pop(account.key_id, None)


def _refuse(state: TokenState, error: str, description: str, status: int = 400) -> Response:
    state.refusals.append(description)
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def make_app(behaviour: str = "ok") -> Starlette:
    state = TokenState()
    state.reset(behaviour)

    async def token(request: Request) -> Response:
        form = await request.form()
        state.seen.append(
            Seen(
                request.method,
                request.url.path,
                request.url.query,
                {k.lower(): v for k, v in request.headers.items()},
                {k: str(v) for k, v in form.items()},
            )
        )
        match state.behaviour:
            case "unavailable":
                return _refuse(state, "temporarily_unavailable", "Try again later.", 503)
            case "html":
                return Response("<!DOCTYPE html><html>Sign in</html>", media_type="text/html")
            case "no_token":
                return JSONResponse({"token_type": "Bearer"})
        if form.get("grant_type") != JWT_GRANT:
            return _refuse(state, "unsupported_grant_type", "Invalid grant_type.")
        assertion = str(form.get("assertion") or "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _refuse(state, "invalid_request", "Invalid JWT.")
        account = state.accounts.get(str(header.get("kid")))
        if account is None or header.get("alg") != "RS256":
            return _refuse(state, "invalid_grant", "Invalid JWT Signature.")
        audience = str(request.url.replace(query=""))
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=audience,
                issuer=account.email,
                leeway=SKEW,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            return _refuse(state, "invalid_grant", "Invalid JWT Signature.")
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError, jwt.MissingRequiredClaimError):
            return _refuse(state, "invalid_grant", "Invalid JWT: claims do not match the key.")
        except jwt.PyJWTError:
            return _refuse(
                state,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if claims["exp"] - claims["iat"] > MAX_LIFETIME or claims["iat"] > time.time() + SKEW:
            return _refuse(
                state,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if CLOUD_PLATFORM not in str(claims["scope"]).split():
            return _refuse(state, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        issued = "ya29.loopback-" + secrets.token_urlsafe(48)
        state.issued[issued] = account.email
        return JSONResponse({"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})

    app = Starlette(routes=[Route("/token", token, methods=["POST"])])
    app.state.dialect = state
    return app
