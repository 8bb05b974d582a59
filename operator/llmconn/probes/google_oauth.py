"""Google OAuth 2.0 for a service-account key: a JWT signed with the key, exchanged at the key's
`token_uri` for an access token, through the probe's own transport.

This is the JWT bearer grant (RFC 7523 section 2.1) as google-auth makes it for a
service-account key (`google/oauth2/service_account.py`, `_make_authorization_grant_assertion`:
claims `iss` (the account's email), `scope`, `aud`, `iat` and `exp` an hour later, RS256 with
the key id in `kid`; `google/oauth2/_client.py`, `jwt_grant`: a form-encoded POST of
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion`, answered with
`access_token` and `expires_in`, or an RFC 6749 error: `error` and `error_description`).

google-auth itself is not used: its HTTP goes through requests or aiohttp, around the
operator's egress policy, redaction and phase tracing, and the key's `token_uri` is whatever
the key file says, so it must be held to the egress policy like any endpoint. PyJWT signs
(RS256 through `cryptography`; both come with the `mcp` SDK already) and is imported only
here, when a key is used. Two differences from google-auth, on purpose:

- `aud` is the key's `token_uri` (RFC 7523: the token endpoint's URL names the server), where
  google-auth always writes https://oauth2.googleapis.com/token. Every key Google issues has
  that very `token_uri`.
- No token is kept between validations, and no self-signed JWT replaces the exchange: each
  validation mints a token, so a key deleted or disabled in Google Cloud fails the next one.

The exchange sends none of the spec's headers: they are meant for the provider, and a token
service is somewhere else. The minted token, the signed assertion and the private key are
redacted from logs and the verdict while the probe holds them (`ProbeContext.holding`).

Cost: importing PyJWT takes about 16 ms once per process. OpenSSL's check of a key costs 65 ms
of CPU at 2048 bits and 500 ms at 4096, holding the interpreter's lock (a worker thread does
not spare the event loop): it is skipped, the key's size is bounded first, and the signature
is verified with the key's public half instead. Loading, signing and verifying a 2048-bit key
costs about 2 ms (measured on the 2-core development machine).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from llmconn.model.credentials import BearerToken, ServiceAccountKey
from llmconn.model.limits import MAX_RSA_BITS
from llmconn.model.reasons import Reason
from llmconn.net.exchange import Reply
from llmconn.net.oauth import CLOUD_PLATFORM, TokenAnswer, post_form, token_answer
from llmconn.probes import assertions
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome
from llmconn.probes.errors import classify_error, rate_limited

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LIFETIME = 3600  # seconds: the longest Google accepts, and google-auth's
# RFC 6749 section 5.2 error codes that mean the key or its account is refused.
_REFUSED_KEY = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


def sign(key: ServiceAccountKey, scope: str, now: float) -> str:
    """The signed assertion (a JWT) for `scope`. Raises ProbeFailure (InvalidConfiguration)
    when the key's private_key is not an RSA private key in PEM, or is too large (bounded
    before any work on it: `assertions.sign`)."""
    claims = {
        "iss": key.client_email,
        "scope": scope,
        "aud": key.token_uri,
        "iat": int(now),
        "exp": int(now) + LIFETIME,
    }
    return assertions.sign(
        key.private_key,
        claims,
        "RS256",
        key_id=key.private_key_id,
        field='The service-account key\'s "private_key"',
        not_a_key=_NOT_RSA,
        pem_why=f" of PEM (an RSA key of {MAX_RSA_BITS} bits or fewer)",
        bits_why=" (Google issues 2048-bit keys)",
    )


_NOT_RSA = ProbeOutcome(
    Reason.INVALID_CONFIGURATION,
    'The service-account key\'s "private_key" is not an unencrypted RSA private '
    "key in PEM: put the JSON key file from Google Cloud into the Secret as it is.",
)


async def access_token(
    ctx: ProbeContext, key: ServiceAccountKey, scope: str = CLOUD_PLATFORM
) -> BearerToken:
    """Exchange a JWT signed with `key` for an access token at the key's token_uri. The
    caller holds the token with `ctx.holding` (the assertion is held here while in flight).
    Raises ProbeFailure with the token service's refusal."""
    url = key.token_uri
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                'The service-account key\'s "token_uri" is not an http or https URL.',
            )
        )
    now = time.time()
    # Bounded work (see sign), about 2 ms for a 2048-bit key: in a thread all the same.
    assertion = await asyncio.to_thread(sign, key, scope, now)
    ctx.found.elsewhere = url  # a network failure names the token service (kept if raised)
    with ctx.holding(assertion):
        fields = {"grant_type": JWT_GRANT, "assertion": assertion}
        reply = await post_form(ctx.transport, url, fields)
    ctx.found.elsewhere = None
    answer = token_answer(reply, now)
    if answer.token is not None:
        return answer.token
    raise ProbeFailure(_refused(ctx, reply, key, answer))


def _refused(
    ctx: ProbeContext, reply: Reply, key: ServiceAccountKey, answer: TokenAnswer
) -> ProbeOutcome:
    host = urlsplit(key.token_uri).hostname
    code, said = answer.error, answer.description
    if code is None:
        if reply.status == 200:
            return ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"The token service at {host} answered HTTP 200 without an access_token: "
                'check the service-account key\'s "token_uri".',
                http_status=reply.status,
            )
        if reply.status == 429:
            return rate_limited(
                reply.headers,
                f"The token service at {host} is rate limiting (HTTP 429).",
                http_status=reply.status,
            )
        outcome = classify_error(ctx, reply, f"the token request to {host}")
        if outcome.reason is Reason.INVALID_API_KEY:
            return outcome
        return ProbeOutcome(
            outcome.reason,
            f"Minting an access token failed: {outcome.message}",
            http_status=reply.status,
            code=outcome.code,
            retry_after=outcome.retry_after,
        )
    detail = f"{code}: {said.rstrip('.')}" if said else code
    code = code[:64]
    who = f"service account {key.client_email}"
    if code in _REFUSED_KEY:
        return ProbeOutcome(
            Reason.INVALID_API_KEY,
            f"Google's token service at {host} refused the key of {who} (HTTP {reply.status} "
            f"{detail}): the key may be deleted or disabled, or the account deleted or "
            f"disabled. Create a new key and {ctx.key_hint}.",
            http_status=reply.status,
            code=code,
        )
    if code == "invalid_scope":
        return ProbeOutcome(
            Reason.PERMISSION_DENIED,
            f"The token service at {host} refused the scope for {who} (HTTP {reply.status} "
            f"{detail}).",
            http_status=reply.status,
            code=code,
        )
    if reply.status >= 500 or code in ("server_error", "temporarily_unavailable"):
        return ProbeOutcome(
            Reason.PROVIDER_UNAVAILABLE,
            f"The token service at {host} is unavailable (HTTP {reply.status} {detail}).",
            http_status=reply.status,
            code=code,
        )
    return ProbeOutcome(
        Reason.INVALID_CONFIGURATION,
        f"The token service at {host} refused the token request for {who} (HTTP "
        f"{reply.status} {detail}).",
        http_status=reply.status,
        code=code,
    )
