"""OpenAI-compatible servers (vLLM, LM Studio, LiteLLM, Ollama's /v1): the model must be listed.

Not every such server implements GET /models/{id}; every one lists its models.
"""

from __future__ import annotations

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check

FLAVOUR = Flavour()


@registry.provider(
    "openai-compatible",
    default_endpoint=None,
    title="OpenAI-compatible server (vLLM, LM Studio, LiteLLM, Ollama /v1, gateways)",
    oauth=True,
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
