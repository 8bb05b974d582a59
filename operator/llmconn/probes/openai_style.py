"""The probe every OpenAI-style provider shares: list models, check one, try one completion.

A provider module states how it differs from OpenAI's own API in a `Flavour` and registers
`check(ctx, flavour)`. The steps, by validation type:

- Connectivity: an authenticated GET {endpoint}/models (free), which must be the API's list.
- Model: also the model, by GET /models/{id} (OpenAI) or by its presence in the list. Where a
  provider serves aliases it does not list (DeepSeek), "not listed" is said, not failed.
- Inference: also one POST /chat/completions with a 16-token budget and temperature 0; the
  answer must carry choices. Reasoning is turned down only where the flavour knows how.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.exchange import Reply
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, ok
from llmconn.probes.errors import classify_error, has, parse_error, read_json
from llmconn.reasons import Reason
from llmconn.spec import ValidationType

# Some (reasoning) models refuse budgets under 16 tokens; 16 tokens cost next to nothing.
TEST_MAX_TOKENS = 16
TEST_PROMPT = "Reply with the word OK."
# Characters a path segment may carry unescaped (RFC 3986), as the openai SDK quotes model ids.
_SEGMENT_SAFE = "!$&'()*+,;=:@"
# What spec.endpoint is for an OpenAI-style API, for messages.
BASE_URL = "the base URL the OpenAI SDK takes, usually ending in /v1"

AccountCheck = Callable[[ProbeContext], Awaitable[Mapping[str, str]]]
CompletionFields = Callable[[str], Mapping[str, Any]]


def plain_completion(model: str) -> dict[str, Any]:
    """The budget fields most OpenAI-style servers take. Reasoning tokens count against
    max_tokens there, so the budget bounds the cost even for a model that thinks."""
    return {"max_tokens": TEST_MAX_TOKENS, "temperature": 0}


@dataclass(frozen=True)
class Flavour:
    """How one provider's OpenAI-style API differs from the common case."""

    retrieve_model: bool = False  # GET /models/{id} checks the model (else: look in the list)
    unlisted_ok: bool = False  # the provider serves models it does not list (aliases)
    completion_fields: CompletionFields = plain_completion
    # Runs before the model list; returns details, raises ProbeFailure to end the probe.
    account: AccountCheck | None = None


async def check(ctx: ProbeContext, flavour: Flavour) -> ProbeOutcome:
    """Validate an OpenAI-style connection as deep as ctx.validation_type asks."""
    vtype = ctx.validation_type
    model = ctx.model if vtype is ValidationType.CONNECTIVITY else ctx.required_model()
    found: dict[str, str] = {}
    if flavour.account is not None:
        found.update(await flavour.account(ctx))
        ctx.found.details.update(found)  # kept even if a later step fails
    listing, ids = await list_models(ctx)
    found["modelCount"] = str(len(ids))
    ctx.found.details["modelCount"] = found["modelCount"]
    if vtype is ValidationType.CONNECTIVITY or model is None:
        return ok(
            f"The connection is reachable; the key can list {len(ids)} models.", listing, **found
        )

    listed = await check_model(ctx, flavour, model, ids)
    if vtype is ValidationType.MODEL:
        if listed:
            return ok(f"The connection is reachable; model {model} is available.", listing, **found)
        return ok(
            f"Model {model} is not listed by the provider (aliases often are not); the key "
            "works. Use validation.type Inference to prove the model answers.",
            listing,
            **found,
        )

    answer = await complete(ctx, flavour, model)
    aside = "" if listed else f" (the provider does not list {model}, as with aliases)"
    return ok(
        f"The connection is reachable; model {model} answered a test completion{aside}.",
        answer,
        **found,
    )


async def list_models(ctx: ProbeContext) -> tuple[Reply, list[str]]:
    """GET /models: proves the endpoint is the API and the key is accepted; returns the ids."""
    reply = await ctx.request("GET", "/models")
    # Together answers with a bare array; everyone else with {"object": "list", "data": [...]}.
    body = read_json(
        ctx,
        reply,
        "the model list",
        fits=lambda body: _models(body) is not None,
        expected="a `data` list of models",
        classify=_listing_error,
        endpoint=BASE_URL,
    )
    return reply, [item["id"] for item in _models(body) or () if isinstance(item.get("id"), str)]


def _models(body: Any) -> list[dict[str, Any]] | None:
    data = body.get("data") if isinstance(body, dict) else body
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        return None
    return data


def _listing_error(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    outcome = classify_error(ctx, reply, what)
    if outcome.reason is not Reason.MODEL_NOT_FOUND:
        return outcome
    # No model was named: "not found" on the list means the path is wrong (OpenAI answers an
    # unknown path with a JSON error, so the body alone cannot tell).
    err = parse_error(reply.json())
    said = f": {err.message.rstrip('. ')}" if err and err.message else ""
    return ProbeOutcome(
        Reason.UNEXPECTED_RESPONSE,
        f"The model list (GET {_path(reply)}) does not exist at this endpoint (HTTP "
        f"{reply.status}{said}). Check spec.endpoint: {BASE_URL}.",
        http_status=outcome.http_status,
        code=outcome.code,
    )


async def check_model(ctx: ProbeContext, flavour: Flavour, model: str, ids: list[str]) -> bool:
    """True when the model is there, False when it is merely unlisted (and that is allowed);
    ModelNotFound otherwise."""
    if flavour.retrieve_model:
        reply = await ctx.request("GET", "/models/" + quote(model, safe=_SEGMENT_SAFE))
        read_json(ctx, reply, f"model {model}", fits=has("id", str), expected="a model object")
        return True
    if is_listed(model, ids):
        return True
    if flavour.unlisted_ok:
        return False
    near = difflib.get_close_matches(model, ids, n=3, cutoff=0.6)
    hint = f" Close names: {', '.join(near)}." if near else ""
    raise ProbeFailure(
        ProbeOutcome(
            Reason.MODEL_NOT_FOUND,
            f"Model {model} is not among the {len(ids)} models the provider lists for this "
            f"key.{hint} Check spec.model.",
            http_status=200,
        )
    )


def is_listed(model: str, ids: list[str]) -> bool:
    # Ollama and LM Studio list "llama3:latest" for what users call "llama3".
    return model in ids or f"{model}:latest" in ids


async def complete(ctx: ProbeContext, flavour: Flavour, model: str) -> Reply:
    """One tiny chat completion; its answer must carry choices."""
    request = {
        "model": model,
        "messages": [{"role": "user", "content": TEST_PROMPT}],
        **flavour.completion_fields(model),
    }
    reply = await ctx.request("POST", "/chat/completions", json_body=request)
    what = f"the test completion with model {model}"
    read_json(ctx, reply, what, fits=_has_choices, expected="`choices`", endpoint=BASE_URL)
    return reply


def _has_choices(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("choices"), list) and bool(body["choices"])
    )


def _path(reply: Reply) -> str:
    return urlsplit(reply.url).path or "/"
