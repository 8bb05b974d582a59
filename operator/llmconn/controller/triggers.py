"""Which connection to validate, when: the reconciler's decisions as pure functions.

The reconciler (reconciler.py) parses each watch event once (`observe`), asks these functions
what to do, and does it (memory, schedule, API calls). Nothing here does I/O or reads a clock:
every input is an argument, so the unit tests enumerate every trigger and race.

Triggers: a new generation, a new `llmconn.dev/validate-requested-at` value, changed Secret
data, or the interval; never a status (the operator's own writes come back as events).
Identity is the UID: a name deleted and created again is a new connection, and an event of
the old object never touches the new one.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REQUESTED_AT = "llmconn.dev/validate-requested-at"
MAX_REQUESTED_AT = 128  # what status.lastHandledRequestedAt keeps of the annotation
JITTER = 0.1  # +-10% of the interval, so connections created together drift apart
RESUME_SPREAD = 30.0  # seconds over which overdue connections are spread after a (re)start
RETRY_AFTER_FLOOR_CAP = 3600.0  # Retry-After holds a connection back at most max(interval, 1h)


@dataclass(frozen=True)
class Observed:
    """One watch event of a connection, parsed once."""

    namespace: str
    name: str
    uid: str
    deleted: bool
    generation: int
    resource_version: str | None
    requested_at: str | None  # the annotation, as far as status keeps it
    status: Mapping[str, Any]
    spec: Mapping[str, Any]
    created: str = ""  # metadata.creationTimestamp

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def written_generation(self) -> int:
        return int(self.status.get("observedGeneration") or 0)


def observe(event_type: str | None, body: Mapping[str, Any]) -> Observed:
    meta = body.get("metadata") or {}
    requested_at = (meta.get("annotations") or {}).get(REQUESTED_AT)
    return Observed(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        deleted=event_type == "DELETED",
        generation=int(meta.get("generation") or 1),
        resource_version=meta.get("resourceVersion"),
        requested_at=str(requested_at)[:MAX_REQUESTED_AT] if requested_at else None,
        status=dict(body.get("status") or {}),
        spec=dict(body.get("spec") or {}),
        created=str(meta.get("creationTimestamp") or ""),
    )


def created_before(seen: Observed, created: str) -> bool:
    """Whether `seen` was created before an object created at `created` (RFC 3339 in UTC,
    whole seconds, as the API server writes it; unknown or the same second: no)."""
    return bool(seen.created and created) and seen.created < created


@dataclass(frozen=True)
class Known:
    """What memory holds of a connection, as far as the decisions need it."""

    uid: str
    generation: int
    handled_generation: int
    handled_requested_at: str | None


class Sighting(enum.Enum):
    IGNORE = "ignore"  # an event of an object we do not track (an old UID, another shard)
    FORGET = "forget"  # the tracked object is gone, or is no longer ours
    NEW = "new"  # first sight of this UID (a replacement forgets the old one first)
    SPEC = "spec"  # the tracked object's spec changed (a new generation)
    SAME = "same"  # the tracked object, same spec


def sighting(known: Known | None, seen: Observed, owned: bool) -> Sighting:
    if seen.deleted or not owned:
        # Only the tracked UID is forgotten: the DELETED of an object that was replaced
        # may arrive after the ADDED of its replacement (Kopf orders events per UID only).
        return Sighting.FORGET if known is not None and known.uid == seen.uid else Sighting.IGNORE
    if known is None or known.uid != seen.uid:
        return Sighting.NEW
    return Sighting.SPEC if seen.generation != known.generation else Sighting.SAME


class Action(enum.Enum):
    NOTHING = "nothing"
    VALIDATE = "validate"  # now (or at the Retry-After floor)
    RESUME = "resume"  # first sight of a connection already validated: continue its schedule
    SUSPEND = "suspend"  # drop the schedule; write the Suspended status if it is not written


def handled(known: Known | None, seen: Observed) -> tuple[int, str | None]:
    """The generation and request handled so far: from memory, or from the status in the
    event (whichever says more: our own write's event may come before the PATCH returns)."""
    generation = max(known.handled_generation if known else 0, seen.written_generation)
    request = known.handled_requested_at if known else None
    if seen.requested_at and seen.status.get("lastHandledRequestedAt") == seen.requested_at:
        request = seen.requested_at
    return generation, request


def covered(
    covering: tuple[int, str | None] | None,
    generation: int,
    requested_at: str | None,
    seen: Observed,
) -> tuple[int, str | None]:
    """The generation and request handled, counting the validation in flight (`covering`:
    the generation and request it began with): its own events ask for no second run."""
    if covering is None:
        return generation, requested_at
    if covering[1] is not None and covering[1] == seen.requested_at:
        requested_at = covering[1]
    return max(generation, covering[0]), requested_at


def action(
    seen: Observed,
    *,
    first_sight: bool,
    handled_generation: int,
    handled_requested_at: str | None,
    suspended: bool,
) -> Action:
    if suspended:
        return Action.SUSPEND
    if handled_generation < seen.generation or (
        seen.requested_at is not None and seen.requested_at != handled_requested_at
    ):
        return Action.VALIDATE
    return Action.RESUME if first_sight else Action.NOTHING


def suspended_written(status: Mapping[str, Any], generation: int) -> bool:
    """Whether the Suspended status of this generation is already in the object."""
    ready = (
        next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None) or {}
    )
    return ready.get("reason") == "Suspended" and status.get("observedGeneration") == generation


def secret_changed(old_digest: str | None, new_digest: str, observed_rv_matches: bool) -> bool:
    """Whether changed Secret data re-validates a connection. With no digest in memory (after
    a restart) the Secret version the status says the last probe used decides."""
    if old_digest is None:
        return not observed_rv_matches
    return old_digest != new_digest


# --- when -------------------------------------------------------------------------------


def resume_wait(
    last_validation: float | None,
    interval: float,
    now: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds until a connection seen for the first time (start, resume, re-list) is due:
    the rest of its interval, or a spread share of RESUME_SPREAD when overdue; None when it
    has no interval. Never more than the interval (another node's clock may be ahead)."""
    if last_validation is None:
        return 0.0
    if not interval:
        return None
    wait = last_validation + interval - now
    if wait <= 0:
        return uniform(0, min(interval, RESUME_SPREAD))
    return min(wait, interval)


def retry_floor(retry_after: float | None, interval: float) -> float | None:
    """The Retry-After a connection honours, capped at max(interval, 1h): a provider's
    `Retry-After: 86400` must not hold back a key rotation or a spec fix for a day."""
    if not retry_after:
        return None
    return min(retry_after, max(interval, RETRY_AFTER_FLOOR_CAP))


def next_wait(
    *,
    interval: float,
    retry_after: float | None,
    grace_left: float | None,
    poll: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds until the next periodic validation after one that finished: the jittered
    interval, at least the Retry-After floor, and at most the rest of a missing object's
    grace (so Stalled is raised on time). A missing object that no watch reports (a
    ServiceAccount) is asked for again every `poll` seconds during its grace. None: no
    periodic validation."""
    wait = interval * uniform(1 - JITTER, 1 + JITTER) if interval else None
    if retry_after:
        wait = max(wait or 0.0, retry_after)
    if grace_left is not None and grace_left > 0:
        wait = min(wait, grace_left + 0.5) if wait else grace_left + 0.5
        if poll:
            wait = max(min(wait, poll), retry_after or 0.0)
    return wait


def parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
