"""From the previous status and a new verdict to the next status: damping, conditions, bounds.

Pure functions, no Kubernetes calls. `result`/`reason`/`message`/... describe the latest
probe; the `Ready` condition is the damped verdict consumers gate on; `Stalled` marks what
only a human can fix; `Reconciling` shows before the first verdict of a new connection;
`Deprecated` warns, days ahead, that the model retires (`modelLifecycle` holds the dates).

Whatever a provider sends, a status stays small: every string a provider can influence is
cut to a fixed length, `details` keeps at most MAX_DETAILS entries, and `bounded()` makes
sure the whole status stays under MAX_STATUS_BYTES of JSON (the CRD's status schema carries
the same limits, so the API server refuses what this module would not write).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from llmconn.model.lifecycle import deprecation_message, model_lifecycle
from llmconn.model.reasons import MISSING_REFERENCE, STALLING, TRANSIENT, Reason, Result
from llmconn.model.text import printable
from llmconn.model.verdict import Verdict

READY, STALLED, RECONCILING, DEPRECATED = "Ready", "Stalled", "Reconciling", "Deprecated"
MODEL_DEPRECATED = "ModelDeprecated"  # the Deprecated condition's reason, and its Event's

# Bounds on what a provider can put in a status (the CRD's status schema says the same).
MAX_MESSAGE = 2048  # status.message and every condition message, in characters
MAX_CODE = 128  # status.code, status.requestId
MAX_DETAILS = 32  # entries in status.details
MAX_DETAIL_KEY = 64
MAX_DETAIL_VALUE = 256
MAX_REQUESTED_AT = 128  # lastHandledRequestedAt: an annotation value, any length
MAX_PROVIDER, MAX_MODEL, MAX_ENDPOINT = 64, 256, 2048  # as the CRD's spec allows them
MAX_OBSERVED_SECRETS = 18  # an API key, 16 headersFromSecret, a CA bundle
MAX_STATUS_BYTES = 16 * 1024  # the whole status as JSON

# status keys that describe the latest probe; `status_fields` emits those that have a value,
# so a caller writing a merge patch nulls the rest.
LATEST_PROBE_KEYS = (
    "result",
    "reason",
    "message",
    "httpStatus",
    "code",
    "latencyMs",
    "lastValidationTime",
    "provider",
    "model",
    "endpoint",
    "validation",
    "requestId",
    "observedSecrets",
    "details",
    "modelLifecycle",
)


def rfc3339(moment: dt.datetime) -> str:
    """2026-11-22T10:30:00.123Z: UTC, milliseconds, Z."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _cut(text: str | None, limit: int) -> str | None:
    """Printable (`text.printable`) and at most `limit` characters."""
    if text is None:
        return text
    text = printable(text[: limit + 1])
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "\u2026"


def _details(details: Mapping[str, str]) -> dict[str, str]:
    """The first MAX_DETAILS entries, keys and values cut to length."""
    out: dict[str, str] = {}
    for key, value in details.items():
        if len(out) == MAX_DETAILS:
            break
        out[str(_cut(key, MAX_DETAIL_KEY))] = str(_cut(value, MAX_DETAIL_VALUE))
    return out


def status_fields(verdict: Verdict) -> dict[str, Any]:
    """The status keys for the latest probe, bounded; keys without a value are left out
    (see LATEST_PROBE_KEYS for the full list)."""
    fields: dict[str, Any] = {
        "result": verdict.result.value,
        "reason": verdict.reason.value,
        "message": _cut(verdict.message, MAX_MESSAGE),
        "httpStatus": verdict.http_status,
        "code": _cut(verdict.code, MAX_CODE),
        "latencyMs": verdict.latency_ms,
        "lastValidationTime": rfc3339(verdict.finished_at),
        # From the spec; an invalid one (admitted by an older CRD) may hold anything.
        "provider": _cut(verdict.provider, MAX_PROVIDER),
        "model": _cut(verdict.model, MAX_MODEL),
        "endpoint": _cut(verdict.endpoint, MAX_ENDPOINT),
        "validation": verdict.validation.as_status(),
        "requestId": _cut(verdict.request_id, MAX_CODE),
        "observedSecrets": [
            {
                "name": s.name,
                **({"resourceVersion": s.resource_version} if s.resource_version else {}),
            }
            for s in verdict.observed_secrets[:MAX_OBSERVED_SECRETS]
        ],
        "details": _details(verdict.details),
    }
    return {key: value for key, value in fields.items() if value not in (None, [], {})}


def size(status: Mapping[str, Any]) -> int:
    """Bytes of the status as JSON (what the API server stores)."""
    return len(json.dumps(status, ensure_ascii=False, separators=(",", ":")).encode())


def bounded(status: dict[str, Any]) -> dict[str, Any]:
    """The status, shrunk until it fits MAX_STATUS_BYTES: details go first (last entry first),
    then every message is cut shorter. Field caps make this rare; it is the guarantee."""
    if size(status) <= MAX_STATUS_BYTES:
        return status
    details = dict(status.get("details") or {})
    while details and size(status) > MAX_STATUS_BYTES:
        details.popitem()
        status = {**status, "details": details} if details else _without(status, "details")
    limit = MAX_MESSAGE
    while size(status) > MAX_STATUS_BYTES and limit > 64:
        limit //= 2
        status = {
            **status,
            **({"message": _cut(status["message"], limit)} if "message" in status else {}),
            "conditions": [
                {**c, "message": _cut(c.get("message"), limit)}
                for c in status.get("conditions") or []
            ],
        }
    return status


def _without(status: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != key}


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
        "message": _cut(message, MAX_MESSAGE),
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
    reason = verdict.reason
    # Damping tolerates a flaky probe of what was proven; a new spec or new Secret data has
    # proven nothing yet: it starts from a clean count and gets a plain verdict.
    same = same_subject(prev, verdict, generation)
    was_ready = (prev_ready or {}).get("status") if same else None
    earlier = int(prev.get("consecutiveFailures") or 0) if same else 0
    failures = 0 if reason is Reason.VALIDATED else earlier + 1
    threshold = verdict.validation.failure_threshold

    status: dict[str, Any] = status_fields(verdict)
    status["observedGeneration"] = generation
    status["consecutiveFailures"] = failures
    if reason is Reason.VALIDATED:
        status["lastSuccessTime"] = now
    elif prev.get("lastSuccessTime"):
        status["lastSuccessTime"] = prev["lastSuccessTime"]
    if requested_at is not None:
        status["lastHandledRequestedAt"] = requested_at[:MAX_REQUESTED_AT]
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
        # RateLimited before any verdict (or after a failure): keep what Ready said about
        # this spec and these Secrets; about a new one, nothing is known.
        ready = (
            str(was_ready or "Unknown"),
            str(((prev_ready or {}).get("reason") if same else None) or Reason.PENDING.value),
            f"Could not judge: {verdict.message}",
        )
    else:
        ready = ("False", reason.value, verdict.message)
    new_conditions = [_condition(prev_ready, READY, *ready, generation, now)]

    stalled = reason in STALLING or (reason in MISSING_REFERENCE and secret_grace_over)
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
    life = model_lifecycle(prev, verdict)
    if life:
        status["modelLifecycle"] = life
        if life["stage"] == "deprecated":
            new_conditions.append(
                _condition(
                    find(conditions, DEPRECATED),
                    DEPRECATED,
                    "True",
                    MODEL_DEPRECATED,
                    deprecation_message(verdict.model, life, verdict.finished_at),
                    generation,
                    now,
                )
            )
    status["conditions"] = new_conditions
    return bounded(status)


def lifecycle_event(
    prev: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> tuple[str, str, str] | None:
    """The Warning Event to emit when Deprecated=True first appears: (type, reason, message)."""
    old = find(list((prev or {}).get("conditions") or []), DEPRECATED)
    cur = find(list(new.get("conditions") or []), DEPRECATED)
    if cur is None or cur.get("status") != "True" or (old or {}).get("status") == "True":
        return None
    return ("Warning", MODEL_DEPRECATED, str(cur.get("message") or ""))


def same_subject(prev: Mapping[str, Any], verdict: Verdict, generation: int) -> bool:
    """Whether the previous status judged the same spec generation with the same Secret
    versions as this verdict (what damping may carry over)."""
    if prev.get("observedGeneration") != generation:
        return False
    before = {
        (str(item.get("name")), item.get("resourceVersion"))
        for item in prev.get("observedSecrets") or []
    }
    now = {(s.name, s.resource_version) for s in verdict.observed_secrets}
    return before == now


def merge_patch(prev: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) turning `prev` into `new`: a key that `new` lacks is
    nulled at every depth of nested maps (a failure after a success must not keep the
    success's `details.modelCount`); lists are replaced whole."""
    patch: dict[str, Any] = dict(new)
    for key, old in (prev or {}).items():
        if key not in new:
            patch[key] = None
        elif isinstance(old, Mapping) and isinstance(new[key], Mapping):
            patch[key] = merge_patch(old, new[key])
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
