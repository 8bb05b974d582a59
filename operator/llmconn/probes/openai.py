"""OpenAI: GET /models/{id} checks the model; reasoning models get the fields they accept."""

from __future__ import annotations

from typing import Any

from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.openai_style import TEST_MAX_TOKENS, Flavour, check

# o-series and gpt-5 models think before answering; they refuse max_tokens and any temperature
# but 1. "low" is the least reasoning_effort every one of them accepts ("minimal" and "none"
# exist only on some). The gpt-5 chat models do not reason.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def completion_fields(model: str) -> dict[str, Any]:
    base = model.removeprefix("ft:")  # fine-tuned models: ft:<base>:<org>::<id>
    if base.startswith(_REASONING_PREFIXES) and "-chat" not in base:
        return {"max_completion_tokens": TEST_MAX_TOKENS, "reasoning_effort": "low"}
    return {"max_completion_tokens": TEST_MAX_TOKENS, "temperature": 0}


FLAVOUR = Flavour(retrieve_model=True, completion_fields=completion_fields)


@registry.provider("openai", default_endpoint="https://api.openai.com/v1", title="OpenAI")
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
