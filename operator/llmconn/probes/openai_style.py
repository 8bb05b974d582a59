"""The probe every OpenAI-style provider shares: list models, check one, try one completion.

A provider module states how it differs from OpenAI's own API in a `Flavour` and registers
`check(ctx, flavour)`. The steps, by validation type:

- Connectivity: an authenticated GET {endpoint}/models (free), which must be the API's list.
- Model: also the model, by GET /models/{id} (OpenAI) or by its presence in the list (under
  the name the flavour looks it up by: OpenRouter's routing variants have no entry of their
  own). A model that is not listed is ModelNotFound, with the close names.
- Inference: also one POST /chat/completions with a 16-token budget and temperature 0; the
  answer must carry choices (a reply cut at the budget, or holding only reasoning, counts).
  Reasoning is turned down only where the flavour knows how. A model that refuses one of the
  budget fields as unsupported (400 unsupported_parameter/unsupported_value, as OpenAI's
  reasoning models do) is asked once more without it; a model served only by the Responses
  API (404 "only supported in v1/responses") is asked through POST /responses instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import Reply
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, ok
from llmconn.probes.errors import Classify, classify_error, has, parse_error, read_json

# Some (reasoning) models refuse budgets under 16 tokens; 16 tokens cost next to nothing.
TEST_MAX_TOKENS = 16
TEST_PROMPT = "Reply with the word OK."
# Characters a path segment may carry unescaped (RFC 3986), as the openai SDK quotes model ids.
_SEGMENT_SAFE = "!$&'()*+,;=:@"
# What spec.endpoint is for an OpenAI-style API, for messages.
BASE_URL = "the base URL the OpenAI SDK takes, usually ending in /v1"

AccountCheck = Callable[[ProbeContext], Awaitable[Mapping[str, str]]]
CompletionFields = Callable[[str], Mapping[str, Any]]
ListedAs = Callable[[str], str]
# Fields a model may refuse as unsupported, and what to send instead (None: nothing).
_REFUSABLE: dict[str, str | None] = {
    "temperature": None,
    "reasoning_effort": None,
    "max_tokens": "max_completion_tokens",
}
_UNSUPPORTED_CODES = frozenset({"unsupported_parameter", "unsupported_value"})


def plain_completion(model: str) -> dict[str, Any]:
    """The budget fields most OpenAI-style servers take. Reasoning tokens count against
    max_tokens there, so the budget bounds the cost even for a model that thinks."""
    return {"max_tokens": TEST_MAX_TOKENS, "temperature": 0}


@dataclass(frozen=True)
class Flavour:
    """How one provider's OpenAI-style API differs from the common case."""

    retrieve_model: bool = False  # GET /models/{id} checks the model (else: look in the list)
    listed_as: ListedAs = str  # the name a request model has in the list
    completion_fields: CompletionFields = plain_completion
    # Runs before the model list; returns details, raises ProbeFailure to end the probe.
    account: AccountCheck | None = None
    classify: Classify = classify_error  # the provider's reading of an error answer


async def check(ctx: ProbeContext, flavour: Flavour) -> ProbeOutcome:
    """Validate an OpenAI-style connection as deep as ctx.validation_type asks."""
    vtype = ctx.validation_type
    model = ctx.model if vtype is ValidationType.CONNECTIVITY else ctx.required_model()
    found: dict[str, str] = {}
    if flavour.account is not None:
        found.update(await flavour.account(ctx))
        ctx.found.details.update(found)  # kept even if a later step fails
    listing, ids = await list_models(ctx, flavour)
    found["modelCount"] = str(len(ids))
    ctx.found.details["modelCount"] = found["modelCount"]
    if vtype is ValidationType.CONNECTIVITY or model is None:
        return ok(
            f"The connection is reachable; the key can list {len(ids)} models.", listing, **found
        )

    life = await check_model(ctx, flavour, model, ids)
    aside = _aside(model, life)
    if vtype is ValidationType.MODEL:
        said = f"The connection is reachable; model {model} is available.{aside}"
        return dataclasses.replace(ok(said, listing, **found), lifecycle=life)

    answer, api = await complete(ctx, flavour, model)
    said = f"The connection is reachable; model {model} answered a test {api}.{aside}"
    return dataclasses.replace(ok(said, answer, **found), lifecycle=life)


async def list_models(ctx: ProbeContext, flavour: Flavour) -> tuple[Reply, list[str]]:
    """GET /models: proves the endpoint is the API and the key is accepted; returns the ids."""
    reply = await ctx.request("GET", "/models")
    # Together answers with a bare array; everyone else with {"object": "list", "data": [...]}.
    body = read_json(
        ctx,
        reply,
        "the model list",
        fits=lambda body: _models(body) is not None,
        expected="a `data` list of models",
        classify=lambda ctx, reply, what: _listing_error(ctx, reply, what, flavour.classify),
        endpoint=BASE_URL,
    )
    return reply, [item["id"] for item in _models(body) or () if isinstance(item.get("id"), str)]


def _models(body: Any) -> list[dict[str, Any]] | None:
    data = body.get("data") if isinstance(body, dict) else body
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        return None
    return data


def _listing_error(ctx: ProbeContext, reply: Reply, what: str, classify: Classify) -> ProbeOutcome:
    outcome = classify(ctx, reply, what)
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


async def check_model(
    ctx: ProbeContext, flavour: Flavour, model: str, ids: list[str]
) -> Lifecycle | None:
    """Returns when the model is there, with its shutdown date if the provider gives one;
    ModelNotFound otherwise, ModelRetired past its shutdown date."""
    if flavour.retrieve_model:
        reply = await ctx.request("GET", "/models/" + quote(model, safe=_SEGMENT_SAFE))
        body = read_json(
            ctx,
            reply,
            f"model {model}",
            fits=has("id", str),
            expected="a model object",
            classify=flavour.classify,
        )
        return _shutdown(model, body, reply)
    if is_listed(model, ids) or is_listed(flavour.listed_as(model), ids):
        return None
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


def _shutdown(model: str, body: dict[str, Any], reply: Reply) -> Lifecycle | None:
    """OpenAI's model object has `shutdown_date` (openai SDK `types/model.py`: "the date when
    the model will shut down, or null if not announced"): announced, the model is deprecated;
    past, it is retired."""
    when = body.get("shutdown_date")
    if not isinstance(when, str) or not when:
        return None
    life = Lifecycle(stage="deprecated", retires_at=when[:64])
    try:
        day = dt.date.fromisoformat(when[:10])
    except ValueError:
        return life
    if day <= dt.datetime.now(dt.UTC).date():
        raise ProbeFailure(
            ProbeOutcome(
                Reason.MODEL_RETIRED,
                f"Model {model} was shut down on {when[:64]}: requests naming it fail. Move "
                "spec.model to a current model.",
                http_status=reply.status,
                lifecycle=dataclasses.replace(life, stage="retired"),
            )
        )
    return life


def _aside(model: str, life: Lifecycle | None) -> str:
    if life is None:
        return ""
    return f" It is deprecated and shuts down on {life.retires_at}: plan the move."


def is_listed(model: str, ids: list[str]) -> bool:
    # Ollama and LM Studio list "llama3:latest" for what users call "llama3".
    return model in ids or f"{model}:latest" in ids


async def complete(ctx: ProbeContext, flavour: Flavour, model: str) -> tuple[Reply, str]:
    """One tiny chat completion (or Responses call); its answer must carry choices (output).
    Returns the answer and what it was ("completion" or "response")."""
    fields = dict(flavour.completion_fields(model))
    what = f"the test completion with model {model}"
    reply = await _chat(ctx, model, fields)
    # Asked once more for each field the model refuses: without it, or with its replacement.
    while (dropped := _refused_field(reply, fields)) is not None:
        value = fields.pop(dropped)
        if (instead := _REFUSABLE[dropped]) is not None:
            fields[instead] = value
        reply = await _chat(ctx, model, fields)
    if responses_only(reply):
        return await respond(ctx, model, flavour.classify), "response"
    read_json(
        ctx,
        reply,
        what,
        fits=_has_choices,
        expected="`choices`",
        classify=flavour.classify,
        endpoint=BASE_URL,
    )
    return reply, "completion"


async def _chat(ctx: ProbeContext, model: str, fields: Mapping[str, Any]) -> Reply:
    request = {"model": model, "messages": [{"role": "user", "content": TEST_PROMPT}], **fields}
    return await ctx.request("POST", "/chat/completions", json_body=request)


def _refused_field(reply: Reply, fields: Mapping[str, Any]) -> str | None:
    """The budget field a 400 refuses as unsupported (OpenAI: code unsupported_parameter or
    unsupported_value, `param` naming it), when the probe sent it."""
    if reply.status != 400:
        return None
    error = _error_object(reply)
    if error is None or error.get("code") not in _UNSUPPORTED_CODES:
        return None
    param = error.get("param")
    return param if isinstance(param, str) and param in fields and param in _REFUSABLE else None


def responses_only(reply: Reply) -> bool:
    """OpenAI's refusal of a model the Chat Completions API does not serve: 404 with
    param "model" and "only supported in v1/responses" (GET /models/{id} succeeds for it)."""
    error = _error_object(reply)
    return (
        reply.status in (400, 404)
        and error is not None
        and error.get("param") == "model"
        and "only supported in v1/responses" in str(error.get("message") or "")
    )


async def respond(
    ctx: ProbeContext,
    model: str,
    classify: Classify = classify_error,
    *,
    path: str = "/responses",
    params: Mapping[str, str] | None = None,
) -> Reply:
    """One tiny Responses API call (max_output_tokens 16, the API's least); an answer cut at
    the budget (status "incomplete") counts. A path that is not there is a mismatch between
    the model and the endpoint, named as InvalidConfiguration."""
    request = {"model": model, "input": TEST_PROMPT, "max_output_tokens": TEST_MAX_TOKENS}
    reply = await ctx.request("POST", path, json_body=request, params=params)
    if (reply.status == 404 and parse_error(reply.json()) is None) or _no_route(reply):
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"Model {model} is served only by the Responses API, and this endpoint has no "
                f"POST {path} (HTTP {reply.status}). Use an endpoint that serves the Responses "
                "API, or a model that the Chat Completions API serves.",
                http_status=reply.status,
            )
        )
    what = f"the test response with model {model}"
    read_json(ctx, reply, what, fits=_has_output, expected="`output`", classify=classify)
    return reply


def _no_route(reply: Reply) -> bool:
    # OpenAI-style servers answer an unknown path with "Invalid URL (POST /v1/responses)".
    error = _error_object(reply)
    return reply.status == 404 and error is not None and "Invalid URL" in str(error.get("message"))


def _error_object(reply: Reply) -> dict[str, Any] | None:
    body = reply.json()
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _has_output(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("output"), list)


def _has_choices(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("choices"), list) and bool(body["choices"])
    )


def _path(reply: Reply) -> str:
    return urlsplit(reply.url).path or "/"
