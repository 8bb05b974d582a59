"""Anthropic probe: the Messages API's model list, model lookup and one tiny message.

Requests carry `x-api-key` and `anthropic-version`, as the official SDK sends them. The
model list is free and proves the key; GET /v1/models/{id} proves the model and resolves
aliases (claude-sonnet-4-0 -> claude-sonnet-4-20250514). An empty balance shows only when
tokens are spent, as a 400 invalid_request_error "Your credit balance is too low", so only
Inference can see it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from llmconn.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.reasons import Reason
from llmconn.spec import ValidationType

API_VERSION = "2023-06-01"
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
    if ctx.validation_type is ValidationType.MODEL:
        return await _get_model(ctx, model)
    return await _send_message(ctx, model)


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
    if resolved != model:
        return ok(
            f"The key is valid; model {model} is available (alias of {resolved}).",
            reply,
            resolvedModel=resolved[:128],
        )
    return ok(f"The key is valid; model {model} is available.", reply)


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
    if isinstance(code, str) and code in SPEND_LIMIT_CODES:
        message = str(error.get("message") or "")
        return ProbeOutcome(
            Reason.QUOTA_EXCEEDED,
            f"The organization reached its spend limit (HTTP {reply.status} {code})"
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
