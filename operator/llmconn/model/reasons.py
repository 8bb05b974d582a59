"""Verdict reasons: the single table of what each reason means for result, Ready and Stalled."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    VALIDATED = "Validated"
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    INVALID_API_KEY = "InvalidAPIKey"
    PERMISSION_DENIED = "PermissionDenied"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_RETIRED = "ModelRetired"
    QUOTA_EXCEEDED = "QuotaExceeded"
    RATE_LIMITED = "RateLimited"
    TIMEOUT = "Timeout"
    DNS_FAILURE = "DNSFailure"
    CONNECTION_FAILED = "ConnectionFailed"
    TLS_ERROR = "TLSError"
    PROVIDER_UNAVAILABLE = "ProviderUnavailable"
    UNEXPECTED_RESPONSE = "UnexpectedResponse"
    PROTOCOL_ERROR = "ProtocolError"
    INVALID_CONFIGURATION = "InvalidConfiguration"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    IDENTITY_EXCHANGE_FAILED = "IdentityExchangeFailed"
    EGRESS_DENIED = "EgressDenied"


class Result(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    UNKNOWN = "unknown"


# Failures that may heal by themselves: Ready stays True through failureThreshold-1 of them.
TRANSIENT: frozenset[Reason] = frozenset(
    {
        Reason.TIMEOUT,
        Reason.CONNECTION_FAILED,
        Reason.DNS_FAILURE,
        Reason.TLS_ERROR,
        Reason.PROVIDER_UNAVAILABLE,
        Reason.RATE_LIMITED,
        Reason.UNEXPECTED_RESPONSE,
    }
)

# Failures only a human can fix: Stalled=True (missing Secrets only after a grace period).
STALLING: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_API_KEY,
        Reason.PERMISSION_DENIED,
        Reason.MODEL_NOT_FOUND,
        Reason.MODEL_RETIRED,
        Reason.QUOTA_EXCEEDED,
        Reason.INVALID_CONFIGURATION,
        Reason.EGRESS_DENIED,
        Reason.IDENTITY_EXCHANGE_FAILED,
    }
)
MISSING_SECRET: frozenset[Reason] = frozenset(
    {Reason.SECRET_NOT_FOUND, Reason.SECRET_KEY_NOT_FOUND}
)
# Referenced objects that often arrive a moment after the connection (from External Secrets,
# Sealed Secrets, a Helm chart's later templates): Stalled only after the grace period.
MISSING_REFERENCE: frozenset[Reason] = MISSING_SECRET | {Reason.SERVICE_ACCOUNT_NOT_FOUND}


def result_of(reason: Reason) -> Result:
    """The latest probe's result: only RateLimited is 'could not judge'."""
    if reason is Reason.VALIDATED:
        return Result.SUCCESS
    if reason is Reason.RATE_LIMITED:
        return Result.UNKNOWN
    return Result.FAILED
