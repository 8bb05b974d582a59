"""A model's place in its provider's life, as the status shows it: status.modelLifecycle, the
retirement date it announces, and the words of the Deprecated condition.

Pure functions over a verdict and the previous status; status.py builds the condition, the
writer exports the retirement as a gauge and posts the Event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from llmconn.model.reasons import Reason
from llmconn.model.verdict import Verdict

MAX_DATE = 64  # modelLifecycle dates, as the provider wrote them


def _date(text: str | None) -> str | None:
    return None if text is None else text[:MAX_DATE]


def model_lifecycle(prev: Mapping[str, Any], verdict: Verdict) -> dict[str, str]:
    """status.modelLifecycle after this verdict: what the probe saw of the model; a probe that
    did not reach the model (a timeout, a rate limit) keeps what the last one saw of it."""
    if verdict.lifecycle is not None:
        found = {
            "stage": verdict.lifecycle.stage,
            "deprecatedAt": _date(verdict.lifecycle.deprecated_at),
            "retiresAt": _date(verdict.lifecycle.retires_at),
        }
        return {key: value for key, value in found.items() if value}
    reached = verdict.reason in (Reason.VALIDATED, Reason.MODEL_NOT_FOUND)
    kept = prev.get("modelLifecycle")
    if reached or prev.get("model") != verdict.model or not isinstance(kept, Mapping):
        return {}
    return {str(key): str(value) for key, value in kept.items()}


def retirement(life: Mapping[str, Any]) -> dt.datetime | None:
    """When the model retires, from status.modelLifecycle.retiresAt (RFC 3339 or a date)."""
    text = str(life.get("retiresAt") or "")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def retirement_timestamp(status: Mapping[str, Any] | None) -> float | None:
    """Unix time the model retires, for llmconn_model_retirement_timestamp_seconds; None
    when the status announces no retirement."""
    life = (status or {}).get("modelLifecycle")
    when = retirement(life) if isinstance(life, Mapping) else None
    return when.timestamp() if when is not None else None


def deprecation_message(model: str | None, life: Mapping[str, Any], now: dt.datetime) -> str:
    """'Model m is deprecated; it retires on 2027-02-19T00:00:00Z, in 81 days.'"""
    name = f"Model {model}" if model else "The model"
    when = retirement(life)
    if when is None:
        return f"{name} is deprecated; no retirement date is announced. Plan the move."
    days = (when - now).total_seconds() / 86400
    shown = life.get("retiresAt")
    if days < 0:
        return (
            f"{name} is deprecated and its retirement on {shown} is overdue by "
            f"{int(-days)} days. Move spec.model to a current model."
        )
    count = int(days)
    return (
        f"{name} is deprecated; it retires on {shown}, in {count} "
        f"day{'' if count == 1 else 's'}. Move spec.model to a current model before then."
    )
