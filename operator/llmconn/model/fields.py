"""The spec's building blocks: the duration grammar, name and header patterns with their
validators, and references to Secrets. The CRD's admission rules use the same patterns."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

# Go duration syntax restricted as Flux does; the CRD carries the same pattern.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Headers that carry credentials: never in plain `headers`, always in `headersFromSecret`.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "x-amz-security-token",
        "cookie",
        "proxy-authorization",
    }
)
# Headers the HTTP client owns (framing, routing, the connection itself): a spec that set
# them could smuggle a second request or reach another virtual host.
CONNECTION_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# An RFC 9110 token: what a header name may be.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# What models are named with (gpt-4o, ft:gpt-4o:org::id, claude-sonnet-4-5@20250929,
# anthropic.claude-3-5-haiku-20241022-v1:0, hf.co/org/model:Q4_K_M, an ARN): no spaces, no
# quotes, no control characters. The CRD's spec.model has the same pattern.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9._:@/+=~-]+$"
# What the API server accepts as a Secret's name (a DNS-1123 subdomain) and as a key in its
# data. Names go into API paths: anything else ("../other-ns/secrets/x") is refused here, in
# the CRD, and again by the API client.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# An AWS Region code (us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5): it goes into a
# host name, so nothing else is let through.
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
# The longest probe a connection may ask for: one tenant's slow endpoints hold workers.
MAX_TIMEOUT = 60.0
# A model or deployment goes into URL paths: "." and ".." segments would climb them.
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")
# Google Cloud project IDs (or a project number, which the APIs take too). The location goes
# into a host name (https://{location}-aiplatform.googleapis.com): letters, digits and one
# hyphen at most, nothing that could end or change the host.
GCP_PROJECT_PATTERN = r"^([a-z][-a-z0-9]{4,28}[a-z0-9]|[0-9]{1,20})$"
GCP_LOCATION_PATTERN = r"^[a-z]+(-[a-z]+[0-9]+)?$"

Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=64)]


def http_url(value: str, what: str) -> SplitResult:
    """`value` split, when it is an absolute http or https URL with a host and a port that is
    a number in range; else ValueError naming `what`. Each caller adds its own rules (a query,
    a fragment)."""
    if any(c <= " " or c == "\x7f" for c in value):
        # urlsplit would drop a tab or a line break and keep a space: the API server refuses them
        raise ValueError(f"{what} must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http or https URL with a host")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number in range)
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    return parts


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "1m30s"; ValueError for anything outside the grammar."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number and unit, e.g. 30s, 5m, 1h30m")
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string in the grammar for a number of seconds (5m, 1h30m, 1.5s)."""
    if seconds <= 0:
        return "0s"
    if seconds != int(seconds):
        ms = round(seconds * 1000)
        return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"
    whole = int(seconds)
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            out += f"{whole // size}{unit}"
            whole %= size
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _secret_name(value: str) -> str:
    if not re.fullmatch(SECRET_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Secret name: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (a Secret in the connection's "
            "own namespace)"
        )
    return value


def _secret_key(value: str) -> str:
    if not re.fullmatch(SECRET_KEY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Secret key: letters, digits, '-', '_' and '.'")
    return value


def _path_segments(value: str) -> str:
    if _DOT_SEGMENT.search(value):
        raise ValueError(f"{value!r} has a '.' or '..' path segment")
    return value


def _model_name(value: str) -> str:
    if not re.fullmatch(MODEL_NAME_PATTERN, value):
        raise ValueError(
            "a model name is letters, digits and . _ : @ / + = ~ - (no spaces or control "
            "characters)"
        )
    return _path_segments(value)


def _header_name(value: str) -> str:
    if not re.fullmatch(HEADER_NAME_PATTERN, value):
        raise ValueError(f"{value!r} is not a header name")
    lower = value.lower()
    if lower in CONNECTION_HEADERS or (
        lower.startswith("proxy-") and lower != "proxy-authorization"
    ):
        raise ValueError(f"header {value!r} is set by the HTTP client and cannot be given")
    return value


SecretName = Annotated[str, StringConstraints(max_length=253), AfterValidator(_secret_name)]
SecretKey = Annotated[str, StringConstraints(max_length=253), AfterValidator(_secret_key)]
# The CRD bounds each header name and plain value the same (maxLength, and the name pattern).
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 4096
HeaderName = Annotated[
    str, StringConstraints(max_length=MAX_HEADER_NAME), AfterValidator(_header_name)
]
PathName = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_path_segments)
]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_model_name)
]


class SecretKeyRef(_Strict):
    name: SecretName
    key: SecretKey = "apiKey"


class SecretHeader(_Strict):
    name: HeaderName
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")
