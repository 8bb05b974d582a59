"""Groq: OpenAI-style API under /openai/v1; the model must be in the list."""

from __future__ import annotations

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check

FLAVOUR = Flavour()


@registry.provider("groq", default_endpoint="https://api.groq.com/openai/v1", title="Groq")
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
