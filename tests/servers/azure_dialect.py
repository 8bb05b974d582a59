"""A loopback server speaking Azure OpenAI's dialect: chat completions on a deployment.

Serves POST /openai/deployments/{deployment}/chat/completions?api-version=... and the newer
POST /openai/v1/chat/completions (deployment as `model`). It checks a request in Azure's
layers: the `api-key` (on /openai/v1 also a Bearer token) at the gateway (401 "Access denied
due to invalid subscription key..."), the api-version (missing: 404 Resource not found; unknown: 400), the deployment
(404 DeploymentNotFound), then the body in the model service (400 invalid_request_error).
Every answer carries `apim-request-id`, `x-ms-region` and `x-ratelimit-remaining-*`;
answers from a deployment carry `x-ms-deployment-name`. `state.generated` counts completions
actually generated, i.e. tokens spent. `state.behaviour` selects a failure to play.

Also GET /openai/models?api-version=... (the resource's models, with `lifecycle_status` and
`deprecation`), GET /openai/v1/models (the same models, without either), and POST
/openai/v1/responses (deployment as `model`).

With an Entra ID token endpoint (`entra`), the gateway also takes `Authorization: Bearer`
with an access token it issued for https://cognitiveservices.azure.com: an invalid one is
401 "Unauthorized. Access token is missing, invalid, audience is incorrect ...", and a
principal without a data-plane role (`role_holders`, by client ID) is 401 PermissionDenied
"Principal does not have access to API/Operation." (both wordings as users report them).

Sources: Azure OpenAI data-plane REST reference 2024-10-21 ("Models - List": `data` of
models with `status`, `capabilities`, `lifecycle_status`, `deprecation.fine_tune` and
`deprecation.inference` as Unix times), and its spec (azure-rest-api-specs,
`specification/cognitiveservices/data-plane/AzureOpenAI/authoring/stable/2024-10-21/
azureopenai.json`: `Model` requires `lifecycle_status` and `deprecation`; `Deprecation`
requires `inference`, "the end date of inference support of this model"; `LifeCycleStatus` is
`preview` or `generally-available`, an extensible enum); the /openai/v1 spec
(`specification/ai/data-plane/OpenAI.v1/azure-v1-v1-generated.yaml`: GET /models answers
`OpenAI.ListModelsResponse` of `OpenAI.Model`, id, created, object, owned_by); Microsoft's
spillover traffic management guide (`x-ms-deployment-name` names the deployment that served a
request); the management plane's `ModelLifecycleStatus` (arm-cognitiveservices: inference calls
to deployments of a retired model "will return 410 errors"). Not confirmed from a primary
source, and so played both ways here: whether Azure checks the deployment before the body (the
default order below) or the body first (`behaviour` "body_first", where an empty `messages`
list is refused before routing, without `x-ms-deployment-name`, even for a deployment that
does not exist). Not confirmed, and played one way: the 400 OperationNotSupported wording for
a deployment whose model does not chat (as users report it); the body of the 410; the data
plane's `lifecycle_status` for a deprecating model (`deprecating`, the management plane's
`Deprecating` in the data plane's spelling); that a completion's `model` is spelled as the
list's `id`; `owned_by` on the v1 list.

A deployment of a retired model (issue 24): Azure answers it, as users report it, with 404
`{"code": "404", "message": "Resource not found"}` (BerriAI/litellm#11116: a deployment of
gpt-35-turbo 0125 after its retirement) or with 400 OperationNotSupported "The chatCompletion
operation does not work with the specified model, gpt-35-turbo" (BerriAI/litellm#11505), and
by the management plane's word with 410; `retired`, `retired_400` and `retired_410` play the
three. The model list may hold one entry per model version under the bare name, each with its
own `deprecation.inference` (three `gpt-35-turbo` entries in a France Central answer captured
in public code; not in Microsoft's reference, whose example has distinct ids), and a
completion may report that bare name: `gpt-35-bare` plays it. The content filter's refusal of
a prompt is 400 `content_filter` with `innererror.code` ResponsibleAIPolicyViolation
(Microsoft Learn, Azure OpenAI "Content filtering": "the API call fails" with 400 when the
prompt is filtered; the body as openai/openai-agents-python#806 captured it); `filtered`
plays it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.entra import EntraState
from servers.recording import DialectState

API_KEY = "0123456789abcdef0123456789abcdef"
API_VERSIONS = frozenset({"2024-06-01", "2024-10-21", "2025-04-01-preview"})
# deployment -> (model it serves, kind)
DEPLOYMENTS = {
    "gpt-4o-prod": ("gpt-4o-2024-08-06", "chat"),
    "o3-mini": ("o3-mini-2025-01-31", "reasoning"),
    "embeddings": ("text-embedding-3-small", "embedding"),
    "o1-pro": ("o1-pro-2025-03-19", "responses"),
    "gpt-4o-old": ("gpt-4o-2024-05-13", "chat"),  # its model is deprecating
    "gpt-35-legacy": ("gpt-35-turbo-0125", "chat"),  # its model's inference support has ended
    # Azure retired their models: 404 Resource not found, 400 OperationNotSupported, 410
    "gpt-35-gone": ("gpt-35-turbo-0301", "retired"),
    "gpt-35-gone-400": ("gpt-35-turbo", "retired_400"),
    "gpt-35-gone-410": ("gpt-35-turbo-0301", "retired_410"),
    "gpt-35-bare": ("gpt-35-turbo", "chat"),  # the completion names the bare model
    "gpt-4o-filtered": ("gpt-4o-2024-08-06", "filtered"),  # the filter refuses our prompt
}
# GET /openai/models: what the resource can use ("Models - List"). Every model has an end of
# inference support: at launch a "not sooner than" date (Microsoft's model retirement policy:
# a year out for GA models), so a date ahead is not a deprecation.
MODELS = [
    {
        "id": "gpt-4o-2024-08-06",
        "status": "succeeded",
        "lifecycle_status": "generally-available",
        "deprecation": {"fine_tune": 1877472000, "inference": 1877472000},  # 2029-06-30
        "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
        "created_at": 1722902400,
        "object": "model",
    },
    {
        "id": "gpt-4o-2024-05-13",
        "status": "succeeded",
        "lifecycle_status": "deprecating",  # not confirmed (module doc)
        "deprecation": {"inference": 1867017600},  # 2029-03-01
        "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
        "created_at": 1715558400,
        "object": "model",
    },
    {
        "id": "gpt-35-turbo-0125",
        "status": "succeeded",
        "lifecycle_status": "generally-available",
        "deprecation": {"fine_tune": 1749168000, "inference": 1767225600},  # 2026-01-01
        "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
        "created_at": 1706745600,
        "object": "model",
    },
    # One entry per version under the bare name, each with its own date (see the module doc).
    {
        "id": "gpt-35-turbo",
        "status": "succeeded",
        "lifecycle_status": "generally-available",
        "deprecation": {"inference": 1740787200},  # 2025-03-01
        "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
        "created_at": 1687132800,
        "object": "model",
    },
    {
        "id": "gpt-35-turbo",
        "status": "succeeded",
        "lifecycle_status": "generally-available",
        "deprecation": {"inference": 1830297600},  # 2028-01-01
        "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
        "created_at": 1706745600,
        "object": "model",
    },
]


BEHAVIOURS = frozenset(
    {
        "ok",
        "forbidden",  # 403: public network access disabled
        "rate_limited",  # 429 with Retry-After 6
        "unavailable",  # 503 ServiceUnavailable
        "html",
        "invalid_json",
        "wrong_shape",
        "body_first",  # the body is checked before the deployment (see the module doc)
    }
)


@dataclass
class AzureState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    api_key: str = API_KEY
    # Entra ID: the token endpoint whose access tokens are accepted as `Authorization:
    # Bearer`, and the client IDs that hold a data-plane role (Cognitive Services OpenAI
    # User) on this resource.
    entra: EntraState | None = None
    role_holders: set[str] = field(default_factory=set)
    deployments: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(DEPLOYMENTS))
    api_versions: frozenset[str] = API_VERSIONS
    retry_after: int = 6
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def make_app(
    *,
    api_key: str = API_KEY,
    deployments: dict[str, tuple[str, str]] | None = None,
    behaviour: str = "ok",
    entra: EntraState | None = None,
    role_holders: set[str] | None = None,
) -> Starlette:
    state = AzureState(api_key=api_key, entra=entra, role_holders=set(role_holders or ()))
    if deployments is not None:
        state.deployments = dict(deployments)
    state.reset(behaviour)

    def headers(extra: dict[str, str] | None = None) -> dict[str, str]:
        hdrs = {
            "apim-request-id": f"5a14fa81-0000-4000-8000-{next(state._ids):012d}",
            "x-ms-region": "Sweden Central",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-remaining-tokens": "99984",
        }
        hdrs.update(extra or {})
        return hdrs

    def error(status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": body}, status_code=status, headers=headers(extra))

    def invalid(
        message: str,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Response:
        return error(
            400,
            {"message": message, "type": "invalid_request_error", "param": param, "code": code},
            extra,
        )

    async def record(request: Request) -> Any:
        return (await state.record(request)).body

    def key(request: Request) -> str | None:
        # The /openai/v1 surface also takes the key as a Bearer token: Microsoft's "API version
        # lifecycle" guide calls it with the plain OpenAI client (api_key, base_url
        # .../openai/v1/), which sends `Authorization: Bearer` (openai
        # `lib/_client_auth.py`). The dated surface takes `api-key` (openai `lib/azure.py`).
        if request.url.path.startswith("/openai/v1/"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token:
                return token
        return request.headers.get("api-key")

    def gateway(request: Request) -> Response | None:
        bearer = request.headers.get("authorization", "")
        if state.entra is not None and bearer[:7].lower() == "bearer ":
            claims = state.entra.access_token_claims(bearer[7:])
            if claims is None or claims.get("aud") != state.entra.audience:
                return error(
                    401,
                    {
                        "code": "401",
                        "message": "Unauthorized. Access token is missing, invalid, audience "
                        f"is incorrect ({state.entra.audience}), or have expired.",
                    },
                )
            if claims.get("appid") not in state.role_holders:
                return error(
                    401,
                    {
                        "code": "PermissionDenied",
                        "message": "Principal does not have access to API/Operation.",
                    },
                )
        elif key(request) != state.api_key:
            return error(
                401,
                {
                    "code": "401",
                    "message": "Access denied due to invalid subscription key or wrong API "
                    "endpoint. Make sure to provide a valid key for an active subscription and "
                    "use a correct regional API endpoint for your resource.",
                },
            )
        match state.behaviour:
            case "forbidden":
                return error(
                    403,
                    {
                        "code": "403",
                        "message": "Public access is disabled. Please configure private endpoint.",
                    },
                )
            case "rate_limited":
                return error(
                    429,
                    {
                        "code": "429",
                        "message": "Requests to the ChatCompletions_Create Operation under Azure "
                        "OpenAI API version 2024-10-21 have exceeded token rate limit of your "
                        "current OpenAI S0 pricing tier. Please retry after "
                        f"{state.retry_after} seconds.",
                    },
                    {
                        "retry-after": str(state.retry_after),
                        "retry-after-ms": str(state.retry_after * 1000),
                        "x-ratelimit-remaining-requests": "0",
                    },
                )
            case "unavailable":
                return error(
                    503,
                    {
                        "code": "ServiceUnavailable",
                        "message": "The service is temporarily unable to process your request. "
                        "Please try again later.",
                    },
                )
            case "html":
                return Response(
                    "<!DOCTYPE html><html><body>Azure Front Door</body></html>",
                    media_type="text/html",
                    headers=headers(),
                )
            case "invalid_json":
                return Response('{"choices": [', media_type="application/json", headers=headers())
            case "wrong_shape":
                return JSONResponse({"value": []}, headers=headers())
        return None

    def complete(deployment: str, body: Any) -> Response:
        empty = not isinstance(body, dict) or not body.get("messages")
        if state.behaviour == "body_first" and empty:
            return invalid("[] is too short - 'messages'", param="messages")
        if deployment not in state.deployments:
            return error(
                404,
                {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist. If you "
                    "created the deployment within the last 5 minutes, please wait a moment and "
                    "try again.",
                },
            )
        model, kind = state.deployments[deployment]
        served = {"x-ms-deployment-name": deployment}
        if kind.startswith("retired"):
            return retired(kind, model, served, "chatCompletion")
        if kind in ("embedding", "responses"):
            return error(
                400,
                {
                    "code": "OperationNotSupported",
                    "message": "The chatCompletion operation does not work with the specified "
                    f"model, {model}. Please choose different model and try again.",
                },
                served,
            )
        if not isinstance(body, dict):
            return invalid("Invalid JSON body", extra=served)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return invalid("[] is too short - 'messages'", param="messages", extra=served)
        if kind == "filtered":
            # Microsoft Learn, "Content filtering"; the body as openai-agents-python#806 shows.
            return error(
                400,
                {
                    "message": "The response was filtered due to the prompt triggering Azure "
                    "OpenAI's content management policy. Please modify your prompt and retry.",
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                    "innererror": {
                        "code": "ResponsibleAIPolicyViolation",
                        "content_filter_result": {
                            "jailbreak": {"detected": True, "filtered": True}
                        },
                    },
                },
                served,
            )
        if kind == "reasoning" and "max_tokens" in body:
            return invalid(
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
                extra=served,
            )
        state.generated += 1
        return JSONResponse(
            {
                "id": f"chatcmpl-loopback{state.generated}",
                "object": "chat.completion",
                "created": 1767225600,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "OK"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 14, "completion_tokens": 1, "total_tokens": 15},
            },
            headers=headers(served),
        )

    def retired(kind: str, model: str, served: dict[str, str], operation: str) -> Response:
        if kind == "retired_410":
            # The status is the management plane's word; this body is not confirmed.
            return error(
                410, {"code": "410", "message": f"The model {model} has been retired."}, served
            )
        if kind == "retired_400":
            # BerriAI/litellm#11505 (a gpt-35-turbo deployment after the retirement).
            return error(
                400,
                {
                    "code": "OperationNotSupported",
                    "message": f"The {operation} operation does not work with the specified "
                    f"model, {model}. Please choose different model and try again. You can "
                    "learn more about which models can be used with each operation here: "
                    "https://go.microsoft.com/fwlink/?linkid=2197993.",
                },
                served,
            )
        # BerriAI/litellm#11116: the gateway's bare 404, no deployment header.
        return error(404, {"code": "404", "message": "Resource not found"})

    async def deployment_chat(request: Request) -> Response:
        body = await record(request)
        if refused := gateway(request):
            return refused
        version = request.query_params.get("api-version")
        if not version:
            return error(404, {"code": "404", "message": "Resource not found"})
        if version not in state.api_versions:
            return error(400, {"code": "BadRequest", "message": "API version not supported"})
        return complete(request.path_params["deployment"], body)

    async def v1_chat(request: Request) -> Response:
        body = await record(request)
        if refused := gateway(request):
            return refused
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return invalid("you must provide a model parameter", param="model")
        return complete(model, body)

    async def list_models(request: Request) -> Response:
        await record(request)
        if refused := gateway(request):
            return refused
        v1 = request.url.path.startswith("/openai/v1/")
        version = request.query_params.get("api-version")
        if not v1 and not version:
            return error(404, {"code": "404", "message": "Resource not found"})
        if not v1 and version not in state.api_versions:
            return error(400, {"code": "BadRequest", "message": "API version not supported"})
        if v1:  # OpenAI.Model: no lifecycle_status, no deprecation
            data = [
                {"id": m["id"], "created": m["created_at"], "object": "model", "owned_by": "system"}
                for m in MODELS
            ]
            return JSONResponse({"object": "list", "data": data}, headers=headers())
        return JSONResponse({"data": MODELS, "object": "list"}, headers=headers())

    async def v1_responses(request: Request) -> Response:
        body = await record(request)
        if refused := gateway(request):
            return refused
        deployment = body.get("model") if isinstance(body, dict) else None
        if not isinstance(deployment, str):
            return invalid("Missing required parameter: 'model'.", param="model")
        if deployment not in state.deployments:
            return error(
                404,
                {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist.",
                },
            )
        model, kind = state.deployments[deployment]
        served = {"x-ms-deployment-name": deployment}
        if kind.startswith("retired"):
            return retired(kind, model, served, "responses")
        if kind == "embedding":
            return error(
                400,
                {
                    "code": "OperationNotSupported",
                    "message": "The responses operation does not work with the specified "
                    f"model, {model}. Please choose different model and try again.",
                },
                served,
            )
        state.generated += 1
        return JSONResponse(
            {
                "id": f"resp_loopback{state.generated}",
                "object": "response",
                "created_at": 1767225600,
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "model": model,
                "output": [{"id": "rs_loopback", "type": "reasoning", "summary": []}],
                "usage": {"input_tokens": 14, "output_tokens": 16, "total_tokens": 30},
            },
            headers=headers(served),
        )

    async def not_found(request: Request) -> Response:
        await record(request)
        if refused := gateway(request):
            return refused
        return error(404, {"code": "404", "message": "Resource not found"})

    app = Starlette(
        routes=[
            Route(
                "/openai/deployments/{deployment:str}/chat/completions",
                deployment_chat,
                methods=["POST"],
            ),
            Route("/openai/v1/chat/completions", v1_chat, methods=["POST"]),
            Route("/openai/v1/responses", v1_responses, methods=["POST"]),
            Route("/openai/models", list_models, methods=["GET"]),
            Route("/openai/v1/models", list_models, methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST"]),
        ]
    )
    app.state.dialect = state
    return app
