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
