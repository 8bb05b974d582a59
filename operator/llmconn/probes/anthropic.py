"""Anthropic probe: the Messages API's model list, model lookup and one tiny message.

Requests carry `x-api-key` and `anthropic-version` (the SDK's current one, anthropic
`_constants.py`; `x-api-key` is the documented header). The model list is free and proves the
key; GET /v1/models/{id} proves the model, resolves aliases (claude-sonnet-4-0 ->
claude-sonnet-4-20250514) and says where the model is in its life (anthropic
`types/model_info.py`: `lifecycle` active, deprecated or retired, `deprecated_at`,
`retires_at`). A retired model is ModelRetired; a deprecated one still validates, with its
dates. Inference looks the model up too before it spends a token.

An empty balance shows only when tokens are spent, as a 400 invalid_request_error "Your credit
balance is too low", so only Inference can see it; so does a reached spend limit, a 400 "You
have reached your specified API usage limits" (Anthropic's errors page: a 400 is also returned
when an organization or workspace spend limit is reached) or a 429 whose `details.error_code`
names one. `organization_on_hold` (400, anthropic `_error_classes.py`) is an organization
disabled by Anthropic: PermissionDenied. A 402 `billing_error` is QuotaExceeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json

API_VERSION = "2026-10-21"
LIST_LIMIT = "1000"  # the API's largest page: one page counts every model an account has
MAX_TOKENS = 16
PROMPT = "Reply with the single word OK."

# Monthly spend ceilings arrive as 429s; waiting minutes does not lift them, a human must.
SPEND_LIMIT_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)
SPEND_LIMIT_WORDS = ("specified api usage limits",)
ON_HOLD = "organization_on_hold"


@registry.provider(
    "anthropic",
    default_endpoint="https://api.anthropic.com",
    auth=Auth.X_API_KEY,
    title="Anthropic",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    if ctx.validation_type is ValidationType.CONNECTIVITY:
        return await _list_models(ctx)
    model = ctx.required_model()
    found = await _get_model(ctx, model)
    if ctx.validation_type is ValidationType.MODEL:
        return found
    sent = await _send_message(ctx, model)
    return ProbeOutcome(
        sent.reason,
        sent.message + _aside(found.lifecycle),
        http_status=sent.http_status,
        details={**found.details, **sent.details},
        lifecycle=found.lifecycle,
    )


async def _list_models(ctx: ProbeContext) -> ProbeOutcome:
    reply = await _call(ctx, "GET", "/v1/models", params={"limit": LIST_LIMIT})
    if reply.status == 404:
        return _wrong_endpoint(reply, ctx)
    body = _read(ctx, reply, "the model list", has("data", list), "a `data` list")
    count = f"{len(body['data'])}{'+' if body.get('has_more') else ''}"
    return ok(
        f"The Anthropic API accepted the key; {count} models are available.",
        reply,
        modelCount=count,
    )


async def _get_model(ctx: ProbeContext, model: str) -> ProbeOutcome:
    reply = await _call(ctx, "GET", f"/v1/models/{quote(model, safe='')}")
    body = _read(ctx, reply, f"model {model}", has("id", str), "a model `id`")
    resolved: str = body["id"]
    alias = f" (alias of {resolved})" if resolved != model else ""
    details = {"resolvedModel": resolved[:128]} if alias else {}
    life = lifecycle(body)
    if life is not None and life.stage == "retired":
        raise ProbeFailure(
            ProbeOutcome(
                Reason.MODEL_RETIRED,
                f"Model {model}{alias} is retired{_since(life.retires_at or life.deprecated_at)}"
                ": requests naming it fail. Move spec.model to a current model.",
                http_status=reply.status,
                details=details,
                lifecycle=life,
            )
        )
    return ProbeOutcome(
        Reason.VALIDATED,
        f"The key is valid; model {model} is available{alias}.{_aside(life)}",
        http_status=reply.status,
        details=details,
        lifecycle=life,
    )


def lifecycle(body: dict[str, Any]) -> Lifecycle | None:
    """The model's stage and dates, when it is not simply active."""
    stage = body.get("lifecycle")
    if stage not in ("deprecated", "retired"):
        return None
    return Lifecycle(
        stage=stage,
        deprecated_at=_date(body.get("deprecated_at")),
        retires_at=_date(body.get("retires_at")),
    )


def _date(value: Any) -> str | None:
    return value[:64] if isinstance(value, str) and value else None


def _since(when: str | None) -> str:
    return f" (since {when})" if when else ""


def _aside(life: Lifecycle | None) -> str:
    if life is None or life.stage != "deprecated":
        return ""
    when = f", retiring on {life.retires_at}" if life.retires_at else ""
    return f" It is deprecated{when}: plan the move to a current model."


async def _send_message(ctx: ProbeContext, model: str) -> ProbeOutcome:
    reply = await _call(
        ctx,
        "POST",
        "/v1/messages",
        json_body={
            "model": model,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    )
    body = _read(ctx, reply, f"model {model}", _is_message, "a `message` with `content`")
    details = {"servedModel": body["model"][:128]} if isinstance(body.get("model"), str) else {}
    return ok(f"Model {model} answered a {MAX_TOKENS}-token test message.", reply, **details)


def _is_message(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("type") == "message"
        and isinstance(body.get("content"), list)
    )


async def _call(
    ctx: ProbeContext,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    json_body: Any = None,
) -> Reply:
    # A version the user set in spec.headers wins over ours (they may need a newer one).
    user_set = any(name.lower() == "anthropic-version" for name in ctx.headers)
    headers = {} if user_set else {"anthropic-version": API_VERSION}
    return await ctx.request(method, path, params=params, json_body=json_body, headers=headers)


def _read(
    ctx: ProbeContext, reply: Reply, what: str, fits: Callable[[Any], bool], expected: str
) -> Any:
    return read_json(ctx, reply, what, fits=fits, expected=expected, classify=_classify)


def _classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    body = reply.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return classify_error(ctx, reply, what)
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, dict) else None
    message = str(error.get("message") or "")
    if code == ON_HOLD:
        return ProbeOutcome(
            Reason.PERMISSION_DENIED,
            f"Anthropic has put the organization on hold (HTTP {reply.status} {code})"
            f"{': ' + message if message else ''}. The key is valid; the organization's admins "
            "must resolve the hold with Anthropic.",
            http_status=reply.status,
            code=code,
        )
    spend_words = any(word in message.lower() for word in SPEND_LIMIT_WORDS)
    if (isinstance(code, str) and code in SPEND_LIMIT_CODES) or spend_words:
        code = code if isinstance(code, str) else None
        return ProbeOutcome(
            Reason.QUOTA_EXCEEDED,
            f"The organization reached its spend limit (HTTP {reply.status}"
            f"{' ' + code if code else ''})"
            f"{': ' + message if message else ''}. Raise the limit in the Anthropic Console "
            "or wait for the next billing period.",
            http_status=reply.status,
            code=code,
        )
    return classify_error(ctx, reply, what)


def _wrong_endpoint(reply: Reply, ctx: ProbeContext) -> ProbeOutcome:
    return ProbeOutcome(
        Reason.UNEXPECTED_RESPONSE,
        f"There is no model list at {ctx.endpoint}/v1/models (HTTP 404). spec.endpoint is the "
        "base URL without /v1, as the Anthropic SDK takes it: https://api.anthropic.com.",
        http_status=reply.status,
    )
