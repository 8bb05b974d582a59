"""xAI: OpenAI-style API at https://api.x.ai/v1, with a free key check first.

GET /v1/api-key (xAI REST API reference, "API key") describes the key the request carries:
`api_key_blocked`, `api_key_disabled`, `team_blocked` and its ACLs (`api-key:model:*`,
`api-key:endpoint:chat`, ...). A blocked or disabled key, or a blocked team, is
PermissionDenied before any other call. The model is checked with GET /v1/models/{id}.

Errors (xAI "Debugging Errors"): an incorrect key is a 400, not a 401, with the body
`{"code": "...", "error": "Incorrect API key provided: ..."}` (the shape as the openai SDK
shows it in user reports); 401 is a missing or malformed Authorization header; 403 a key or
team without permission or blocked. A team out of credits or at its spending limit is refused
with 403 or 429 "... has either used all available credits or reached its monthly spending
limit" (as users report it): QuotaExceeded, not a rate limit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmconn.model.reasons import Reason
from llmconn.net.exchange import Reply
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.probes.openai_style import Flavour, check

_BLOCKS = (
    ("api_key_blocked", "the key is blocked"),
    ("api_key_disabled", "the key is disabled"),
    ("team_blocked", "the key's team is blocked"),
)
_NO_CREDITS = ("used all available credits", "spending limit", "doesn't have any credits")


def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    body: Any = reply.json()
    text = body.get("error") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    code = code[:128] if isinstance(code, str) else None
    said = f": {text.rstrip('. ')}" if isinstance(text, str) and text else ""
    words = str(text).lower()
    if reply.status in (403, 429) and any(w in words for w in _NO_CREDITS):
        return ProbeOutcome(
            Reason.QUOTA_EXCEEDED,
            f"The xAI team is out of credits or at its spending limit (HTTP {reply.status})"
            f"{said}. Add credits or raise the limit in the xAI Console.",
            http_status=reply.status,
            code=code,
        )
    if reply.status == 400 and "api key" in words:
        return ProbeOutcome(
            Reason.INVALID_API_KEY,
            f"xAI rejected the API key (HTTP 400){said}; {ctx.key_hint}.",
            http_status=reply.status,
            code=code,
        )
    outcome = classify_error(ctx, reply, what)
    return dataclasses.replace(outcome, code=outcome.code or code)


async def key_check(ctx: ProbeContext) -> dict[str, str]:
    """GET /api-key: the key is known, not blocked or disabled, nor its team; its ACLs go into
    the details."""
    reply = await ctx.request("GET", "/api-key")
    body = read_json(
        ctx,
        reply,
        "the API key check",
        fits=has("acls", list),
        expected="an API key description",
        classify=classify,
    )
    refused = [said for field, said in _BLOCKS if body.get(field) is True]
    acls = ", ".join(str(acl) for acl in body["acls"])[:200]
    details = {"keyAcls": acls} if acls else {}
    if refused:
        ctx.found.details.update(details)
        raise ProbeFailure(
            ProbeOutcome(
                Reason.PERMISSION_DENIED,
                f"xAI knows the key, but {' and '.join(refused)}. Unblock it in the xAI Console "
                "or use another key.",
                http_status=reply.status,
            )
        )
    return details


FLAVOUR = Flavour(retrieve_model=True, account=key_check, classify=classify)


@registry.provider("xai", default_endpoint="https://api.x.ai/v1", api_path="/v1", title="xAI")
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
