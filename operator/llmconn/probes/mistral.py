"""Mistral AI: OpenAI-style API; the model must be in the list (it lists its -latest aliases)."""

from __future__ import annotations

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check

FLAVOUR = Flavour()


@registry.provider(
    "mistral",
    default_endpoint="https://api.mistral.ai/v1",
    api_path="/v1",  # the mistralai SDK takes https://api.mistral.ai
    title="Mistral AI",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
