"""OpenAI: GET /models/{id} checks the model; reasoning models get the fields they accept.

The name prefixes below only choose the first request: a model that refuses one of its fields
as unsupported is asked again without it (`openai_style.complete`), so a new reasoning model
does not fail on its name.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

from llmconn.model.reasons import Reason
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import Reply
from llmconn.probes.base import ProbeContext, ProbeOutcome, registry
from llmconn.probes.errors import classify_error, parse_error
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


# OpenAI's data residency guide: projects with EU data residency are served at this host only.
HOST, EU_HOST = "api.openai.com", "eu.api.openai.com"


def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    if (retired := _shut_down(reply, what)) is not None:
        return retired
    outcome = classify_error(ctx, reply, what)
    refused = outcome.reason in (Reason.INVALID_API_KEY, Reason.PERMISSION_DENIED)
    if refused and urlsplit(ctx.endpoint).hostname == HOST:
        hint = (
            f" A key of a project with EU data residency works only at https://{EU_HOST}/v1: "
            "if the key is one, set spec.endpoint to it."
        )
        return dataclasses.replace(outcome, message=outcome.message + hint)
    return outcome


def _shut_down(reply: Reply, what: str) -> ProbeOutcome | None:
    """A model OpenAI has shut down may stay listed and retrievable, with or without a
    `shutdown_date`; its completion answers 404 model_not_found "The model `m` has been
    deprecated" (as users report it, e.g. langflow-ai/langflow#1337). Read by those words:
    the code alone is also every unknown model's."""
    err = parse_error(reply.json())
    if reply.status != 404 or err is None or "has been deprecated" not in err.message:
        return None
    said = err.message.rstrip(". ")
    tag = f"HTTP 404{' ' + err.code if err.code else ''}"
    return ProbeOutcome(
        Reason.MODEL_RETIRED,
        f"OpenAI answered {what} with {tag}: {said}. The model is shut down though it may "
        "still be listed. Move spec.model to a current model.",
        http_status=404,
        code=err.code,
        lifecycle=Lifecycle(stage="retired"),
    )


FLAVOUR = Flavour(retrieve_model=True, completion_fields=completion_fields, classify=classify)


@registry.provider(
    "openai", default_endpoint="https://api.openai.com/v1", api_path="/v1", title="OpenAI"
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    return await check(ctx, FLAVOUR)
