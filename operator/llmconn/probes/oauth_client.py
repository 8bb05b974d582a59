"""spec.oauth: an access token from the server's authorization server, then the probe with it.

The chain, each step through the probe's own transport (`ctx.transport.fetch`: the egress
policy, same-origin redirects only, the 1 MiB body cap, phase tracing), each step's URL in
`ctx.found.elsewhere` while it runs so that a network failure names that host:

1. Protected Resource Metadata (RFC 9728), unless spec.oauth names the `issuer` or the
   `tokenURL`: the well-known URLs of the endpoint (path-aware first, then the root; the
   `mcp` SDK's own `build_protected_resource_metadata_discovery_urls`), else the
   `resource_metadata` of the Bearer challenge an unauthenticated GET of the endpoint meets
   (RFC 9728 section 5). A redirect off a URL's origin is refused. Its `resource` must
   be the endpoint or a parent of it (RFC 9728 section 3.3, as the SDK checks), and it names
   the authorization server.
2. The authorization server's metadata (RFC 8414, or OpenID discovery; the SDK's
   `build_oauth_authorization_server_metadata_discovery_urls`), whose `issuer` must be the one
   asked for (RFC 8414 section 3.3): its token endpoint, grant types and client
   authentication methods. With `tokenURL` there is no discovery.
3. The token request: the client credentials grant (RFC 6749 section 4.4) with
   `scope` = spec.oauth.scopes exactly as given, and `resource` (RFC 8707) = spec.oauth.resource,
   else the metadata's resource, else the endpoint. The client authenticates with its secret
   (`client_secret_basic` or `client_secret_post`, as the metadata allows, Basic first, RFC
   8414's default), or with a client assertion (RFC 7523 section 2.2): signed with the
   Secret's key (privateKeyJWT), or the ServiceAccount's own token minted for the
   authorization server's issuer (serviceAccount).
4. The probe, with the token as `Authorization: Bearer` (MCP: the session; a gateway: its
   model list). A 401 or 403 there is a token the resource server refuses, though fresh.

Why not the SDK's `ClientCredentialsOAuthProvider` and `PrivateKeyJWTOAuthProvider`: they run
the same steps as an httpx auth flow, but only after a 401, and after it replace the scopes they
were given with the server's advertised ones (spec.oauth.scopes must be what is asked for);
their failures are exceptions with text, which lose the step and the URL a verdict must name;
the SDK's authorization server does not implement client credentials at all; and a gateway
connection is no MCP session, so the same code must run without it. The SDK's discovery URL
builders, its Protected Resource Metadata model and its resource and issuer comparisons are
used as they are.

Nothing is kept: the client secret, the assertion and the token are held (`ctx.holding`:
redacted from logs while in use, and from the verdict) and dropped when the probe ends. The
verdict's details name the metadata's URL, the issuer, the scopes granted and the token's
lifetime, never the token.

Its length is one chain's: discovery, the authorization server's metadata, three ways to
authenticate the client and the reading of each step's failures belong together, since each
failure's reason names the step before it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    issuers_match,
)
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from pydantic import ValidationError

from llmconn.model.blocks import ClientAuthMethod, OAuthSpec, SigningAlgorithm
from llmconn.model.credentials import BearerToken
from llmconn.model.reasons import Reason
from llmconn.net.exchange import USER_AGENT, RedirectRefused, Reply
from llmconn.net.oauth import TokenAnswer, bearer_challenge, post_form, token_answer
from llmconn.net.pool import TENANT
from llmconn.probes import assertions
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome
from llmconn.probes.errors import rate_limited

GRANT = "client_credentials"
JWT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds: the assertion serves one token request
_SHOWN = 200  # characters of server text (a description, a URL) in a message


@dataclasses.dataclass(frozen=True, repr=False)
class Granted:
    """The access token and what the verdict says of it."""

    token: BearerToken
    issuer: str  # the issuer, or the token URL when none is known
    scopes: str | None  # as granted: the answer's `scope`, else what was asked
    lifetime: int | None  # seconds, from `expires_in`

    def __repr__(self) -> str:
        return f"Granted(issuer={self.issuer!r})"

    @property
    def said(self) -> str:
        scopes = f"scopes {self.scopes}" if self.scopes else "no scope"
        life = f", valid {self.lifetime} s" if self.lifetime is not None else ""
        return f"Access token from {self.issuer} ({scopes}{life})."


@dataclasses.dataclass(frozen=True)
class _Server:
    """What the chain knows of the authorization server."""

    issuer: str | None
    token_url: str
    grants: Sequence[str] | None = None
    auth_methods: Sequence[str] | None = None
    signing_algs: Sequence[str] | None = None


async def probe(ctx: ProbeContext) -> ProbeOutcome:
    """The token, then the provider's probe with it; on success the message says whose token
    it used. Raises what the probe raises (the caller classifies)."""
    granted = await authorize(ctx)
    with_token = dataclasses.replace(ctx, bearer_token=granted.token)
    with ctx.holding(granted.token.token):
        outcome = await ctx.provider.probe(with_token)
    if outcome.reason is Reason.VALIDATED:
        return dataclasses.replace(outcome, message=f"{outcome.message} {granted.said}")
    return outcome


async def authorize(ctx: ProbeContext) -> Granted:
    """Discovery and the token request; raises ProbeFailure naming the step that failed."""
    oauth = ctx.oauth
    assert oauth is not None
    details = ctx.found.details
    resource = oauth.resource or resource_url_from_server_url(ctx.endpoint)
    if oauth.token_url is not None:
        details["oauthResourceMetadata"] = "not asked (spec.oauth.tokenURL)"
        server = _Server(issuer=oauth.issuer, token_url=oauth.token_url)
    else:
        issuer = oauth.issuer
        if issuer is None:
            prm = await _resource_metadata(ctx)
            if oauth.resource is None and check_resource_allowed(resource, str(prm.resource)):
                resource = str(prm.resource)
            issuer = str(prm.authorization_servers[0])
        else:
            details["oauthResourceMetadata"] = "not asked (spec.oauth.issuer)"
        server = await _server_metadata(ctx, issuer)
    details["oauthIssuer"] = server.issuer or server.token_url
    details["oauthResource"] = resource
    fields, headers, held = await _client_auth(ctx, oauth, server)
    fields.update({"grant_type": GRANT, "resource": resource})
    if oauth.scopes:
        fields["scope"] = " ".join(oauth.scopes)
    now = time.time()
    ctx.found.elsewhere = server.token_url
    with ctx.holding(*held):
        reply = await post_form(ctx.transport, server.token_url, fields, headers=headers)
    ctx.found.elsewhere = None
    answer = token_answer(reply, now)
    if answer.token is None:
        shown = _claims(held[0]) if oauth.service_account is not None else {}
        raise ProbeFailure(_refused(ctx, oauth, server, reply, answer, resource, shown))
    granted = _granted(ctx, server, reply, answer)
    details["oauthScopes"] = granted.scopes or "none"
    if granted.lifetime is not None:
        details["oauthTokenLifetime"] = f"{granted.lifetime}s"
    return granted


# --- discovery ----------------------------------------------------------------------------


async def _get(ctx: ProbeContext, url: str, what: str) -> Reply:
    """An unauthenticated metadata request: no header of the spec, no credentials. A redirect
    off the URL's origin is refused (the transport sends nothing there): named as `what`'s."""
    ctx.found.elsewhere = url
    try:
        reply = await ctx.transport.fetch(
            "GET", url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
        )
    except RedirectRefused as exc:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"{what} at {_shown(url)} redirected {exc.detail}: discovery follows no "
                "redirect off the URL's origin, and nothing was asked there.",
                http_status=exc.status,
            )
        ) from None
    ctx.found.elsewhere = None
    return reply


def _unavailable(reply: Reply, what: str) -> ProbeOutcome | None:
    """A 429 or 5xx while discovering: the server's trouble, whatever the document."""
    if reply.status == 429:
        return rate_limited(
            reply.headers, f"{what} at {reply.url} is rate limiting (HTTP 429).", http_status=429
        )
    if reply.status >= 500:
        return ProbeOutcome(
            Reason.PROVIDER_UNAVAILABLE,
            f"{what} at {reply.url} is unavailable (HTTP {reply.status}).",
            http_status=reply.status,
        )
    return None


async def _resource_metadata(ctx: ProbeContext) -> ProtectedResourceMetadata:
    """The well-known URLs first; when none has it, the `resource_metadata` of the Bearer
    challenge an unauthenticated request to the endpoint meets (RFC 9728 section 5)."""
    tried: list[str] = []
    for url in build_protected_resource_metadata_discovery_urls(None, ctx.endpoint):
        if (prm := await _read_resource_metadata(ctx, url, tried)) is not None:
            return prm
    asked = [t.split(" (", 1)[0] for t in tried]
    challenged = await _challenged(ctx, tried)
    if challenged is not None and _shown(challenged) not in asked:
        prm = await _read_resource_metadata(ctx, challenged, tried)
        if prm is not None:
            return prm
    raise ProbeFailure(
        ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"No Protected Resource Metadata (RFC 9728) at {' or '.join(tried)}: the server "
            "does not say which authorization server issues its tokens. Set "
            "spec.oauth.issuer (or spec.oauth.tokenURL).",
            http_status=404 if all("HTTP 404" in t for t in tried) else None,
        )
    )


async def _challenged(ctx: ProbeContext, tried: list[str]) -> str | None:
    """The `resource_metadata` URL of the endpoint's Bearer challenge (an unauthenticated
    GET), or None, with what the endpoint answered added to `tried`."""
    reply = await _get(ctx, ctx.endpoint, "The endpoint")
    url = resource_metadata_of(reply.headers.get("www-authenticate", ""))
    if url is None:
        tried.append(
            f"the challenge of GET {ctx.endpoint} (HTTP {reply.status}, no resource_metadata)"
        )
    return url


def resource_metadata_of(challenge: str) -> str | None:
    """The `resource_metadata` URL of a Bearer challenge (RFC 9728 section 5.1), if it is an
    http(s) URL."""
    if "bearer" not in challenge.lower():
        return None
    url = bearer_challenge(challenge).get("resource_metadata")
    return url if url and _http(url) else None


async def _read_resource_metadata(
    ctx: ProbeContext, url: str, tried: list[str]
) -> ProtectedResourceMetadata | None:
    """The metadata at `url`, None when it is not there (added to `tried`); raises
    ProbeFailure for metadata that is wrong or not this endpoint's."""
    reply = await _get(ctx, url, "The Protected Resource Metadata")
    if (trouble := _unavailable(reply, "The Protected Resource Metadata")) is not None:
        raise ProbeFailure(trouble)
    if reply.status != 200:
        tried.append(f"{_shown(url)} (HTTP {reply.status})")
        return None
    try:
        prm = ProtectedResourceMetadata.model_validate_json(reply.content)
    except ValidationError as exc:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"The Protected Resource Metadata at {_shown(url)} is not RFC 9728 metadata "
                f"with an authorization server ({_first_error(exc)}).",
                http_status=reply.status,
            )
        ) from None
    ctx.found.details["oauthResourceMetadata"] = _shown(url)
    resource = resource_url_from_server_url(ctx.endpoint)
    if not check_resource_allowed(resource, str(prm.resource)):
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"The Protected Resource Metadata at {_shown(url)} is for resource "
                f"{_shown(str(prm.resource))}, not {resource} (RFC 9728 section 3.3): no "
                "credentials were sent. Check spec.endpoint.",
            )
        )
    return prm


async def _server_metadata(ctx: ProbeContext, issuer: str) -> _Server:
    tried: list[str] = []
    for url in build_oauth_authorization_server_metadata_discovery_urls(issuer, ctx.endpoint):
        reply = await _get(ctx, url, "The authorization server's metadata")
        if (trouble := _unavailable(reply, "The authorization server's metadata")) is not None:
            raise ProbeFailure(trouble)
        if reply.status != 200:
            tried.append(f"{url} (HTTP {reply.status})")
            continue
        body = reply.json()
        said = body.get("issuer") if isinstance(body, dict) else None
        token_url = body.get("token_endpoint") if isinstance(body, dict) else None
        if not isinstance(said, str) or not isinstance(token_url, str) or not _http(token_url):
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.UNEXPECTED_RESPONSE,
                    f"The authorization server's metadata at {url} is not RFC 8414 metadata "
                    "(no issuer or token_endpoint).",
                    http_status=reply.status,
                )
            )
        if not issuers_match(said, issuer):
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION,
                    f"The authorization server's metadata at {url} names issuer "
                    f"{_shown(said)}, not {issuer} (RFC 8414 section 3.3): it is not that "
                    "server's. No credentials were sent.",
                )
            )
        assert isinstance(body, dict)
        return _Server(
            issuer=said,
            token_url=token_url,
            grants=_strings(body.get("grant_types_supported")),
            auth_methods=_strings(body.get("token_endpoint_auth_methods_supported")),
            signing_algs=_strings(body.get("token_endpoint_auth_signing_alg_values_supported")),
        )
    raise ProbeFailure(
        ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"No metadata for authorization server {issuer} (RFC 8414 or OpenID discovery) at "
            f"{' or '.join(tried)}. Set spec.oauth.tokenURL, or check the issuer.",
        )
    )


# --- client authentication --------------------------------------------------------------


async def _client_auth(
    ctx: ProbeContext, oauth: OAuthSpec, server: _Server
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The token request's client authentication: form fields, headers, and what to hold."""
    if server.grants is not None and GRANT not in server.grants:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"The authorization server {server.issuer} does not offer the client "
                f"credentials grant (its grant_types_supported: {_listed(server.grants)}); "
                "spec.oauth needs it.",
            )
        )
    secrets = ctx.oauth_secrets
    if oauth.client_credentials is not None:
        assert secrets is not None and secrets.client_id and secrets.client_secret
        method = _secret_method(oauth.client_credentials.auth_method, server)
        if method is ClientAuthMethod.POST:
            fields = {"client_id": secrets.client_id, "client_secret": secrets.client_secret}
            return fields, {}, [secrets.client_secret]
        pair = f"{quote(secrets.client_id, safe='')}:{quote(secrets.client_secret, safe='')}"
        basic = base64.b64encode(pair.encode()).decode()
        # client_id in the form too (RFC 6749 section 3.2.1 allows it; the SDK's own
        # authorization server, among others, looks the client up by it).
        headers = {"Authorization": f"Basic {basic}"}
        return {"client_id": secrets.client_id}, headers, [secrets.client_secret, basic]
    _needs_jwt_auth(server)
    audience = server.issuer or server.token_url
    if oauth.private_key_jwt is not None:
        assert secrets is not None and secrets.private_key
        form = oauth.private_key_jwt
        if server.signing_algs is not None and form.algorithm.value not in server.signing_algs:
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION,
                    f"The authorization server {server.issuer} takes no {form.algorithm.value} "
                    "client assertion (its token_endpoint_auth_signing_alg_values_supported: "
                    f"{_listed(server.signing_algs)}): set spec.oauth.privateKeyJWT.algorithm.",
                )
            )
        assertion = await asyncio.to_thread(
            _sign, ctx, secrets.private_key, form.client_id, audience, form.algorithm, form.key_id
        )
        fields = {"client_id": form.client_id}
    else:
        assert oauth.service_account is not None and ctx.mint is not None
        form_sa = oauth.service_account
        assertion = await ctx.mint(form_sa.audience or audience)
        fields = {"client_id": form_sa.client_id} if form_sa.client_id else {}
    fields |= {"client_assertion_type": JWT_ASSERTION, "client_assertion": assertion}
    return fields, {}, [assertion]


def _secret_method(asked: ClientAuthMethod | None, server: _Server) -> ClientAuthMethod:
    """spec.oauth.clientCredentials.authMethod, else what the metadata allows, Basic first
    (RFC 8414: client_secret_basic when the metadata lists none)."""
    offered = server.auth_methods
    if asked is not None:
        if offered is not None and asked.value not in offered:
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION,
                    f"The authorization server {server.issuer} does not take {asked.value} "
                    "(its token_endpoint_auth_methods_supported: "
                    f"{_listed(offered)}): change spec.oauth.clientCredentials.authMethod.",
                )
            )
        return asked
    for method in ClientAuthMethod:
        if offered is None or method.value in offered:
            return method
    assert offered is not None
    raise ProbeFailure(
        ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"The authorization server {server.issuer} takes no client secret (its "
            f"token_endpoint_auth_methods_supported: {_listed(offered)})"
            f"{_form_hint(offered)}",
        )
    )


def _needs_jwt_auth(server: _Server) -> None:
    offered = server.auth_methods
    if offered is not None and "private_key_jwt" not in offered:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"The authorization server {server.issuer} takes no client assertion "
                f"(private_key_jwt; its token_endpoint_auth_methods_supported: "
                f"{_listed(offered)}){_form_hint(offered)}",
            )
        )


def _form_hint(offered: Sequence[str]) -> str:
    if "private_key_jwt" in offered:
        return ": use spec.oauth.privateKeyJWT or spec.oauth.serviceAccount."
    if {m.value for m in ClientAuthMethod} & set(offered):
        return ": use spec.oauth.clientCredentials."
    return "."


def _sign(
    ctx: ProbeContext,
    pem: str,
    client_id: str,
    audience: str,
    algorithm: SigningAlgorithm,
    key_id: str | None,
) -> str:
    """The client assertion of RFC 7523 section 3 (iss and sub the client, aud the
    authorization server's issuer, a jti, five minutes), signed as a service-account key's
    is (`assertions.sign`: the key bounded before it is used). Loads the key in this thread."""
    assert ctx.oauth is not None and ctx.oauth.private_key_jwt is not None
    form = ctx.oauth.private_key_jwt
    field = f"Key {form.private_key_key} of Secret {form.secret_name} (spec.oauth.privateKeyJWT)"
    kind = "an EC P-256" if algorithm is SigningAlgorithm.ES256 else "an RSA"
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        "jti": str(uuid.uuid4()),
    }
    return assertions.sign(
        pem,
        claims,
        algorithm.value,
        key_id=key_id,
        field=field,
        not_a_key=ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"{field} is not {kind} private key in unencrypted PEM, which {algorithm.value} "
            "signs with.",
        ),
    )


# --- the answer ---------------------------------------------------------------------------


def _granted(ctx: ProbeContext, server: _Server, reply: Reply, answer: TokenAnswer) -> Granted:
    assert answer.token is not None
    kind = answer.body.get("token_type")
    if isinstance(kind, str) and kind.lower() != "bearer":
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"The authorization server {server.issuer or server.token_url} granted a "
                f"{_shown(kind, 32)} token, not a Bearer token: this client sends Bearer "
                "tokens only.",
                http_status=reply.status,
            )
        )
    scope = answer.body.get("scope")
    asked = " ".join(ctx.oauth.scopes) if ctx.oauth is not None and ctx.oauth.scopes else None
    lifetime = answer.body.get("expires_in")
    try:
        seconds = int(float(lifetime)) if lifetime is not None else None
    except (TypeError, ValueError):
        seconds = None
    return Granted(
        token=answer.token,
        issuer=server.issuer or server.token_url,
        scopes=_shown(scope) if isinstance(scope, str) and scope else asked,
        lifetime=seconds,
    )


def _refused(
    ctx: ProbeContext,
    oauth: OAuthSpec,
    server: _Server,
    reply: Reply,
    answer: TokenAnswer,
    resource: str,
    claims: dict[str, Any],
) -> ProbeOutcome:
    """A token request that gave no token, named by the answer's `error` (RFC 6749 5.2)."""
    who = server.issuer or server.token_url
    code = answer.error[:64] if answer.error else None
    said = f": {_shown(answer.description).rstrip('.')}" if answer.description else ""
    answered = f"HTTP {reply.status}{' ' + code if code else ''}{said}"

    def out(reason: Reason, message: str) -> ProbeOutcome:
        return ProbeOutcome(reason, message, http_status=reply.status, code=code)

    if code is None:
        if (trouble := _unavailable(reply, "The token endpoint")) is not None:
            return trouble
        html = ", an HTML page" if reply.is_html else ""
        return out(
            Reason.UNEXPECTED_RESPONSE,
            f"The token endpoint {server.token_url} answered HTTP {reply.status}{html} without "
            "an access token or an OAuth error: it is not an OAuth token endpoint.",
        )
    if code in ("invalid_client", "unauthorized_client", "invalid_grant"):
        if oauth.service_account is not None:
            return out(
                Reason.IDENTITY_EXCHANGE_FAILED, _assertion_refused(ctx, who, answered, claims)
            )
        return out(
            Reason.INVALID_API_KEY,
            f"The authorization server {who} refused the client ({answered}). "
            f"{_fix_client(ctx, oauth)}",
        )
    if code == "invalid_scope":
        asked = " ".join(oauth.scopes) if oauth.scopes else "none"
        return out(
            Reason.PERMISSION_DENIED,
            f"The authorization server {who} refused the scopes asked for ({asked}; "
            f"{answered}). Check spec.oauth.scopes and what the client may be granted.",
        )
    if code == "invalid_target":
        return out(
            Reason.INVALID_CONFIGURATION,
            f"The authorization server {who} refused resource {resource} (RFC 8707; "
            f"{answered}). Check spec.oauth.resource, or the resources the client may use.",
        )
    if code == "unsupported_grant_type":
        return out(
            Reason.INVALID_CONFIGURATION,
            f"The authorization server {who} does not grant client credentials to this client "
            f"({answered}).",
        )
    if code in ("temporarily_unavailable", "server_error") or reply.status >= 500:
        return out(
            Reason.PROVIDER_UNAVAILABLE,
            f"The authorization server {who} is unavailable ({answered}).",
        )
    if reply.status == 429:
        return rate_limited(
            reply.headers, f"The authorization server {who} is rate limiting.", http_status=429
        )
    return out(
        Reason.INVALID_CONFIGURATION,
        f"The authorization server {who} refused the token request ({answered}).",
    )


def _fix_client(ctx: ProbeContext, oauth: OAuthSpec) -> str:
    if (cc := oauth.client_credentials) is not None:
        client = ctx.oauth_secrets.client_id if ctx.oauth_secrets is not None else None
        return (
            f"Update keys {cc.client_id_key} and {cc.client_secret_key} of Secret "
            f"{cc.secret_name} (client {client})."
        )
    assert oauth.private_key_jwt is not None
    pk = oauth.private_key_jwt
    return (
        f"Check that client {pk.client_id} is registered with the public key of key "
        f"{pk.private_key_key} of Secret {pk.secret_name}"
        f"{f' (key id {pk.key_id})' if pk.key_id else ''}."
    )


def _assertion_refused(ctx: ProbeContext, who: str, answered: str, claims: dict[str, Any]) -> str:
    assert ctx.oauth is not None and ctx.oauth.service_account is not None
    form = ctx.oauth.service_account
    token = f"issuer {claims.get('iss', '?')}, subject {claims.get('sub', '?')}"
    aud = claims.get("aud")
    audience = ", ".join(aud) if isinstance(aud, list) else aud or "?"
    client = f" for client {form.client_id}" if form.client_id else ""
    return (
        f"The authorization server {who} refused ServiceAccount {form.service_account_name}'s "
        f"token as the client assertion{client} ({answered}). Check that it trusts this token "
        f"({token}, audience {audience}): the cluster's issuer, the subject and the audience."
    )


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the API server just issued it): for messages only."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return (
        {k: v for k, v in data.items() if k in ("iss", "sub", "aud")}
        if isinstance(data, dict)
        else {}
    )


# --- small helpers ------------------------------------------------------------------------


def _http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _strings(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [v for v in value if isinstance(v, str)]


def _listed(values: Sequence[str]) -> str:
    return ", ".join(_shown(v, 64) for v in values[:12]) or "none"


def _shown(text: str, limit: int = _SHOWN) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    where = ".".join(str(p) for p in errors[0]["loc"]) or "the document"
    return f"{where}: {errors[0]['msg']}"[:_SHOWN]


# --- advice for a connection without spec.oauth -------------------------------------------

ADVICE_BUDGET = 5.0  # seconds at most for the two metadata documents behind the advice
ADVICE_KEPT = 600.0  # seconds an advice is told again without asking the servers again
ADVICE_CACHED = 256  # advices kept, least recently used out
# By tenant (no tenant's fetch, through its own TLS settings and headers, answers for
# another's), metadata URL and endpoint.
_ADVICE: collections.OrderedDict[tuple[str | None, str, str], tuple[float, str | None]] = (
    collections.OrderedDict()
)


async def advise(ctx: ProbeContext, outcome: ProbeOutcome, deadline: float) -> ProbeOutcome:
    """A connection without spec.oauth refused with an OAuth challenge (HTTP 401 with
    `resource_metadata`, in the outcome's details as `resourceMetadata`): the outcome, its
    message saying which spec.oauth form would work, from the server's Protected Resource
    Metadata and its authorization server's metadata (grant types, token endpoint client
    authentication methods). Sends no credentials; on any trouble the outcome as it was.

    Within the validation's `deadline` (the loop's time): no advice when the probe used it
    up. An advice (or the lack of one, from documents that answered) is kept ADVICE_KEPT
    seconds: a connection refused on every validation does not fetch the documents on each."""
    where = outcome.details.get("resourceMetadata")
    if ctx.oauth is not None or not ctx.provider.oauth or outcome.http_status != 401:
        return outcome
    if where is None or not _http(where):
        return outcome
    key, now = (TENANT.get(), where, ctx.endpoint), time.monotonic()
    if (kept := _ADVICE.get(key)) is not None and kept[0] > now:
        _ADVICE.move_to_end(key)
        said = kept[1]
    else:
        elsewhere = ctx.found.elsewhere
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + ADVICE_BUDGET)):
                said = await _advice(ctx, where)
        except Exception:  # advice only: the verdict stands without it (and is not kept)
            return outcome
        finally:
            ctx.found.elsewhere = elsewhere
        _ADVICE[key] = (now + ADVICE_KEPT, said)
        _ADVICE.move_to_end(key)
        while len(_ADVICE) > ADVICE_CACHED:
            _ADVICE.popitem(last=False)
    if said is None:
        return outcome
    return dataclasses.replace(outcome, message=f"{outcome.message} {said}")


async def _advice(ctx: ProbeContext, where: str) -> str | None:
    reply = await _get(ctx, where, "The Protected Resource Metadata")
    if reply.status != 200:
        return None
    try:
        prm = ProtectedResourceMetadata.model_validate_json(reply.content)
    except ValidationError:
        return None
    if not check_resource_allowed(resource_url_from_server_url(ctx.endpoint), str(prm.resource)):
        return None
    issuer = str(prm.authorization_servers[0])
    try:
        server = await _server_metadata(ctx, issuer)
    except ProbeFailure:
        return None
    who = f"Its authorization server {_shown(issuer)}"
    grants = server.grants
    if grants is not None and GRANT not in grants:
        return (
            f"{who} grants no client credentials (grant_types_supported: {_listed(grants)}): "
            "spec.oauth cannot get a token from it; put an access token in the Secret."
        )
    methods = server.auth_methods
    offered = (
        f" (token_endpoint_auth_methods_supported: {_listed(methods)})"
        if methods is not None
        else " (client_secret_basic, as it lists no methods)"
    )
    forms = []
    if methods is None or {m.value for m in ClientAuthMethod} & set(methods):
        forms.append("spec.oauth.clientCredentials (a client id and secret in a Secret)")
    if methods is not None and "private_key_jwt" in methods:
        forms.append(
            "spec.oauth.privateKeyJWT (a client registered with a public key) or "
            "spec.oauth.serviceAccount (a client that trusts the cluster's ServiceAccount "
            "tokens)"
        )
    if not forms:
        return f"{who} takes no client authentication spec.oauth has{offered}."
    scopes = (
        f", with spec.oauth.scopes from {_listed(prm.scopes_supported)}"
        if (prm.scopes_supported)
        else ""
    )
    return f"{who} grants client credentials{offered}: set {', or '.join(forms)}{scopes}."
