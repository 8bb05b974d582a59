"""A loopback server speaking the OpenAI dialect and the variants of providers that copy it.

`make_app(dialect)` builds a Starlette app serving GET /models, GET /models/{id}, POST
/chat/completions (plus DeepSeek's GET /user/balance, OpenRouter's GET /key and xAI's GET
/api-key) under a path
prefix. What it answers is a `Dialect`, read on every request, so a test swaps it between calls:
which keys are accepted, which models are listed or only served (DeepSeek aliases), which
canned failure answers instead (`behaviour`: no quota, rate limit, HTML, ...), in which
provider's flavour. Requests are recorded in `dialect.seen` so tests can assert on what the
server received.

Run `python tests/servers/openai_dialect.py --port 8000 --key sk-demo --model gpt-4o` to
serve it for the demo or the benchmark.

Sources, where an answer is more than the common OpenAI shape:
- Chat completion and Responses objects: openai Python SDK 3.54.0 `types/chat/chat_completion.py`
  (`finish_reason` "length" when the budget ends the answer) and `types/responses/response.py`
  (`status` "incomplete" with `incomplete_details.reason` "max_output_tokens").
- Reasoning models' refusals (400, `param` naming the field, `code` unsupported_parameter or
  unsupported_value): the openai SDK's error shape (`_exceptions.py` reads `code` and `param`
  of `error`); the wording is OpenAI's as users report it, not confirmed from a primary source.
- A model served only by the Responses API: 404 with `param` "model" and "only supported in
  v1/responses and not in v1/chat/completions": as reported, not confirmed from a primary
  source (OpenAI publishes no error catalogue).
- DeepSeek: list-models reference (GET /models lists deepseek-chat and deepseek-reasoner).
- DashScope: Model Studio error codes (compatible mode: 401 invalid_api_key; 429
  Throttling.AllocationQuota; 400 when a Qwen3 thinking model is called without streaming and
  `enable_thinking` is not false; Arrearage for an unpaid account); Model Studio rate limiting
  ("typically resumes within one minute").
- Mistral: 401 with `{"detail": "Unauthorized"}` or an empty body, as its gateway answers
  (not confirmed from a primary source; the mistralai SDK treats any 401 as an error without
  reading the body).
- OpenRouter: API reference "Get current API key" (`limit`, `limit_remaining`, `usage`,
  `is_free_tier`; `expires_at` as reported, not confirmed here) and "Model variants"
  (`:nitro`, `:floor`, `:exacto`, `:online`, `:free` route a listed model).
- xAI: REST API reference "API key" (GET /v1/api-key: `redacted_api_key`, `acls`,
  `api_key_blocked`, `api_key_disabled`, `team_blocked`, ...; 400 for an invalid key) and
  "Debugging Errors" (400 for an incorrect API key, 403 for a blocked key or team, 404 for a
  model that does not exist). The error body `{"code": ..., "error": ...}` and its wording
  ("Incorrect API key provided: xa***yz. You can obtain an API key from
  https://console.x.ai.", "... has either used all available credits or reached its monthly
  spending limit ...") are as the openai SDK shows them in user reports, not confirmed from a
  primary source.
- OpenAI, a model shut down but still listed: chat completions answer 404 `model_not_found`
  "The model `text-davinci-003` has been deprecated, learn more here:
  https://platform.openai.com/docs/deprecations" (as users report it: langflow-ai/langflow#1337,
  hkjang/node-red-contrib-openai#7); GET /models and GET /models/{id} still answer, with or
  without a `shutdown_date`.
- LiteLLM proxy: `litellm/exceptions.py` BudgetExceededError ("Budget has been exceeded!
  Current cost: ..., Max budget: ...", status 429 in current releases) surfaced by the proxy as
  error type `budget_exceeded`; older proxies sent it with HTTP 400.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

if not __package__:  # run as a file (make demo, make bench): `servers` is not importable yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers.recording import DialectState

FLAVOURS = (
    "openai",
    "vllm",
    "deepseek",
    "dashscope",
    "mistral",
    "groq",
    "openrouter",
    "together",
    "xai",
)
ROUTES = frozenset({"models", "model", "chat", "balance", "key", "api_key"})
FAULTS = (
    "no_quota",  # the flavour's out-of-credit answer (429 insufficient_quota, 402, Arrearage)
    "quota_legacy",  # older OpenAI body: 429 with code null and type insufficient_quota
    "allocation_quota",  # DashScope 429 Throttling.AllocationQuota
    "rate_limited",  # 429 with Retry-After and x-ratelimit-* headers
    "overloaded",  # OpenAI 429 "The engine is currently overloaded"
    "unavailable",  # 503
    "server_error",  # 500
    "region_denied",  # OpenAI 403 unsupported_country_region_territory
    "html",  # 200 with a login page, as a proxy or a wrong endpoint gives
    "invalid_json",  # 200 with a truncated JSON body
    "not_a_list",  # 200 JSON that is not the API's shape
    "no_choices",  # chat: 200 completion without choices
    "budget_exceeded",  # LiteLLM proxy: 400 (or `budget_status`) type budget_exceeded
)
RETRY_AFTER_SECONDS = 20
# Flavours that send x-request-id and x-ratelimit-* headers (DashScope and Mistral put the id
# in error bodies instead).
_REQUEST_ID_HEADER = frozenset(
    {"openai", "vllm", "deepseek", "groq", "openrouter", "together", "xai"}
)
_HEADROOM = frozenset({"openai", "groq", "openrouter", "together"})
_OPENAI_REASONING = ("o1", "o3", "o4", "gpt-5")


@dataclass
class Dialect(DialectState):
    """What the server answers. Replace `app.state.dialect` to change it between requests."""

    BEHAVIOURS = frozenset({"ok", *FAULTS})

    flavour: str = "openai"
    keys: frozenset[str] | None = frozenset({"sk-test"})  # None: no auth (local servers)
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "o3-mini")
    unlisted: tuple[str, ...] = ()  # served, but missing from GET /models (DeepSeek aliases)
    fault_on: frozenset[str] = ROUTES  # the routes a failure `behaviour` answers for
    errors_as_200: bool = False  # send every error with HTTP 200, as some wrappers do
    balance: str | None = "110.00"  # DeepSeek GET /user/balance total (CNY); None: no route
    balance_available: bool = True
    credit_limit: float | None = 10.0  # OpenRouter GET /key; None: unlimited
    credit_used: float = 2.5
    free_tier: bool = False
    key_expires_at: str | None = "2027-06-30T00:00:00Z"  # OpenRouter GET /key
    reasoning: tuple[str, ...] = ()  # more models that refuse temperature and max_tokens
    responses_only: tuple[str, ...] = ()  # served by POST /responses only, not chat
    unauthorized: str = "flavour"  # Mistral's 401 body: "flavour", "detail" or "empty"
    budget_status: int = 400  # LiteLLM's budget_exceeded status
    shutdown: dict[str, str] = field(default_factory=dict)  # model -> OpenAI shutdown_date
    # Listed models that are shut down: completions answer "has been deprecated" (404)
    shut_down: tuple[str, ...] = ()
    # xAI GET /api-key: flags set to True (api_key_blocked, api_key_disabled, team_blocked)
    key_flags: frozenset[str] = frozenset()
    acls: tuple[str, ...] = ("api-key:model:*", "api-key:endpoint:*")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}; one of {FLAVOURS}")


Handler = Callable[[Dialect, Request, Any], Awaitable[Response]]


def make_app(dialect: Dialect | None = None, *, prefix: str = "/v1") -> Starlette:
    """The app, serving the API under `prefix` ("" for the root, as DeepSeek does)."""
    routes = [
        Route("/models", _endpoint("models", _list_models), methods=["GET"]),
        Route("/models/{model_id:path}", _endpoint("model", _get_model), methods=["GET"]),
        Route("/chat/completions", _endpoint("chat", _chat), methods=["POST"]),
        Route("/user/balance", _endpoint("balance", _balance), methods=["GET"]),
        Route("/key", _endpoint("key", _key), methods=["GET"]),
        Route("/api-key", _endpoint("api_key", _api_key), methods=["GET"]),
        Route("/responses", _endpoint("chat", _respond), methods=["POST"]),
    ]
    prefix = prefix.rstrip("/")
    app = Starlette(
        routes=[Mount(prefix, routes=routes)] if prefix else routes,
        exception_handlers={404: _no_route, 405: _no_route},
    )
    app.state.dialect = dialect or Dialect()
    return app


# --- the request pipeline: record, authenticate, fault, handle ------------------------------


def _endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dialect: Dialect = request.app.state.dialect
        body = (await dialect.record(request)).body
        # OpenRouter's model list is public: it answers without a key.
        public = dialect.flavour == "openrouter" and route == "models"
        if not public and (refused := _refuse_key(dialect, request)) is not None:
            return refused
        if dialect.behaviour != "ok" and route in dialect.fault_on:
            canned = _fault(dialect, route, body)
            if canned is not None:
                return canned
        return await handler(dialect, request, body)

    return endpoint


def _refuse_key(dialect: Dialect, request: Request) -> Response | None:
    if dialect.keys is None:
        return None
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key in dialect.keys:
        return None
    masked = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
    rid = _rid()
    match dialect.flavour:
        case "deepseek":
            body: Any = _openai_body(
                f"Authentication Fails, Your api key: ****{key[-4:]} is invalid",
                "authentication_error",
                "invalid_request_error",
            )
        case "dashscope":  # compatible mode: the OpenAI shape, request id in the body
            body = _openai_body(
                "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ) | {"request_id": rid}
        case "mistral" if dialect.unauthorized == "empty":
            return Response(b"", 401)
        case "mistral" if dialect.unauthorized == "detail":
            body = {"detail": "Unauthorized"}
        case "mistral":
            body = {"message": "Unauthorized", "request_id": rid}
        case "openrouter":
            body = {"error": {"message": "User not found.", "code": 401}}
        case "vllm":
            body = {"error": "Unauthorized"}
        case "groq":
            body = _openai_body("Invalid API Key", "invalid_request_error", "invalid_api_key")
        case "xai":  # a wrong key is a 400 at xAI; 401 is a missing Authorization header
            text = (
                f"Incorrect API key provided: {key[:2]}***{key[-2:]}. You can obtain an API "
                "key from https://console.x.ai."
            )
            if not key:
                return _send(dialect, 401, _xai_body("Unauthenticated", "Missing API key."))
            return _send(dialect, 400, _xai_body("Client specified an invalid argument", text))
        case _:
            body = _openai_body(
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
    return _send(dialect, 401, body, rid=rid)


def _fault(dialect: Dialect, route: str, body: Any) -> Response | None:
    flavour, rid = dialect.flavour, _rid()
    model = body.get("model") if isinstance(body, dict) else None
    match dialect.behaviour:
        case "no_quota":
            return _no_quota(dialect, rid)
        case "quota_legacy":
            return _send(dialect, 429, _openai_body(_QUOTA_TEXT, "insufficient_quota", None))
        case "allocation_quota":
            return _send(
                dialect,
                429,
                _dashscope_body(
                    "Throttling.AllocationQuota",
                    "Allocated quota exceeded, please increase your quota limit.",
                    rid,
                ),
                rid=rid,
            )
        case "rate_limited":
            return _rate_limited(dialect, rid, model)
        case "overloaded":
            text = "The engine is currently overloaded, please try again later."
            return _send(dialect, 429, _openai_body(text, "server_error", None))
        case "unavailable":
            if flavour == "dashscope":
                return _send(
                    dialect,
                    503,
                    _dashscope_body("ServiceUnavailable", "Service temporarily unavailable.", rid),
                    rid=rid,
                )
            text = "The server is overloaded or not ready yet."
            return _send(dialect, 503, _openai_body(text, "server_error", None))
        case "server_error":
            text = "The server had an error while processing your request. Sorry about that!"
            return _send(dialect, 500, _openai_body(text, "server_error", None))
        case "region_denied":
            return _send(
                dialect,
                403,
                _openai_body(
                    "Country, region, or territory not supported",
                    "request_forbidden",
                    "unsupported_country_region_territory",
                ),
            )
        case "html":
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body></body></html>"
            return Response(page, 200, media_type="text/html")
        case "invalid_json":
            return Response(b'{"object": "list", "data": [{"id": "gpt-', 200, media_type=_JSON)
        case "not_a_list":
            return JSONResponse({"object": "list", "models": list(dialect.models)})
        case "budget_exceeded":
            text = "Budget has been exceeded! Current cost: 5.0021, Max budget: 5.0"
            body = _openai_body(text, "budget_exceeded", str(dialect.budget_status))
            return _send(dialect, dialect.budget_status, body)
        case "no_choices" if route == "chat":
            return JSONResponse(_completion(model or "?") | {"choices": []})
    return None


# --- handlers --------------------------------------------------------------------------------


async def _list_models(dialect: Dialect, request: Request, body: Any) -> Response:
    created = 1_700_000_000
    owner = {"openrouter": "openrouter", "vllm": "vllm"}.get(dialect.flavour, "system")
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": owner} for m in dialect.models
    ]
    # Together answers with a bare array, the others with an OpenAI list object.
    payload: Any = data if dialect.flavour == "together" else {"object": "list", "data": data}
    return _send(dialect, 200, payload)


async def _get_model(dialect: Dialect, request: Request, body: Any) -> Response:
    model = request.path_params["model_id"]
    if model not in dialect.models + dialect.unlisted:
        return _no_model(dialect, model, chat=False)
    # openai SDK types/model.py: `shutdown_date`, "null if not announced".
    return _send(
        dialect,
        200,
        {
            "id": model,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "system",
            "shutdown_date": dialect.shutdown.get(model),
        },
    )


async def _chat(dialect: Dialect, request: Request, body: Any) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _send(
            dialect,
            400,
            _openai_body("you must provide a model parameter", "invalid_request_error", None),
        )
    model = body["model"]
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        text = "[] is too short - 'messages'"
        return _send(dialect, 400, _openai_body(text, "invalid_request_error", None))
    if model not in dialect.models + dialect.unlisted:
        return _no_model(dialect, model, chat=True)
    if model in dialect.shut_down:
        # As users report it (langflow-ai/langflow#1337): a 404 model_not_found that says so.
        text = (
            f"The model `{model}` has been deprecated, learn more here: "
            "https://platform.openai.com/docs/deprecations"
        )
        return _send(dialect, 404, _openai_body(text, "invalid_request_error", "model_not_found"))
    if model in dialect.responses_only:
        text = "This model is only supported in v1/responses and not in v1/chat/completions."
        error = _openai_body(text, "invalid_request_error", None)
        error["error"]["param"] = "model"
        return _send(dialect, 404, error)
    reasoning = (
        dialect.flavour == "openai" and model.startswith(_OPENAI_REASONING)
    ) or model in dialect.reasoning
    if reasoning:
        refusal = _reasoning_refusal(body)
        if refusal is not None:
            code, param, text = refusal
            error = _openai_body(text, "invalid_request_error", code)
            error["error"]["param"] = param
            return _send(dialect, 400, error)
    if (
        dialect.flavour == "dashscope"
        and model.startswith("qwen3")
        and body.get("enable_thinking") is not False
    ):
        text = "parameter.enable_thinking must be set to false for non-streaming calls"
        return _send(
            dialect, 400, _openai_body(text, "invalid_request_error", "invalid_parameter_error")
        )
    dialect.generated += 1
    return _send(dialect, 200, _completion(model, reasoning=reasoning))


async def _respond(dialect: Dialect, request: Request, body: Any) -> Response:
    if dialect.flavour != "openai":
        return await _no_route(request, HTTPException(404))
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _send(
            dialect,
            400,
            _openai_body(
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                "missing_required_parameter",
            ),
        )
    model = body["model"]
    if model not in dialect.models + dialect.unlisted:
        return _no_model(dialect, model, chat=False)
    budget = body.get("max_output_tokens")
    if isinstance(budget, int) and budget < 16:
        text = "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16."
        return _send(
            dialect, 400, _openai_body(text, "invalid_request_error", "integer_below_min_value")
        )
    dialect.generated += 1
    # A reasoning model spends a 16-token budget thinking: the answer is "incomplete".
    return _send(
        dialect,
        200,
        {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "model": model,
            "output": [{"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": []}],
            "usage": {
                "input_tokens": 12,
                "output_tokens": 16,
                "output_tokens_details": {"reasoning_tokens": 16},
                "total_tokens": 28,
            },
        },
    )


async def _balance(dialect: Dialect, request: Request, body: Any) -> Response:
    if dialect.flavour != "deepseek" or dialect.balance is None:
        return await _no_route(request, HTTPException(404))
    info = {
        "currency": "CNY",
        "total_balance": dialect.balance,
        "granted_balance": "0.00",
        "topped_up_balance": dialect.balance,
    }
    return _send(dialect, 200, {"is_available": dialect.balance_available, "balance_infos": [info]})


async def _key(dialect: Dialect, request: Request, body: Any) -> Response:
    if dialect.flavour != "openrouter":
        return await _no_route(request, HTTPException(404))
    key = request.headers.get("authorization", "").partition(" ")[2]
    limit = dialect.credit_limit
    data = {
        "label": f"{key[:8]}...{key[-3:]}",  # OpenRouter shows part of the key here
        "limit": limit,
        "usage": dialect.credit_used,
        "limit_remaining": None if limit is None else limit - dialect.credit_used,
        "is_free_tier": dialect.free_tier,
        "rate_limit": {"requests": 10, "interval": "10s"},
        "expires_at": dialect.key_expires_at,
    }
    return _send(dialect, 200, {"data": data})


async def _api_key(dialect: Dialect, request: Request, body: Any) -> Response:
    if dialect.flavour != "xai":
        return await _no_route(request, HTTPException(404))
    key = request.headers.get("authorization", "").partition(" ")[2]
    # xAI REST API reference, "API key": the key's description, its ACLs and block flags.
    data = {
        "redacted_api_key": f"{key[:4]}...{key[-4:]}",
        "user_id": "59fbe5f2-040b-46d5-8325-868bb8f23eb2",
        "name": "llmconn",
        "create_time": "2026-01-01T12:55:18.139305Z",
        "modify_time": "2026-08-28T17:20:12.343321Z",
        "modified_by": "3d38b4dc-4eb7-4785-ae26-c3fa8997ffc7",
        "team_id": "5ea6f6bd-7815-4b8a-9135-28b2d7ba6722",
        "acls": list(dialect.acls),
        "api_key_id": "ae1e1841-4326-4b36-a8a9-8a1a7237db11",
        "team_blocked": "team_blocked" in dialect.key_flags,
        "api_key_blocked": "api_key_blocked" in dialect.key_flags,
        "api_key_disabled": "api_key_disabled" in dialect.key_flags,
    }
    return _send(dialect, 200, data)


async def _no_route(request: Request, exc: Exception) -> Response:
    dialect: Dialect = request.app.state.dialect
    if dialect.flavour in ("vllm", "mistral"):  # FastAPI servers
        return JSONResponse({"detail": "Not Found"}, 404)
    text = f"Invalid URL ({request.method} {request.url.path})"
    return JSONResponse(_openai_body(text, "invalid_request_error", None), 404)


# --- bodies in each flavour ------------------------------------------------------------------

_JSON = "application/json"
_QUOTA_TEXT = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def _rid() -> str:
    return f"req_{uuid.uuid4().hex}"


def _openai_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _xai_body(code: str, error: str) -> dict[str, Any]:
    # xAI: a gRPC status description in "code", the message in "error" (a string).
    return {"code": code, "error": error}


def _dashscope_body(code: str, message: str, rid: str) -> dict[str, Any]:
    # DashScope's compatible mode: an OpenAI-shaped error with its own codes, request id in body.
    return {
        "error": {"code": code, "param": None, "message": message, "type": code},
        "request_id": rid,
    }


def _no_quota(dialect: Dialect, rid: str) -> Response:
    match dialect.flavour:
        case "deepseek":
            body = _openai_body("Insufficient Balance", "unknown_error", "invalid_request_error")
            return _send(dialect, 402, body)
        case "dashscope":
            text = "Access denied, please make sure your account is in good standing."
            return _send(dialect, 403, _dashscope_body("Arrearage", text, rid), rid=rid)
        case "openrouter":
            text = (
                "This request requires more credits, or fewer max_tokens. You requested up to "
                "16 tokens, but can only afford 0. To increase, visit "
                "https://openrouter.ai/settings/credits and add more credits"
            )
            return _send(dialect, 402, {"error": {"code": 402, "message": text}})
        case "xai":
            text = (
                "Your team 5ea6f6bd-7815-4b8a-9135-28b2d7ba6722 has either used all available "
                "credits or reached its monthly spending limit. To continue making API "
                "requests, please purchase more credits or raise your spending limit."
            )
            return _send(dialect, 403, _xai_body("The caller does not have permission", text))
        case _:
            body = _openai_body(_QUOTA_TEXT, "insufficient_quota", "insufficient_quota")
            return _send(dialect, 429, body)


def _rate_limited(dialect: Dialect, rid: str, model: str | None) -> Response:
    headers = {
        "retry-after": str(RETRY_AFTER_SECONDS),
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{RETRY_AFTER_SECONDS}s",
    }
    match dialect.flavour:
        case "dashscope":
            text = "Requests rate limit exceeded, please try again later."
            body: Any = _dashscope_body("Throttling.RateQuota", text, rid)
        case "mistral":
            body = {"message": "Requests rate limit exceeded", "request_id": rid}
        case "openrouter":
            body = {"error": {"code": 429, "message": "Rate limit exceeded: limit_rpm/10s"}}
        case _:
            text = (
                f"Rate limit reached for {model or 'requests'} on requests per min (RPM): "
                f"Limit 3, Used 3, Requested 1. Please try again in {RETRY_AFTER_SECONDS}s."
            )
            body = _openai_body(text, "requests", "rate_limit_exceeded")
    return _send(dialect, 429, body, rid=rid, extra=headers)


def _no_model(dialect: Dialect, model: str, *, chat: bool) -> Response:
    match dialect.flavour:
        case "vllm":
            body: Any = {
                "object": "error",
                "message": f"The model `{model}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            return _send(dialect, 404, body)
        case "deepseek" if chat:
            body = _openai_body("Model Not Exist", "invalid_request_error", "invalid_request_error")
            return _send(dialect, 400, body)
        case "mistral" if chat:
            body = {
                "object": "error",
                "message": f"Invalid model: {model}",
                "type": "invalid_model",
                "param": None,
                "code": "1500",
            }
            return _send(dialect, 400, body)
        case "openrouter":
            return _send(
                dialect,
                400,
                {"error": {"code": 400, "message": f"{model} is not a valid model ID"}},
            )
        case "xai":
            text = f"The model {model} does not exist or your team does not have access to it."
            return _send(dialect, 404, _xai_body("Some requested entity was not found", text))
    text = f"The model `{model}` does not exist or you do not have access to it."
    return _send(dialect, 404, _openai_body(text, "invalid_request_error", "model_not_found"))


def _reasoning_refusal(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """OpenAI reasoning models refuse max_tokens, any temperature but 1, and tiny budgets:
    (code, param, message)."""
    if "max_tokens" in body:
        return (
            "unsupported_parameter",
            "max_tokens",
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
        )
    if body.get("temperature") not in (None, 1):
        return (
            "unsupported_value",
            "temperature",
            f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
            "model. Only the default (1) value is supported.",
        )
    budget = body.get("max_completion_tokens")
    if isinstance(budget, int) and budget < 16:
        return (
            "integer_below_min_value",
            "max_completion_tokens",
            "Invalid 'max_completion_tokens': must be at least 16.",
        )
    return None


def _completion(model: str, *, reasoning: bool = False) -> dict[str, Any]:
    # A reasoning model spends a 16-token budget thinking: no content, finish_reason "length".
    usage = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
    if reasoning:
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": 16,
            "total_tokens": 28,
            "completion_tokens_details": {"reasoning_tokens": 16},
        }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "" if reasoning else "OK"},
                "logprobs": None,
                "finish_reason": "length" if reasoning else "stop",
            }
        ],
        "usage": usage,
    }


def _send(
    dialect: Dialect,
    status: int,
    body: Any,
    *,
    rid: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> Response:
    headers: dict[str, str] = {}
    if dialect.flavour in _REQUEST_ID_HEADER:
        headers["x-request-id"] = rid or _rid()
    if dialect.flavour in _HEADROOM:
        headers |= {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29950",
            "x-ratelimit-reset-tokens": "100ms",
        }
    headers |= extra or {}
    if status >= 400 and dialect.errors_as_200:
        status = 200
    return JSONResponse(body, status, headers=headers)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--prefix", default="/v1", help='path prefix of the API ("" for none)')
    parser.add_argument("--flavour", choices=FLAVOURS, default="openai")
    parser.add_argument("--key", action="append", help="an accepted key (repeat); none: no auth")
    parser.add_argument("--model", action="append", help="a listed model (repeat)")
    parser.add_argument("--unlisted", action="append", default=[], help="a served, unlisted model")
    parser.add_argument("--behaviour", choices=FAULTS, default="ok")
    args = parser.parse_args(argv)
    dialect = Dialect(
        flavour=args.flavour,
        keys=frozenset(args.key) if args.key else None,
        models=tuple(args.model or Dialect.models),
        unlisted=tuple(args.unlisted),
        behaviour=args.behaviour,
    )
    uvicorn.run(make_app(dialect, prefix=args.prefix), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
