"""Credentials a probe presents besides a plain API key: what a Secret holding cloud keys, or a
workload identity exchanged at a cloud's token service, yields.

Plain values, no I/O. Their repr never shows a secret part, and `secrets()` lists every value
the redacting log filter must hide while a validation holds them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, repr=False)
class AwsCredentials:
    """AWS access keys for SigV4: long-lived from a Secret, or temporary from STS."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials(access_key_id={self.access_key_id[:4]}…)"

    def secrets(self) -> tuple[str, ...]:
        return tuple(
            v for v in (self.access_key_id, self.secret_access_key, self.session_token) if v
        )


@dataclass(frozen=True, repr=False)
class BearerToken:
    """An OAuth access token (Entra ID, Google): sent as `Authorization: Bearer`."""

    token: str
    expires_at: float | None = None  # epoch seconds, when the issuer says

    def __repr__(self) -> str:
        return "BearerToken(…)"

    def secrets(self) -> tuple[str, ...]:
        return (self.token,)
