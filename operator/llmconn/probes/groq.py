"""Groq: OpenAI-style API under /openai/v1; the model must be in the list."""

from __future__ import annotations

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check

FLAVOUR = Flavour()


@registry.provider(
    "groq",
    default_endpoint="https://api.groq.com/openai/v1",
    api_path="/openai/v1",  # the groq SDK takes https://api.groq.com
    title="Groq",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
