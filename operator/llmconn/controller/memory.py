"""What the reconciler remembers of each connection, and the small facts derived from it.

One `Conn` per connection (by UID): the parsed spec, the status and resourceVersion as last
seen or written, what was handled, the digests of the Secret values the last probe used, the
Retry-After floor, and a verdict whose write has not succeeded yet. Plain data: the
decisions are in triggers.py, the I/O in reconciler.py and writer.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from llmconn.controller import triggers as tr
from llmconn.model.reasons import Reason
from llmconn.model.spec import LLMConnectionSpec
from llmconn.model.verdict import Effective, SecretData, Verdict

Key = tuple[str, str]  # namespace, name


@dataclass(frozen=True)
class Unwritten:
    """A verdict whose status write has not succeeded yet: written again, not probed again."""

    verdict: Verdict
    generation: int
    requested_at: str | None
    took: float  # seconds the validation took, for the histogram


@dataclass
class Conn:
    namespace: str
    name: str
    uid: str
    generation: int = 0
    resource_version: str | None = None  # of the object as last seen or written
    spec: LLMConnectionSpec | None = None
    spec_invalid: dict[str, Any] | None = None  # what status names of an invalid spec
    spec_error: str | None = None
    requested_at: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # as last seen or written
    handled_generation: int = 0
    handled_requested_at: str | None = None
    secret_digests: dict[str, str] = field(default_factory=dict)  # Secret name -> used values
    generation_since: float = field(default_factory=time.time)  # wall time, for the grace
    not_before: float = 0.0  # monotonic: Retry-After floor
    seen_at: float = 0.0  # monotonic: first sight
    unwritten: Unwritten | None = None
    write_failures: int = 0
    last_warning: float | None = None  # monotonic: the last Warning Event posted

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def known(self) -> tr.Known:
        return tr.Known(
            self.uid, self.generation, self.handled_generation, self.handled_requested_at
        )

    @property
    def meta(self) -> dict[str, Any]:
        """What an Event's involvedObject names."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
        }

    @property
    def secret_names(self) -> set[str]:
        return {ref.name for ref in self.spec.secret_refs} if self.spec else set()


def digest(spec: LLMConnectionSpec | None, secret: str, data: SecretData | None) -> str:
    """Digest of the values one Secret gives this connection (never stored outside memory)."""
    h = hashlib.sha256()
    for ref in spec.secret_refs if spec else []:
        if ref.name == secret:
            value = None if data is None else data.data.get(ref.key)
            h.update(ref.key.encode() + b"\0" + (b"\1" + value if value is not None else b"\2"))
    return h.hexdigest()


def observed_rv(conn: Conn, secret: str) -> str | None:
    for item in conn.status.get("observedSecrets") or []:
        if item.get("name") == secret:
            return str(item.get("resourceVersion"))
    return None


def invalid_verdict(conn: Conn, eff: Effective, now: Callable[[], dt.datetime]) -> Verdict:
    raw = conn.spec_invalid or {}
    return Verdict(
        reason=Reason.INVALID_CONFIGURATION,
        message=f"The spec cannot work: {conn.spec_error}",
        provider=str(raw.get("provider") or ""),
        endpoint=str(raw.get("endpoint") or ""),
        model=str(raw["model"]) if raw.get("model") is not None else None,
        validation=eff,
        finished_at=now(),
    )


def first_error(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "spec"
        return f"spec.{where}: {err.get('msg')}"
    return str(exc)
