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
    facts: int  # the connection's `facts` when the validation began


@dataclass
class HeldEvents:
    """Events not posted while a connection's Event budget was spent (a flapping connection),
    told in one summary Event when the budget allows: how many and the latest."""

    since: float  # monotonic: when the first was held
    ready: int = 0  # transitions to Ready
    not_ready: int = 0  # transitions away from Ready, or to another failure
    other: int = 0  # other Events (a model's deprecation)
    reasons: dict[str, int] = field(default_factory=dict)  # failure reasons, by count
    latest: tuple[str, str, str] | None = None  # (type, reason, message) of the latest

    def add(self, type_: str, reason: str, message: str, failure: str | None) -> None:
        if reason == "Validated":
            self.ready += 1
        elif type_ == "Warning" and reason == "ValidationFailed":
            self.not_ready += 1
        else:
            self.other += 1
        if failure is not None:
            self.reasons[failure] = self.reasons.get(failure, 0) + 1
        if self.latest is None or reason in ("Validated", "ValidationFailed"):
            self.latest = (type_, reason, message)

    def summary(self, seconds: float) -> tuple[str, str, str]:
        """The one Event that tells them: the latest transition's type and reason, and a
        message that counts what happened and ends with the latest message."""
        assert self.latest is not None
        type_, reason, message = self.latest
        parts = []
        if self.ready:
            parts.append(f"{self.ready} to Ready")
        if self.not_ready:
            failures = ", ".join(f"{name} x{count}" for name, count in sorted(self.reasons.items()))
            parts.append(f"{self.not_ready} to not Ready ({failures})")
        if self.other:
            parts.append(f"{self.other} other")
        total = self.ready + self.not_ready + self.other
        return (
            type_,
            reason,
            f"{total} changes in {seconds:.0f}s, told in one Event ({'; '.join(parts)}); "
            f"latest: {message}",
        )


@dataclass
class Conn:
    namespace: str
    name: str
    uid: str
    created: str = ""  # metadata.creationTimestamp: which of two UIDs of one name is newer
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
    # Counts new facts (a spec, Secret data; not a request, which asks again about the same
    # facts): a verdict that began under an older count is about the old facts, so its
    # Retry-After binds nothing and, when its write fails, it is not kept but validated again.
    facts: int = 0
    # The generation and request the validation in flight covers: their own events (the
    # pending status's, the previous verdict's) ask for no second run of them.
    covering: tuple[int, str | None] | None = None
    seen_at: float = 0.0  # monotonic: first sight
    unwritten: Unwritten | None = None
    write_failures: int = 0
    last_warning: float | None = None  # monotonic: the last Warning Event posted
    # Its Event budget (writer.py): tokens left, refilled one per EVENT_EVERY, as of when.
    event_tokens: float | None = None  # None: full
    event_stamp: float = 0.0  # monotonic
    held: HeldEvents | None = None  # what happened since, to be told in one Event

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
