"""LLMConnection objects in the states GitOps health checks must tell apart (Argo CD's
health.lua and Flux's kstatus are tested against the same ones)."""

from __future__ import annotations

from typing import Any


def cond(kind: str, status: str, reason: str, message: str = "", gen: int = 3) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
        "lastTransitionTime": "2026-11-22T10:30:00Z",
    }


def connection(
    *conditions: dict[str, Any],
    generation: int = 3,
    observed: int | None = 3,
    suspend: bool | None = None,
    status: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """A connection at `generation` whose status (unless status=False) says `observed`."""
    obj: dict[str, Any] = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": "deepseek-prod", "namespace": "agents", "generation": generation},
        "spec": {"provider": "deepseek", "model": "deepseek-chat"},
    }
    if suspend is not None:
        obj["spec"]["suspend"] = suspend
    if status:
        obj["status"] = {"result": "success", "reason": "Validated", **fields}
        obj["status"]["conditions"] = list(conditions)
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def _deleting(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["deletionTimestamp"] = "2026-11-22T10:31:00Z"
    return obj


_READY = cond("Ready", "True", "Validated", "The connection is reachable.")

# Named states for tests that compare the health checks: each one a connection at generation 3.
SAMPLES: dict[str, dict[str, Any]] = {
    "no-status": connection(status=False),
    "empty-status": {**connection(status=False), "status": {}},
    "no-conditions": connection(),
    "ready": connection(_READY, latencyMs=142),
    "ready-tolerating-a-failure": connection(
        cond("Ready", "True", "Validated", "Last probe: Timeout, 1 of 3 tolerated."),
        result="failed",
        reason="Timeout",
    ),
    "first-validation-running": connection(
        cond("Ready", "Unknown", "Pending", "Validation in progress."),
        cond("Reconciling", "True", "Validating", "First validation in progress."),
    ),
    "pending": connection(cond("Ready", "Unknown", "Pending", "Not validated yet")),
    "rate-limited-before-a-verdict": connection(
        cond("Ready", "Unknown", "Pending", "Could not judge: rate limited"), result="unknown"
    ),
    "stalled": connection(
        cond("Ready", "False", "InvalidAPIKey", "The provider rejected the API key."),
        cond("Stalled", "True", "InvalidAPIKey", "The provider rejected the API key."),
        result="failed",
        reason="InvalidAPIKey",
    ),
    "stalled-while-ready": connection(
        _READY, cond("Stalled", "True", "QuotaExceeded", "No credit.")
    ),
    "not-ready-transient": connection(
        cond("Ready", "False", "Timeout", "3 failures in a row: Timeout"), result="failed"
    ),
    "spec-changed": connection(_READY, generation=4),
    "ready-condition-of-old-spec": connection({**_READY, "observedGeneration": 2}),
    "stalled-on-old-spec": connection(
        cond("Ready", "False", "InvalidAPIKey", gen=2),
        cond("Stalled", "True", "InvalidAPIKey", gen=2),
        generation=3,
        observed=2,
    ),
    "suspended": connection(
        cond("Ready", "Unknown", "Suspended", "Validation is suspended"), suspend=True
    ),
    "deleting": _deleting(connection(_READY)),
}
