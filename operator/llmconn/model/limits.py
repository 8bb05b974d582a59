"""Every limit on what a tenant's input may cost the operator, in one place.

A tenant (whoever may create an LLMConnection in one namespace) controls inputs that make the
operator work: key material, CA bundles, JSON documents, header sets, the Secret values one
connection uses. Each such input has a size or complexity limit here, checked before any work
is done on it; a refusal is `InvalidConfiguration` with a message from `too_large()`, which
names the field, the limit and the size, and never the value.

`LIMITS` lists them with their defaults and who can change them: docs/security.md lists the
same, and a test compares the two. Fixed limits are constants; the administrator's options
(`--min-interval`, ...) have their defaults here and their flags in `controller/config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024

# A Secret value used as a credential (an API key, a header value, a credentials file): a
# service account's JSON file is about 2.4 KB.
MAX_CREDENTIAL_BYTES = 16 * KIB
# All the Secret values one connection uses as credentials, together: what redaction of its
# verdict and of the log records written while it runs has to know.
MAX_CONNECTION_SECRET_BYTES = 32 * KIB
# A service-account key's private_key, as PEM: a 4096-bit RSA key is about 3,270 bytes.
MAX_PRIVATE_KEY_PEM_BYTES = 4 * KIB
# The modulus of an RSA key (Google issues 2048-bit keys).
MAX_RSA_BITS = 4096
# A JSON credentials file nests no deeper than this (a service-account key is flat).
MAX_JSON_DEPTH = 16
# spec.tls.caBundleSecretRef: the extra trust roots, not the whole web's (the system's trust
# roots are always there).
MAX_CA_BUNDLE_BYTES = 64 * KIB
MAX_CA_CERTIFICATES = 32
# spec.headers: names and values together.
MAX_HEADER_BYTES = 8 * KIB

# What one namespace can make the operator write to the API server (controller/budget.py,
# controller/writer.py), and the floor under its validations.
MIN_INTERVAL_SECONDS = 5  # --min-interval's default: the floor on validation.interval
NAMESPACE_WRITE_RATE = 5  # --namespace-write-rate's default: status writes a second
NAMESPACE_WRITE_BURST = 100  # --namespace-write-burst's default: status writes at once
EVENT_BURST = 2  # Events one connection posts at once
EVENT_EVERY_SECONDS = 60  # then one per this many seconds; the rest are told in a summary
# What a peer in a peering object may say (controller/peering.py); past it, it is no replica.
MAX_PEER_PRIORITY = 2**31  # +- this; --priority too
MAX_PEER_LIFETIME_SECONDS = 3600  # --peering-lifetime too


@dataclass(frozen=True)
class Limit:
    name: str  # the constant's name here
    value: int
    unit: str
    what: str
    who: str  # "fixed", or the operator option that changes it


LIMITS: tuple[Limit, ...] = (
    Limit(
        "MAX_CREDENTIAL_BYTES",
        MAX_CREDENTIAL_BYTES,
        "bytes",
        "one Secret value used as a key, header value or credentials file",
        "fixed",
    ),
    Limit(
        "MAX_CONNECTION_SECRET_BYTES",
        MAX_CONNECTION_SECRET_BYTES,
        "bytes",
        "all the credential values one connection uses, together",
        "fixed",
    ),
    Limit(
        "MAX_PRIVATE_KEY_PEM_BYTES",
        MAX_PRIVATE_KEY_PEM_BYTES,
        "bytes",
        "a service-account key's private_key (PEM)",
        "fixed",
    ),
    Limit("MAX_RSA_BITS", MAX_RSA_BITS, "bits", "an RSA key's modulus", "fixed"),
    Limit(
        "MAX_JSON_DEPTH", MAX_JSON_DEPTH, "levels", "nesting of a JSON credentials file", "fixed"
    ),
    Limit(
        "MAX_CA_BUNDLE_BYTES",
        MAX_CA_BUNDLE_BYTES,
        "bytes",
        "spec.tls.caBundleSecretRef's value",
        "fixed",
    ),
    Limit(
        "MAX_CA_CERTIFICATES",
        MAX_CA_CERTIFICATES,
        "certificates",
        "certificates in one CA bundle",
        "fixed",
    ),
    Limit(
        "MAX_HEADER_BYTES",
        MAX_HEADER_BYTES,
        "bytes",
        "spec.headers, names and values together",
        "fixed",
    ),
    Limit(
        "MIN_INTERVAL_SECONDS",
        MIN_INTERVAL_SECONDS,
        "seconds",
        "the floor on every connection's validation.interval",
        "the operator's administrator: `--min-interval` (`config.minInterval`)",
    ),
    Limit(
        "NAMESPACE_WRITE_RATE",
        NAMESPACE_WRITE_RATE,
        "writes a second",
        "status writes of one namespace, sustained (past it they wait, never dropped)",
        "the operator's administrator: `--namespace-write-rate` (`config.namespaceWriteRate`)",
    ),
    Limit(
        "NAMESPACE_WRITE_BURST",
        NAMESPACE_WRITE_BURST,
        "writes",
        "status writes of one namespace at once, before the rate applies",
        "the operator's administrator: `--namespace-write-burst` (`config.namespaceWriteBurst`)",
    ),
    Limit("EVENT_BURST", EVENT_BURST, "Events", "Events one connection posts at once", "fixed"),
    Limit(
        "EVENT_EVERY_SECONDS",
        EVENT_EVERY_SECONDS,
        "seconds",
        "then one Event per connection this often; what happens meanwhile is told in one",
        "fixed",
    ),
    Limit(
        "MAX_PEER_PRIORITY",
        MAX_PEER_PRIORITY,
        "(plus or minus)",
        "a peer's priority in a peering object; past it the entry is ignored and removed",
        "fixed (`--priority` is held to it)",
    ),
    Limit(
        "MAX_PEER_LIFETIME_SECONDS",
        MAX_PEER_LIFETIME_SECONDS,
        "seconds",
        "a peer's lifetime in a peering object; past it the entry is ignored and removed",
        "fixed (`--peering-lifetime` is held to it)",
    ),
)


def too_large(field: str, size: int, limit: int, unit: str = "bytes", why: str = "") -> str:
    """The refusal message: the field, its size and the limit; never the value. `why`, if
    given, follows the limit (" (Google issues 2048-bit keys)")."""
    return f"{field} is {size} {unit}; the limit is {limit} {unit}{why}."


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep `text` nests as JSON, counted up to limit + 1 (then it stops reading), in one
    pass and without parsing: brackets inside strings do not count. Not a validator."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest
