"""A loopback server speaking the Gemini API's dialect (generativelanguage, v1beta).

It serves GET {prefix}/models, GET {prefix}/models/{model} and
POST {prefix}/models/{model}:generateContent. Keys are read from `x-goog-api-key` or the
`key` query parameter, as Google does. Errors have Google's shape
`{"error":{"code","message","status","details":[...]}}`: a bad key is a 400
INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID, a missing key a 403 for
"unregistered callers", a 429 carries QuotaFailure and RetryInfo details. Paths outside the
prefix get the front end's HTML 404. Thinking-only models refuse a thinking budget under
128. `state.behaviour` selects a failure to play.

Thinking, per generation (google-genai `types.py`, ThinkingConfig: `thinking_level` is for
Gemini 3 and later, and "Starting from Gemini 3.5 models, the old thinking_budget will no
longer be supported"; ThinkingLevel is MINIMAL, LOW, MEDIUM or HIGH, sent by the SDK as those
names): Gemini 3.5 and later refuse `thinkingBudget`, Gemini 3 models refuse both fields at
once, and 2.x models refuse `thinkingLevel`. The wording of those 400s is ours: not
confirmed from a primary source.

Request fields are read under both spellings, `thinkingBudget` and `thinking_budget`: the
API parses proto3 JSON, whose parsers accept the lowerCamelCase name and the proto field name
alike (the protobuf JSON mapping), and google-genai sends the inside of `thinkingConfig` in
snake case (`models.py`, `_GenerateContentConfig_to_mldev` copies `thinking_config` as it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.recording import DialectState

API_KEY = "AIzaSyLoopbackTestKey0123456789abcdefg"
PREFIX = "/v1beta"
MODELS = [
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "gemini-3.5-flash",
    "text-embedding-004",
]
THINKING_ONLY = frozenset({"gemini-2.5-pro"})
MIN_BUDGET = 128

BEHAVIOURS = frozenset(
    {
        "ok",
        "region",  # 400 FAILED_PRECONDITION: location not supported / enable billing
        "service_disabled",  # 403 PERMISSION_DENIED reason SERVICE_DISABLED
        "rate_limited",  # 429 RESOURCE_EXHAUSTED, per-minute quota, RetryInfo 21s
        "no_quota",  # 429 RESOURCE_EXHAUSTED with quota limit 0 for the model
        "unavailable",  # 503 UNAVAILABLE "The model is overloaded"
        "html",
        "invalid_json",
        "wrong_shape",
    }
)


@dataclass
class GeminiState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    api_key: str = API_KEY
    models: list[str] = field(default_factory=lambda: list(MODELS))
    thinking_only: frozenset[str] = THINKING_ONLY
    retry_delay: str = "21s"


def _error(status: int, code: str, message: str, details: list[Any] | None = None) -> Response:
    err: dict[str, Any] = {"code": status, "message": message, "status": code}
    if details:
        err["details"] = details
    return JSONResponse({"error": err}, status_code=status)


def _model(name: str) -> dict[str, Any]:
    embedding = "embedding" in name
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["embedContent"]
        if embedding
        else ["generateContent", "countTokens"],
    }


def make_app(
    *,
    api_key: str = API_KEY,
    models: list[str] | None = None,
    behaviour: str = "ok",
    prefix: str = PREFIX,
) -> Starlette:
    state = GeminiState(api_key=api_key)
    if models is not None:
        state.models = list(models)
    state.reset(behaviour)

    def gate(request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
            )
        if key != state.api_key:
            return _error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": "API key not valid. Please pass a valid API key.",
                    },
                ],
            )
        match state.behaviour:
            case "region":
                return _error(
                    400, "FAILED_PRECONDITION", "User location is not supported for the API use."
                )
            case "service_disabled":
                return _error(
                    403,
                    "PERMISSION_DENIED",
                    "Generative Language API has not been used in project 123456 before or it "
                    "is disabled.",
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "SERVICE_DISABLED",
                            "domain": "googleapis.com",
                        }
                    ],
                )
            case "rate_limited" | "no_quota":
                limit = "0" if state.behaviour == "no_quota" else "5"
                return _error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing "
                    "details. For more information on this error, head to: "
                    "https://ai.google.dev/gemini-api/docs/rate-limits. * Quota exceeded for "
                    "metric: generativelanguage.googleapis.com/generate_content_free_tier_"
                    f"requests, limit: {limit}, model: gemini-2.5-pro",
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": "generativelanguage.googleapis.com/"
                                    "generate_content_free_tier_requests",
                                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"
                                    "-FreeTier",
                                    "quotaDimensions": {
                                        "location": "global",
                                        "model": "gemini-2.5-pro",
                                    },
                                    "quotaValue": limit,
                                }
                            ],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.Help",
                            "links": [
                                {"description": "Learn more", "url": "https://ai.google.dev"}
                            ],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": state.retry_delay,
                        },
                    ],
                )
            case "unavailable":
                return _error(
                    503, "UNAVAILABLE", "The model is overloaded. Please try again later."
                )
            case "html":
                return Response(
                    "<!DOCTYPE html><html><body>Sign in - Google Accounts</body></html>",
                    media_type="text/html",
                )
            case "invalid_json":
                return Response('{"models": [{"name": ', media_type="application/json")
            case "wrong_shape":
                return JSONResponse({"kind": "discovery#restDescription"})
        return None

    def not_found(model: str) -> Response:
        return _error(
            404,
            "NOT_FOUND",
            f"models/{model} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods.",
        )

    async def handle(request: Request) -> Response:
        seen = await state.record(request)
        body = seen.body
        path = request.url.path
        if not path.startswith(prefix + "/"):
            return Response(
                "<!DOCTYPE html><html lang=en><title>Error 404 (Not Found)!!1</title>"
                f"<p>The requested URL <code>{path}</code> was not found on this server.",
                status_code=404,
                media_type="text/html; charset=UTF-8",
            )
        if refused := gate(request):
            return refused
        rest = path[len(prefix) + 1 :]
        if rest == "models" and request.method == "GET":
            return list_models(request)
        if not rest.startswith("models/"):
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        name, _, method = rest.removeprefix("models/").partition(":")
        if request.method == "GET" and not method:
            if name not in state.models:
                return not_found(name)
            return JSONResponse(_model(name))
        if request.method == "POST" and method == "generateContent":
            return generate(name, body)
        return _error(404, "NOT_FOUND", "Requested entity was not found.")

    def list_models(request: Request) -> Response:
        size = int(request.query_params.get("pageSize", "50"))
        start = int(request.query_params.get("pageToken") or 0)
        page = state.models[start : start + size]
        body: dict[str, Any] = {"models": [_model(m) for m in page]}
        if start + size < len(state.models):
            body["nextPageToken"] = str(start + size)
        return JSONResponse(body)

    def generate(name: str, body: Any) -> Response:
        if name not in state.models or "embedding" in name:
            return not_found(name)
        if not isinstance(body, dict) or not body.get("contents"):
            return _error(
                400,
                "INVALID_ARGUMENT",
                "* GenerateContentRequest.contents: contents is not specified",
            )
        config = _field(body, "generationConfig") or {}
        thinking = _field(config, "thinkingConfig") or {}
        budget = _field(thinking, "thinkingBudget")
        refused = _thinking_refused(name, thinking)
        if refused is not None:
            return _error(400, "INVALID_ARGUMENT", refused)
        if name in state.thinking_only and budget is not None and budget < MIN_BUDGET:
            return _error(
                400,
                "INVALID_ARGUMENT",
                f"Budget {budget} is invalid. This model only works in thinking mode.",
            )
        state.generated += 1
        return JSONResponse(
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": "OK"}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 8,
                    "candidatesTokenCount": 1,
                    "totalTokenCount": 9,
                },
                "modelVersion": name,
                "responseId": f"loopback-{state.generated}",
            }
        )

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
    app.state.dialect = state
    return app


def _field(message: Any, name: str) -> Any:
    """A proto3 JSON field under its lowerCamelCase name or its proto (snake_case) name."""
    if not isinstance(message, dict):
        return None
    if name in message:
        return message[name]
    return message.get(re.sub(r"[A-Z]", lambda upper: "_" + upper[0].lower(), name))


def _thinking_refused(name: str, thinking: dict[str, Any]) -> str | None:
    """Why a model refuses this thinkingConfig (see the module doc), or None."""
    version = name.removeprefix("gemini-").split("-")[0]
    try:
        generation = float(version)
    except ValueError:
        return None
    level_value = _field(thinking, "thinkingLevel")
    budget = _field(thinking, "thinkingBudget") is not None
    level = level_value is not None
    if generation >= 3.5 and budget:
        return "thinking_budget is not supported for this model. Use thinking_level instead."
    if generation >= 3 and budget and level:
        return "Only one of thinking_budget and thinking_level can be set."
    if generation < 3 and level:
        return "Thinking level is not supported for this model."
    if level and level_value not in ("MINIMAL", "LOW", "MEDIUM", "HIGH"):
        return (
            f"Invalid value at 'generation_config.thinking_config.thinking_level' ({level_value})"
        )
    return None
