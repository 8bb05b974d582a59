"""Together AI: OpenAI-style API whose model list is a bare JSON array; the model must be in it."""

from __future__ import annotations

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check

FLAVOUR = Flavour()


@registry.provider(
    "together",
    default_endpoint="https://api.together.ai/v1",
    api_path="/v1",  # the together SDK takes https://api.together.ai
    title="Together AI",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
