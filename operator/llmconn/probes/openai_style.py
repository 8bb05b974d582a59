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

from llmconn.probes.base import (
    REQUEST_ID_HEADERS,
    ProbeContext,
    ProbeFailure,
    ProbeOutcome,
    Reply,
    ok,
)
from llmconn.probes.errors import classify_error, parse_error
from llmconn.reasons import Reason
from llmconn.spec import ValidationType

# Some (reasoning) models refuse budgets under 16 tokens; 16 tokens cost next to nothing.
TEST_MAX_TOKENS = 16
TEST_PROMPT = "Reply with the word OK."
# Characters a path segment may carry unescaped (RFC 3986), as the openai SDK quotes model ids.
_SEGMENT_SAFE = "!$&'()*+,;=:@"

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
        ctx.details.update(found)  # kept even if a later step fails
    listing, ids = await list_models(ctx)
    found["modelCount"] = str(len(ids))
    ctx.details["modelCount"] = found["modelCount"]
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
    body = read_json(ctx, reply, "the model list", listing=True)
    # Together answers with a bare array; everyone else with {"object": "list", "data": [...]}.
    data = body.get("data") if isinstance(body, dict) else body
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise unexpected(
            reply,
            f"The model list (GET {_path(reply)}) answered HTTP {reply.status} with JSON that "
            "has no `data` list of models: this is not an OpenAI-style API. Check spec.endpoint "
            "(the base URL the OpenAI SDK takes, usually ending in /v1).",
        )
    return reply, [item["id"] for item in data if isinstance(item.get("id"), str)]


async def check_model(ctx: ProbeContext, flavour: Flavour, model: str, ids: list[str]) -> bool:
    """True when the model is there, False when it is merely unlisted (and that is allowed);
    ModelNotFound otherwise."""
    if flavour.retrieve_model:
        reply = await ctx.request("GET", "/models/" + quote(model, safe=_SEGMENT_SAFE))
        body = read_json(ctx, reply, f"model {model}")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise unexpected(
                reply,
                f"GET {_path(reply)} answered HTTP {reply.status} without a model object. "
                "Check spec.endpoint.",
            )
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
    body = read_json(ctx, reply, f"the test completion with model {model}")
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        raise unexpected(
            reply,
            f"The test completion with model {model} answered HTTP {reply.status} without "
            "choices: this is not an OpenAI-style chat completion. Check spec.endpoint.",
        )
    return reply


def read_json(ctx: ProbeContext, reply: Reply, what: str, *, listing: bool = False) -> Any:
    """The answer's JSON when it is a success; raises the classified error otherwise, including
    an error body sent with HTTP 200 and a 200 that is not JSON (HTML, truncated)."""
    body = reply.json()
    _note_body_request_id(ctx, reply, body)
    if 200 <= reply.status < 300 and body is not None and parse_error(body) is None:
        return body
    outcome = classify_error(ctx, reply, what)
    if listing and outcome.reason is Reason.MODEL_NOT_FOUND:
        # No model was named: "not found" on the list means the path is wrong (OpenAI answers
        # an unknown path with a JSON error, so the body alone cannot tell).
        err = parse_error(body)
        said = f": {err.message.rstrip('. ')}" if err and err.message else ""
        outcome = ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"The model list (GET {_path(reply)}) does not exist at this endpoint (HTTP "
            f"{reply.status}{said}). Check spec.endpoint: the base URL the OpenAI SDK takes, "
            "usually ending in /v1.",
            http_status=outcome.http_status,
            code=outcome.code,
        )
    raise ProbeFailure(outcome)


def unexpected(reply: Reply, message: str) -> ProbeFailure:
    return ProbeFailure(ProbeOutcome(Reason.UNEXPECTED_RESPONSE, message, http_status=reply.status))


def _note_body_request_id(ctx: ProbeContext, reply: Reply, body: Any) -> None:
    # DashScope and Mistral put the request id in the error body rather than in a header.
    if any(name in reply.headers for name in REQUEST_ID_HEADERS):
        return
    if isinstance(body, dict) and isinstance(body.get("request_id"), str) and body["request_id"]:
        ctx.request_id = body["request_id"][:128]


def _path(reply: Reply) -> str:
    return urlsplit(reply.url).path or "/"
