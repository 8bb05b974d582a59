"""Token services, asked and read in one way for every caller: a form-encoded token request,
an OAuth 2.0 token endpoint's answer (RFC 6749 sections 5.1 and 5.2), and Google's API error
object (google.rpc.Status as JSON: `{"error": {"code", "message", "status", "details"}}`).

The callers: spec.oauth's token requests (`probes.oauth_client`), the workload identity
exchanges (`llmconn.net.clouds`: AWS STS's Query API, Entra ID, Google STS, IAM Credentials)
and the probes' own Google credentials (`probes.google_oauth` for a service-account key;
`probes.gemini` and `probes.vertex_ai` read Google's errors).
Each decides what an answer means for its user; what the answer says is read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from llmconn.model.credentials import BearerToken
from llmconn.model.limits import MAX_CREDENTIAL_BYTES
from llmconn.net.exchange import USER_AGENT, ProbeTransport, Reply, UnreadableAnswer

# The scope Google's APIs take for everything a project's IAM allows (google-auth's
# `_CLOUD_PLATFORM_SCOPE`; Vertex AI's client libraries ask for it).
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"

# The parameters of a Bearer challenge read here (RFC 6750 section 3, RFC 9728 section 5.1),
# quoted or token values, up to a long URL's length.
_CHALLENGE = re.compile(r'\b(resource_metadata|scope)=(?:"([^"]{0,2048})"|([^\s",]{1,2048}))')


def bearer_challenge(header: str) -> dict[str, str]:
    """The `resource_metadata` and `scope` of a WWW-Authenticate Bearer challenge (the first
    of each), printable: any other character becomes "?"."""
    found: dict[str, str] = {}
    for name, quoted, token in _CHALLENGE.findall(header):
        found.setdefault(name, re.sub(r"[^\x20-\x7e]", "?", quoted or token))
    return found


async def post_form(
    transport: ProbeTransport,
    url: str,
    fields: Mapping[str, str],
    *,
    accept: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A token request: `fields` form-encoded in a POST (RFC 6749 section 4.1.3 and on; AWS's
    Query API takes its parameters so too). No header of the spec goes with it: it is meant
    for the provider, and a token service is somewhere else. `headers` are the client's own
    (HTTP Basic client authentication, RFC 6749 section 2.3.1)."""
    return await transport.fetch(
        "POST",
        url,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": accept,
            "Content-Type": "application/x-www-form-urlencoded",
            **(headers or {}),
        },
        content=urlencode(fields).encode(),
    )


@dataclass(frozen=True, repr=False)
class TokenAnswer:
    """A token endpoint's answer, as far as it says anything."""

    token: BearerToken | None  # a 200 with a non-empty `access_token`
    error: str | None  # section 5.2's `error`, when it is a string
    description: str | None  # ... and `error_description`, when that is a string
    body: Mapping[str, Any]  # the JSON object ({} when none), for what a service adds

    def __repr__(self) -> str:
        return f"TokenAnswer(token={'…' if self.token else None}, error={self.error!r})"


def token_answer(reply: Reply, now: float) -> TokenAnswer:
    """Read an answer of a token endpoint; `now` (epoch seconds) dates `expires_in`.

    A token longer than a credential may be (MAX_CREDENTIAL_BYTES, as for a Secret's value)
    is refused as an unreadable answer: it would be sent as a header, and every token is held
    for redaction, whose cost grows with its length (a token service can be a tenant's)."""
    body = reply.json()
    body = body if isinstance(body, dict) else {}
    access = body.get("access_token")
    token = None
    if isinstance(access, str) and len(access) > MAX_CREDENTIAL_BYTES:
        raise UnreadableAnswer(
            "POST",
            urlsplit(reply.url).path or "/",
            reply.status,
            f"an access token of {len(access):,} characters, over the "
            f"{MAX_CREDENTIAL_BYTES // 1024} KiB a credential may have",
        )
    if reply.status == 200 and isinstance(access, str) and access:
        token = BearerToken(access, expires_at=_expiry(body, now))
    error, description = body.get("error"), body.get("error_description")
    return TokenAnswer(
        token=token,
        error=error if isinstance(error, str) else None,
        description=description if isinstance(description, str) else None,
        body=body,
    )


def _expiry(body: Mapping[str, Any], now: float) -> float | None:
    expires_in = body.get("expires_in")
    try:  # some token services send it as a string (google-auth `_parse_expiry`)
        return now + float(expires_in) if expires_in is not None else None
    except (TypeError, ValueError):
        return None


def google_error(reply: Reply) -> dict[str, Any] | None:
    """The `error` object of Google's error shape: code, message, status, details."""
    body = reply.json()
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None
