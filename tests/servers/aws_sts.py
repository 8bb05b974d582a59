"""A loopback AWS STS: AssumeRoleWithWebIdentity, verifying the web identity token as STS does.

Serves POST / with the Query API's form body (Action=AssumeRoleWithWebIdentity,
Version=2011-06-15, RoleArn, RoleSessionName, WebIdentityToken, DurationSeconds) and answers
in STS's XML: `AssumeRoleWithWebIdentityResponse` with `Credentials` (AccessKeyId,
SecretAccessKey, SessionToken, Expiration), `SubjectFromWebIdentityToken`, `Audience`,
`AssumedRoleUser`, `Provider` and `ResponseMetadata/RequestId`; or `ErrorResponse` with
`Error/Type`, `Code`, `Message` and `RequestId`.

The account it plays has IAM OIDC providers (`issuers`: a cluster's issuer URL, with the
audiences registered as its client IDs) and roles whose trust policy names one provider as
the Federated principal, with StringEquals conditions on `<provider>:sub` and `:aud`. The
token is checked in that order: a provider for its `iss` (else 400 InvalidIdentityToken "No
OpenIDConnect provider found in your account for ..."), the RS256 signature against the
issuer's JWKS, fetched through its discovery document (400 InvalidIdentityToken), the
audience (400 InvalidIdentityToken "Incorrect token audience"), expiry (400
ExpiredTokenException), then the role's trust (403 AccessDenied "Not authorized to perform
sts:AssumeRoleWithWebIdentity").

Sources: the STS API reference for AssumeRoleWithWebIdentity (request parameters, response
elements, errors), botocore's `sts/2011-06-15/service-2.json` (error codes and statuses:
InvalidIdentityToken 400, ExpiredTokenException 400, IDPCommunicationError 400,
IDPRejectedClaim 403) and the IAM user guide's OIDC federation and trust policy pages. The
AccessDenied answer and the wording of the InvalidIdentityToken messages are as users report
them from EKS (IRSA troubleshooting), not confirmed from a primary source.
"""

from __future__ import annotations

import itertools
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servers.oidc import TokenInvalid, TrustedIssuer, parts
from servers.recording import DialectState, Seen

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
AUDIENCE = "sts.amazonaws.com"

BEHAVIOURS = frozenset(
    {
        "ok",
        "throttled",  # 400 Throttling, "Rate exceeded"
        "unavailable",  # 503 ServiceUnavailable
        "idp_unreachable",  # 400 IDPCommunicationError: STS could not reach the issuer
        "html",  # a proxy's page
    }
)


@dataclass(frozen=True)
class Role:
    """An IAM role whose trust policy allows sts:AssumeRoleWithWebIdentity to the Federated
    principal `issuer` (an IAM OIDC provider) when `sub` is one of `subjects`."""

    arn: str
    issuer: str
    subjects: frozenset[str]
    audience: str = AUDIENCE


@dataclass(frozen=True)
class Issued:
    role: str
    subject: str
    secret_access_key: str
    session_token: str
    expires: float


@dataclass
class StsState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    # The account's IAM OIDC providers: issuer URL -> its keys, and the client IDs
    # (audiences) registered on it.
    issuers: dict[str, TrustedIssuer] = field(default_factory=dict)
    client_ids: dict[str, set[str]] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    issued: dict[str, Issued] = field(default_factory=dict)  # AccessKeyId -> the session
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def trust(self, issuer: TrustedIssuer, audiences: set[str] | None = None) -> None:
        self.issuers[issuer.url] = issuer
        self.client_ids[issuer.url] = set(audiences or {AUDIENCE})

    def add_role(self, arn: str, issuer: str, *subjects: str) -> None:
        self.roles[arn] = Role(arn, issuer, frozenset(subjects))


def make_app(state: StsState | None = None) -> Starlette:
    state = state or StsState()

    def error(status: int, code: str, message: str, kind: str = "Sender") -> Response:
        body = (
            f'<ErrorResponse xmlns="{NS}">'
            f"<Error><Type>{kind}</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        return Response(body, status_code=status, media_type="text/xml")

    def assume(form: dict[str, str]) -> Response:
        for name in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not form.get(name):
                return error(
                    400,
                    "ValidationError",
                    f"1 validation error detected: Value null at '{name[0].lower() + name[1:]}'"
                    " failed to satisfy constraint: Member must not be null",
                )
        duration = int(form.get("DurationSeconds") or 3600)
        if not 900 <= duration <= 43200:
            return error(400, "ValidationError", "DurationSeconds must be in [900, 43200]")
        token = form["WebIdentityToken"]
        try:
            _, unverified, _, _ = parts(token)
            issuer = state.issuers.get(str(unverified.get("iss")))
            if issuer is None:
                return error(
                    400,
                    "InvalidIdentityToken",
                    f"No OpenIDConnect provider found in your account for {unverified.get('iss')}",
                )
            claims = issuer.verify(token, state.client_ids[issuer.url])
        except TokenInvalid as exc:
            if exc.what == "audience":
                return error(400, "InvalidIdentityToken", "Incorrect token audience")
            if exc.what == "expired":
                return error(
                    400,
                    "ExpiredTokenException",
                    "Token expired: current date/time must be before the expiration date/time",
                )
            return error(
                400,
                "InvalidIdentityToken",
                "The web identity token that was passed could not be validated by AWS. "
                f"({exc.what})",
            )
        role = state.roles.get(form["RoleArn"])
        aud = claims.get("aud")
        audiences = set(aud) if isinstance(aud, list) else {aud}
        if (
            role is None
            or role.issuer != issuer.url
            or claims.get("sub") not in role.subjects
            or role.audience not in audiences
        ):
            return error(
                403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"
            )
        key_id = f"ASIA{secrets.token_hex(8).upper()}"
        issued = Issued(
            role=role.arn,
            subject=str(claims["sub"]),
            secret_access_key=secrets.token_urlsafe(30),
            session_token="IQoJb3JpZ2luX2Vj" + secrets.token_urlsafe(96),
            expires=time.time() + duration,
        )
        state.issued[key_id] = issued
        account = role.arn.split(":")[4]
        role_name = role.arn.rsplit("/", 1)[1]
        session = form["RoleSessionName"]
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires))
        body = (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{NS}">'
            "<AssumeRoleWithWebIdentityResult>"
            f"<SubjectFromWebIdentityToken>{escape(issued.subject)}</SubjectFromWebIdentityToken>"
            f"<Audience>{escape(role.audience)}</Audience>"
            "<AssumedRoleUser>"
            f"<Arn>arn:aws:sts::{account}:assumed-role/{escape(role_name)}/{escape(session)}</Arn>"
            f"<AssumedRoleId>AROA{next(state._ids):016d}:{escape(session)}</AssumedRoleId>"
            "</AssumedRoleUser>"
            "<Credentials>"
            f"<SessionToken>{issued.session_token}</SessionToken>"
            f"<SecretAccessKey>{issued.secret_access_key}</SecretAccessKey>"
            f"<Expiration>{expiration}</Expiration>"
            f"<AccessKeyId>{key_id}</AccessKeyId>"
            "</Credentials>"
            f"<Provider>{escape(issuer.url)}</Provider>"
            "</AssumeRoleWithWebIdentityResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        )
        return Response(body, media_type="text/xml")

    async def handle(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        state.seen.append(Seen(request.method, request.url.path, request.url.query, headers, form))
        match state.behaviour:
            case "throttled":
                return error(400, "Throttling", "Rate exceeded")
            case "unavailable":
                return error(503, "ServiceUnavailable", "Service unavailable", "Receiver")
            case "idp_unreachable":
                return error(
                    400,
                    "IDPCommunicationError",
                    "Couldn't retrieve verification key from your identity provider",
                )
            case "html":
                return Response("<html><body>Proxy error</body></html>", media_type="text/html")
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
            return error(400, "InvalidAction", f"Could not find operation {form.get('Action')}")
        # The issuer's keys are fetched over the network: off the event loop.
        return await anyio.to_thread.run_sync(assume, form)

    app = Starlette(routes=[Route("/", handle, methods=["POST"])])
    app.state.dialect = state
    return app


class SessionKeys(Mapping[str, tuple[str, str | None]]):
    """The sessions this STS issued, as an AWS service knows them: access key id -> (secret
    access key, session token), until they expire. Given to a loopback service as the keys it
    accepts (bedrock_dialect.BedrockState.access_keys), it verifies a signature made with
    what STS issued, and only with its session token, as AWS does for temporary credentials."""

    def __init__(self, state: StsState) -> None:
        self._state = state

    def __getitem__(self, access_key_id: str) -> tuple[str, str | None]:
        issued = self._state.issued[access_key_id]
        if issued.expires <= time.time():
            raise KeyError(access_key_id)
        return issued.secret_access_key, issued.session_token

    def __iter__(self) -> Iterator[str]:
        return iter([k for k in list(self._state.issued) if k in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)
