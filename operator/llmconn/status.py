"""From the previous status and a new verdict to the next status: damping and conditions.

Pure functions, no Kubernetes calls. `result`/`reason`/`message`/... describe the latest
probe; the `Ready` condition is the damped verdict consumers gate on; `Stalled` marks what
only a human can fix; `Reconciling` shows before the first verdict of a new connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from llmconn.reasons import MISSING_SECRET, STALLING, TRANSIENT, Reason, Result
from llmconn.validate import status_fields
from llmconn.verdict import Verdict

READY, STALLED, RECONCILING = "Ready", "Stalled", "Reconciling"


def rfc3339(when: dt.datetime) -> str:
    return (
        when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    )


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def ready_status(status: Mapping[str, Any] | None) -> str:
    cond = find(list((status or {}).get("conditions") or []), READY)
    return str(cond.get("status")) if cond else "Unknown"


def _condition(
    prev: dict[str, Any] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    changed = prev is None or prev.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else prev.get("lastTransitionTime", now),  # type: ignore[union-attr]
    }


def pending_status(generation: int, now: dt.datetime) -> dict[str, Any]:
    """The one early write a new connection may get: not healthy before it is validated."""
    stamp = rfc3339(now)
    return {
        "observedGeneration": generation,
        "conditions": [
            _condition(
                None, READY, "Unknown", Reason.PENDING, "Validation in progress.", generation, stamp
            ),
            _condition(
                None,
                RECONCILING,
                "True",
                "Validating",
                "First validation in progress.",
                generation,
                stamp,
            ),
        ],
    }


def suspended_status(
    prev: Mapping[str, Any] | None, generation: int, now: dt.datetime
) -> dict[str, Any]:
    conditions = list((prev or {}).get("conditions") or [])
    ready = _condition(
        find(conditions, READY),
        READY,
        "Unknown",
        Reason.SUSPENDED,
        "Validation is suspended (spec.suspend is true).",
        generation,
        rfc3339(now),
    )
    return {"observedGeneration": generation, "conditions": [ready]}


def next_status(
    prev: Mapping[str, Any] | None,
    verdict: Verdict,
    *,
    generation: int,
    requested_at: str | None,
    secret_grace_over: bool,
) -> dict[str, Any]:
    """The whole status after this verdict (a merge patch: absent keys are nulled by the caller)."""
    prev = prev or {}
    now = rfc3339(verdict.finished_at)
    conditions = list(prev.get("conditions") or [])
    prev_ready = find(conditions, READY)
    was_ready = (prev_ready or {}).get("status")
    reason = verdict.reason
    failures = 0 if reason is Reason.VALIDATED else int(prev.get("consecutiveFailures") or 0) + 1
    threshold = verdict.validation.failure_threshold

    status: dict[str, Any] = status_fields(verdict)
    status["observedGeneration"] = generation
    status["consecutiveFailures"] = failures
    if reason is Reason.VALIDATED:
        status["lastSuccessTime"] = now
    elif prev.get("lastSuccessTime"):
        status["lastSuccessTime"] = prev["lastSuccessTime"]
    if requested_at is not None:
        status["lastHandledRequestedAt"] = requested_at
    elif prev.get("lastHandledRequestedAt"):
        status["lastHandledRequestedAt"] = prev["lastHandledRequestedAt"]

    # Ready: damped for transient failures, untouched by a result that could not judge.
    if reason is Reason.VALIDATED:
        ready = ("True", Reason.VALIDATED.value, verdict.message)
    elif was_ready == "True" and reason in TRANSIENT and failures < threshold:
        ready = (
            "True",
            Reason.VALIDATED.value,
            f"Last probe: {reason.value}, {failures} of {threshold} tolerated. " + verdict.message,
        )
    elif verdict.result is Result.UNKNOWN and was_ready != "True":
        # RateLimited before any verdict (or after a failure): keep what Ready said.
        ready = (
            str(was_ready or "Unknown"),
            str((prev_ready or {}).get("reason") or Reason.PENDING.value),
            f"Could not judge: {verdict.message}",
        )
    else:
        ready = ("False", reason.value, verdict.message)
    new_conditions = [_condition(prev_ready, READY, *ready, generation, now)]

    stalled = reason in STALLING or (reason in MISSING_SECRET and secret_grace_over)
    if stalled:
        new_conditions.append(
            _condition(
                find(conditions, STALLED),
                STALLED,
                "True",
                reason.value,
                verdict.message,
                generation,
                now,
            )
        )
    status["conditions"] = new_conditions
    return status


def merge_patch(prev: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `prev` into `new` at the top level (null removes a field)."""
    patch: dict[str, Any] = dict(new)
    for key in prev or {}:
        if key not in new:
            patch[key] = None
    return patch


def transition(prev: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[str, str] | None:
    """The Event to emit, if Ready flipped or its failure reason changed: (type, reason)."""
    old = find(list((prev or {}).get("conditions") or []), READY) or {}
    cur = find(list(new.get("conditions") or []), READY) or {}
    if (old.get("status"), old.get("reason")) == (cur.get("status"), cur.get("reason")):
        return None
    if cur.get("status") == "True":
        return ("Normal", "Validated") if old.get("status") != "True" else None
    if cur.get("status") == "False":
        return ("Warning", "ValidationFailed")
    return None
