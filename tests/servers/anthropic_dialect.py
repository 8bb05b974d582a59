"""A loopback server speaking the Anthropic API's dialect: models list and lookup, messages.

It checks the key and `anthropic-version` as the real API does, resolves model aliases,
pages the model list (limit, after_id, before_id), and answers errors in Anthropic's shape
`{"type":"error","error":{"type","message"},"request_id"}` with a `request-id` header and
`anthropic-ratelimit-*` headroom headers. `state.behaviour` selects a failure to play.

The key is read from `x-api-key`, the documented header the probe sends, or from
`Authorization: Bearer`, which the official Python SDK (2.x) sends for an api_key.

Sources (anthropic Python SDK 2.12.0): a model object carries `lifecycle` ("active",
"deprecated" or "retired"), `deprecated_at` and `retires_at` (`types/model_info.py`: a retired
model "remains in the catalogue as the historical record of its retirement", so GET
/v1/models/{id} still answers 200 for it); the SDK sends `anthropic-version: 2026-10-21`
(`_constants.py`); error codes travel in `error.details.error_code` and map to classes by
(status, code) (`_error_classes.py`: 400 organization_on_hold, 429
enforced_spend_limit_reached, ...); 402 is `billing_error` (`types/shared/error_type.py`).
The wording of the 400 for a reached spend limit ("You have reached your specified API usage
limits") is from Anthropic's errors page as reported to us: not confirmed from a primary
source here, so the probe also reads the (status, error_code) pairs above.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.recording import DialectState

API_KEY = "sk-ant-api03-loopback-test-key"

MODELS = [
    {"id": "claude-opus-4-5-20251101", "display_name": "Claude Opus 4.5"},
    {"id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5"},
    {"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"},
    {"id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1"},
    {
        "id": "claude-3-7-sonnet-20250219",
        "display_name": "Claude Sonnet 3.7",
        "lifecycle": "deprecated",
        "deprecated_at": "2025-10-28T00:00:00Z",
        "retires_at": "2027-02-19T00:00:00Z",
    },
    {
        "id": "claude-3-opus-20240229",
        "display_name": "Claude Opus 3",
        "lifecycle": "retired",
        "deprecated_at": "2025-06-30T00:00:00Z",
        "retires_at": "2026-01-05T00:00:00Z",
    },
]
ALIASES = {
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
}

BEHAVIOURS = frozenset(
    {
        "ok",
        "forbidden",  # 403 permission_error on every call
        "no_credit",  # messages: 400 "credit balance is too low"; free calls still work
        "spend_limit",  # messages: 429 with details.error_code enforced_spend_limit_reached
        "usage_limit",  # messages: 400 "You have reached your specified API usage limits"
        "on_hold",  # every call: 400 with details.error_code organization_on_hold
        "billing",  # messages: 402 billing_error
        "rate_limited",  # 429 rate_limit_error, retry-after 17
        "api_error",  # 500 api_error
        "overloaded",  # 529 overloaded_error
        "html",  # 200 with a portal's HTML page
        "invalid_json",  # 200 application/json that does not parse
        "wrong_shape",  # 200 JSON that is not the API's answer
    }
)


@dataclass
class AnthropicState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    api_key: str = API_KEY
    models: list[dict[str, str]] = field(default_factory=lambda: list(MODELS))
    aliases: dict[str, str] = field(default_factory=lambda: dict(ALIASES))
    retry_after: int = 17
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def resolve(self, model: str) -> dict[str, str] | None:
        wanted = self.aliases.get(model, model)
        return next((m for m in self.models if m["id"] == wanted), None)


def make_app(
    *,
    api_key: str = API_KEY,
    models: list[dict[str, str]] | None = None,
    aliases: dict[str, str] | None = None,
    behaviour: str = "ok",
) -> Starlette:
    state = AnthropicState(api_key=api_key)
    if models is not None:
        state.models = list(models)
    if aliases is not None:
        state.aliases = dict(aliases)
    state.reset(behaviour)

    def request_id() -> str:
        return f"req_011CLoopback{next(state._ids):08d}"

    def headers(rid: str) -> dict[str, str]:
        return {
            "request-id": rid,
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
            "anthropic-ratelimit-tokens-limit": "30000",
            "anthropic-ratelimit-tokens-remaining": "29980",
        }

    def error(status: int, etype: str, message: str, **extra: Any) -> JSONResponse:
        rid = request_id()
        hdrs = headers(rid)
        hdrs.update(extra.pop("headers", {}))
        err: dict[str, Any] = {"type": etype, "message": message}
        err.update(extra)
        body = {"type": "error", "error": err, "request_id": rid}
        return JSONResponse(body, status_code=status, headers=hdrs)

    def answer(body: Any) -> JSONResponse:
        return JSONResponse(body, headers=headers(request_id()))

    async def gate(request: Request) -> Response | None:
        """What the real API checks before the route: key, version, then failure modes."""
        await state.record(request)
        key = request.headers.get("x-api-key") or _bearer(request.headers.get("authorization"))
        if not key:
            return error(401, "authentication_error", "x-api-key header is required")
        if key != state.api_key:
            return error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        messages = request.url.path == "/v1/messages"
        match state.behaviour:
            case "forbidden":
                return error(
                    403,
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                )
            case "no_credit" if messages:
                return error(
                    400,
                    "invalid_request_error",
                    "Your credit balance is too low to access the Anthropic API. Please go to "
                    "Plans & Billing to upgrade or purchase credits.",
                )
            case "spend_limit" if messages:
                return error(
                    429,
                    "rate_limit_error",
                    "This organization has reached its monthly usage limit.",
                    details={"error_code": "enforced_spend_limit_reached"},
                )
            case "usage_limit" if messages:
                return error(
                    400,
                    "invalid_request_error",
                    "You have reached your specified API usage limits. You will regain access "
                    "on 2027-01-01 at 00:00 UTC.",
                )
            case "on_hold":
                return error(
                    400,
                    "invalid_request_error",
                    "This organization has been disabled.",
                    details={"error_code": "organization_on_hold"},
                )
            case "billing" if messages:
                return error(
                    402,
                    "billing_error",
                    "Your organization's billing could not be charged.",
                )
            case "rate_limited":
                return error(
                    429,
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit.",
                    headers={
                        "retry-after": str(state.retry_after),
                        "anthropic-ratelimit-requests-remaining": "0",
                    },
                )
            case "api_error":
                return error(500, "api_error", "Internal server error")
            case "overloaded":
                return error(529, "overloaded_error", "Overloaded")
            case "html":
                return Response(
                    "<!DOCTYPE html><html><body>Sign in to continue</body></html>",
                    media_type="text/html",
                )
            case "invalid_json":
                return Response('{"data": [{"id": ', media_type="application/json")
            case "wrong_shape":
                return answer({"status": "ok"})
        return None

    async def list_models(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return error(400, "invalid_request_error", "limit: must be between 1 and 1000")
        ids = [m["id"] for m in state.models]
        start, stop = 0, len(ids)
        if after := request.query_params.get("after_id"):
            start = ids.index(after) + 1 if after in ids else len(ids)
        if before := request.query_params.get("before_id"):
            stop = ids.index(before) if before in ids else 0
            start = max(start, stop - limit)
        page = [_model(m) for m in state.models[start:stop][:limit]]
        return answer(
            {
                "data": page,
                "has_more": start + len(page) < stop,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def get_model(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        model_id = request.path_params["model_id"]
        found = state.resolve(model_id)
        if found is None:
            return error(404, "not_found_error", f"model: {model_id}")
        return answer(_model(found))

    async def create_message(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        body = state.seen[-1].body
        if not isinstance(body, dict):
            return error(400, "invalid_request_error", "Request body is not valid JSON")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return error(400, "invalid_request_error", f"{name}: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return error(400, "invalid_request_error", "max_tokens: must be at least 1")
        if not isinstance(body["messages"], list) or not body["messages"]:
            return error(400, "invalid_request_error", "messages: at least one message is required")
        found = state.resolve(str(body["model"]))
        # model_info.py: "inference requests naming [a retired model] fail"; the status and
        # body of that failure are not documented: a 404 here is our assumption.
        if found is None or found.get("lifecycle") == "retired":
            return error(404, "not_found_error", f"model: {body['model']}")
        state.generated += 1
        return answer(
            {
                "id": f"msg_01Loopback{state.generated:08d}",
                "type": "message",
                "role": "assistant",
                "model": found["id"],
                "content": [{"type": "text", "text": "OK"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 14, "output_tokens": 2},
            }
        )

    async def not_found(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        return error(404, "not_found_error", "Not found")

    app = Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model_id:str}", get_model, methods=["GET"]),
            Route("/v1/messages", create_message, methods=["POST"]),
            Route("/{path:path}", not_found, methods=["GET", "POST"]),
        ]
    )
    app.state.dialect = state
    return app


def _model(model: dict[str, str]) -> dict[str, str | None]:
    return {
        "type": "model",
        "id": model["id"],
        "display_name": model.get("display_name", model["id"]),
        "created_at": model.get("created_at", "2025-05-22T00:00:00Z"),
        "lifecycle": model.get("lifecycle", "active"),
        "deprecated_at": model.get("deprecated_at"),
        "retires_at": model.get("retires_at"),
    }


def _bearer(value: str | None) -> str | None:
    scheme, _, token = (value or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
