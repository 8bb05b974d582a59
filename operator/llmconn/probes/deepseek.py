"""DeepSeek: OpenAI-style API with the balance in the details; the model must be in the list.

DeepSeek's list-models reference (GET /models) lists the models it serves (deepseek-chat and
deepseek-reasoner), so a name that is not listed is ModelNotFound, with the close names.

`deepseek-chat` answers without thinking and `deepseek-reasoner` always thinks; there is no
knob to turn reasoning off, so the 16-token budget (which counts the reasoning) bounds the cost.
"""

from __future__ import annotations

from llmconn.model.reasons import Reason
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check


async def balance(ctx: ProbeContext) -> dict[str, str]:
    """GET /user/balance, best-effort: mirrors and gateways lack it, so any failure is ignored
    (a bad key is then reported by the model list). An answer saying the balance cannot pay
    for calls is QuotaExceeded: the model list stays free, only completions would fail (402)."""
    try:
        reply = await ctx.request("GET", "/user/balance")
    except Exception:  # whatever broke, the model list meets it next and names it
        return {}
    body = reply.json()
    if reply.status != 200 or not isinstance(body, dict):
        return {}
    infos = body.get("balance_infos")
    amounts = [
        f"{info['total_balance']} {info['currency']}"
        for info in (infos if isinstance(infos, list) else [])
        if isinstance(info, dict)
        and isinstance(info.get("total_balance"), str | int | float)
        and isinstance(info.get("currency"), str)
    ]
    details = {"balance": ", ".join(amounts)[:64]} if amounts else {}
    if body.get("is_available") is False:
        ctx.found.details.update(details)
        shown = details.get("balance", "no balance")
        raise ProbeFailure(
            ProbeOutcome(
                Reason.QUOTA_EXCEEDED,
                f"The DeepSeek account balance ({shown}) cannot pay for API calls; the key "
                "works. Top up the account.",
                http_status=reply.status,
            )
        )
    return details


FLAVOUR = Flavour(account=balance)


@registry.provider("deepseek", default_endpoint="https://api.deepseek.com", title="DeepSeek")
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
