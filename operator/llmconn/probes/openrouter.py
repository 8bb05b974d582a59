"""OpenRouter: GET /key checks the key (its model list is public), then the model list.

The /key answer's credit limit, remaining credit and free-tier flag go into the details; its
`label` holds part of the key itself and is never copied. A key with no credit left still
reaches free models, so it is not a failure.
"""

from __future__ import annotations

from typing import Any

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.errors import has, read_json
from llmconn.probes.openai_style import Flavour, check


async def key_info(ctx: ProbeContext) -> dict[str, str]:
    reply = await ctx.request("GET", "/key")
    body = read_json(
        ctx,
        reply,
        "the key check (GET /key)",
        fits=has("data", dict),
        expected="key `data`",
        endpoint="https://openrouter.ai/api/v1",
    )
    data = body["data"]
    details: dict[str, str] = {}
    if "limit" in data:
        details["creditLimit"] = "unlimited" if data["limit"] is None else _number(data["limit"])
    if data.get("limit_remaining") is not None:
        details["creditRemaining"] = _number(data["limit_remaining"])
    if isinstance(data.get("is_free_tier"), bool):
        details["freeTier"] = str(data["is_free_tier"]).lower()
    return {name: value for name, value in details.items() if value}


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return f"{value:g}"


FLAVOUR = Flavour(account=key_info)


@registry.provider(
    "openrouter", default_endpoint="https://openrouter.ai/api/v1", title="OpenRouter"
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
