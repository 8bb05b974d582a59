"""Ollama probe: the native API's model list, model details and one tiny generation.

Ollama has no authentication of its own; a key (as a Bearer token) and spec.headers go out
only when set, for an Ollama behind an authenticating proxy. The /v1 path is Ollama's
OpenAI-compatible API, which provider openai-compatible probes; this one speaks /api.

Inference asks /api/generate for at most 16 tokens (options.num_predict) without streaming.
num_predict caps every generated token, thinking included, so the probe does not send
`think: false`, which some models refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.net.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json

NUM_PREDICT = 16
PROMPT = "Reply with the single word OK."


@registry.provider(
    "ollama",
    default_endpoint="http://localhost:11434",
    auth=Auth.BEARER,
    title="Ollama",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    if ctx.validation_type is ValidationType.CONNECTIVITY:
        return await _list_models(ctx)
    model = ctx.required_model()
    if ctx.validation_type is ValidationType.MODEL:
        return await _show_model(ctx, model)
    return await _generate(ctx, model)


async def _list_models(ctx: ProbeContext) -> ProbeOutcome:
    reply = await ctx.request("GET", "/api/tags")
    if reply.status == 404:
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"There is no Ollama model list at {ctx.endpoint}/api/tags (HTTP 404). "
            "spec.endpoint is Ollama's base URL without /v1 or /api, e.g. "
            "http://ollama:11434.",
            http_status=reply.status,
        )
    body = read_json(
        ctx, reply, "the model list", fits=has("models", list), expected="a `models` list"
    )
    count = str(len(body["models"]))
    return ok(f"Ollama answered; {count} models are pulled.", reply, modelCount=count)


async def _show_model(ctx: ProbeContext, model: str) -> ProbeOutcome:
    reply = await ctx.request("POST", "/api/show", json_body={"model": model})
    body = _read(ctx, reply, model, _shows_a_model, "model `details`")
    facts = body.get("details")
    details: dict[str, str] = {}
    if isinstance(facts, dict):
        for source, key in (
            ("parameter_size", "parameterSize"),
            ("quantization_level", "quantizationLevel"),
        ):
            if isinstance(facts.get(source), str):
                details[key] = facts[source][:64]
    return ok(f"Ollama answered; model {model} is pulled.", reply, **details)


async def _generate(ctx: ProbeContext, model: str) -> ProbeOutcome:
    reply = await ctx.request(
        "POST",
        "/api/generate",
        json_body={
            "model": model,
            "prompt": PROMPT,
            "stream": False,
            "options": {"num_predict": NUM_PREDICT},
        },
    )
    _read(ctx, reply, model, has("response", str), "a `response`")
    return ok(f"Model {model} answered a {NUM_PREDICT}-token test generation.", reply)


def _shows_a_model(body: Any) -> bool:
    return isinstance(body, dict) and any(
        isinstance(body.get(k), dict) for k in ("details", "model_info")
    )


def _read(
    ctx: ProbeContext, reply: Reply, model: str, fits: Callable[[Any], bool], expected: str
) -> Any:
    return read_json(ctx, reply, f"model {model}", fits=fits, expected=expected, classify=_classify)


def _classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    model = ctx.model or ""
    body = reply.json()
    error = body.get("error") if isinstance(body, dict) else None
    if reply.status == 404 and isinstance(error, str) and "not found" in error.lower():
        # {"error": "model 'x' not found"}; /api/generate adds ", try pulling it first".
        return ProbeOutcome(
            Reason.MODEL_NOT_FOUND,
            f"Model {model} is not pulled on this Ollama (HTTP 404: {error[:200]}). "
            f"Run `ollama pull {model}` there, or fix spec.model.",
            http_status=reply.status,
        )
    return classify_error(ctx, reply, what)
