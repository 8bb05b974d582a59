"""OpenRouter: GET /key checks the key (its model list is public), then the model list.

The /key answer's spending limit of the key (`limit`, in USD; null for none), what remains of
it, its expiry (`expires_at`) and the free-tier flag go into the details; its `label` holds
part of the key itself and is never copied. A key with nothing left of its limit still reaches
free models, so it is not a failure. The limit is the key's own ceiling, not the account's
credit balance (OpenRouter API reference, "Get current API key").

Routing variants (`openai/gpt-4o:nitro`, `:floor`, `:exacto`, `:online`, `:free`, ...) are
valid request models without a list entry of their own (OpenRouter docs, "Model variants"):
the model is looked up without its variant when the full name is not listed.
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
        details["keyLimit"] = "none" if data["limit"] is None else _number(data["limit"])
    if data.get("limit_remaining") is not None:
        details["keyLimitRemaining"] = _number(data["limit_remaining"])
    if isinstance(data.get("expires_at"), str):
        details["keyExpiresAt"] = data["expires_at"][:64]
    if isinstance(data.get("is_free_tier"), bool):
        details["freeTier"] = str(data["is_free_tier"]).lower()
    return {name: value for name, value in details.items() if value}


VARIANTS = ("free", "nitro", "floor", "exacto", "online", "thinking", "extended")


def without_variant(model: str) -> str:
    """openai/gpt-4o:nitro -> openai/gpt-4o; other names stay as given."""
    base, sep, variant = model.rpartition(":")
    return base if sep and base and variant in VARIANTS else model


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return f"{value:g}"


FLAVOUR = Flavour(account=key_info, listed_as=without_variant)


@registry.provider(
    "openrouter",
    default_endpoint="https://openrouter.ai/api/v1",
    api_path="/api/v1",
    title="OpenRouter",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
