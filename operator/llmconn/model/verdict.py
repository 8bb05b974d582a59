"""The verdict of one validation, and what a validation needs from its surroundings.

`llmconn.validation.validate.validate()` produces a `Verdict`; the operator turns it into a status
patch (`llmconn.model.status`), the one-shot CLI prints it. Neither side knows the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from llmconn.model.fields import format_duration, parse_duration
from llmconn.model.reasons import Reason, Result, result_of
from llmconn.model.spec import LLMConnectionSpec, ValidationType


@dataclass(frozen=True)
class CloudEndpoints:
    """Where ServiceAccount tokens are exchanged for cloud credentials (clouds.py): the
    operator's settings (an administrator's, never a connection's, since these endpoints
    receive the ServiceAccount's token)."""

    aws_sts: str | None = None  # None: the global endpoint, or the stsRegion's
    azure_authority_host: str = "https://login.microsoftonline.com"
    gcp_sts: str = "https://sts.googleapis.com"
    gcp_iam_credentials: str = "https://iamcredentials.googleapis.com"


@dataclass(frozen=True)
class Defaults:
    """Operator-wide defaults for fields the CRD leaves without OpenAPI defaults."""

    interval: float = 300.0
    timeout: float = 10.0
    failure_threshold: int = 3
    inference_min_interval: float | None = 3600.0  # None: Inference is forbidden
    missing_secret_grace: float = 120.0
    # Floor on a periodic interval (the operator's --min-interval; 0: none). An interval of 0
    # (no periodic re-validation) stays 0.
    min_interval: float = 0.0
    # Where ServiceAccount tokens are exchanged for cloud credentials (spec.identity).
    clouds: CloudEndpoints = field(default_factory=CloudEndpoints)


@dataclass(frozen=True)
class Effective:
    """The validation settings in force for one connection (status.validation)."""

    type: ValidationType
    interval: float  # seconds; 0 = no periodic re-validation
    timeout: float
    failure_threshold: int

    def as_status(self) -> dict[str, object]:
        return {
            "type": self.type.value,
            "interval": format_duration(self.interval),
            "timeout": format_duration(self.timeout),
            "failureThreshold": self.failure_threshold,
        }


def effective(spec: LLMConnectionSpec, defaults: Defaults) -> Effective:
    v = spec.validation
    vtype = v.type or spec.default_validation_type
    interval = parse_duration(v.interval) if v.interval is not None else defaults.interval
    if interval and defaults.min_interval:
        interval = max(interval, defaults.min_interval)
    if vtype is ValidationType.INFERENCE and interval and defaults.inference_min_interval:
        interval = max(interval, defaults.inference_min_interval)
    return Effective(
        type=vtype,
        interval=interval,
        timeout=parse_duration(v.timeout) if v.timeout is not None else defaults.timeout,
        failure_threshold=v.failure_threshold or defaults.failure_threshold,
    )


@dataclass(frozen=True)
class SecretData:
    data: Mapping[str, bytes]  # decoded values
    resource_version: str | None = None


class SecretSource(Protocol):
    """Secrets of the connection's own namespace; there is no way to name another."""

    async def get(self, name: str) -> SecretData | None:
        """The Secret, or None when it does not exist (after asking the API, not a cache)."""
        ...


class TokenRefused(Exception):
    """The API server would not mint the token: the operator may not (403, the chart's
    identity mode is off), or the request is refused (a namespace being deleted)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenSource(Protocol):
    """ServiceAccount tokens of the connection's own namespace; there is no way to name
    another. Nothing keeps them: each call mints a new one."""

    async def token(self, service_account: str, audience: str) -> str | None:
        """A short-lived token for the ServiceAccount with this audience (TokenRequest), or
        None when the ServiceAccount does not exist. Raises TokenRefused."""
        ...


@dataclass(frozen=True)
class ObservedSecret:
    name: str
    resource_version: str | None


@dataclass(frozen=True)
class Lifecycle:
    """Where a model is in its provider's life, when the provider says so for free: stage
    "deprecated" (still served, retiring) or "retired"; dates as the provider gives them
    (RFC 3339 or a plain date)."""

    stage: str
    deprecated_at: str | None = None
    retires_at: str | None = None


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    message: str  # already redacted
    provider: str
    endpoint: str  # resolved, never with credentials
    model: str | None
    validation: Effective
    finished_at: dt.datetime
    http_status: int | None = None
    code: str | None = None
    latency_ms: int | None = None  # an integer for every probe that ran
    request_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    observed_secrets: tuple[ObservedSecret, ...] = ()
    lifecycle: Lifecycle | None = None  # the model's, when deprecated or retired

    @property
    def result(self) -> Result:
        return result_of(self.reason)
