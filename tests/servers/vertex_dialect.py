"""A loopback server speaking Vertex AI's dialect (aiplatform, v1 and v1beta1).

It serves, as Google's Vertex AI REST reference names them:
- GET /v1beta1/publishers/{publisher}/models (publishers.models.list: `publisherModels`,
  `nextPageToken`), which google-genai calls to list base models;
- POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:countTokens (`totalTokens`,
  `totalBillableCharacters`) and :generateContent (the Gemini API's GenerateContentResponse);
- POST .../publishers/anthropic/models/count-tokens:rawPredict (Google's "Count tokens for
  Claude models": the model in the body, answered with Anthropic's `input_tokens`) and
  .../publishers/anthropic/models/{m}:rawPredict (Anthropic's Messages answer; the body must
  carry `anthropic_version` and no `model`, Google's Claude request reference: Google
  documents `vertex-2023-10-16`, and the anthropic SDK's Vertex client sends its own API
  version there, so any version is taken);
- express mode: POST /v1/publishers/google/models/{m}:countTokens and :generateContent with
  `x-goog-api-key` (Google's express-mode REST reference), Google models only.

Authentication: `Authorization: Bearer` with a token a loopback token service issued
(google_token.py for a service-account key; google_sts.py for a workload identity) or one in
`state.tokens`; an express-mode key in `x-goog-api-key` (or
`?key=`). Errors have Google's shape `{"error": {"code", "message", "status", "details"}}`
with ErrorInfo reasons from googleapis `google/api/error_reason.proto` (CREDENTIALS_MISSING
and ACCESS_TOKEN_TYPE_UNSUPPORTED with 401, SERVICE_DISABLED and BILLING_DISABLED with 403
and `metadata.consumer`, API_KEY_INVALID with 400). The NOT_FOUND wording for a publisher
model is Google's as users report it ("Publisher Model ... was not found or your project does
not have access to it"), and the IAM refusal ("Permission '...' denied on resource ... (or it
may not exist).") with an ErrorInfo IAM_PERMISSION_DENIED carrying `metadata.permission`: its
exact form is not confirmed from a primary source. `state.behaviour` selects a failure to
play; `state.granted` lists the projects the accounts may call models in.

Claude's token counter (issue 24): Google's "Count tokens for Claude models"
(https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude/count-tokens)
lists the regions that serve count-tokens; its versions differ (us-central1, europe-west4 and
asia-east1 are in older ones only), and us-east5, europe-west1 and asia-southeast1 are in
every one: those three count here. Claude answers messages at `global` too (the anthropic
SDK's Vertex client takes region "global"), but count-tokens there is 404 (BerriAI/litellm
PR #20348, which counts in another region for that reason).

Billing of the project-less model list (issue 24): a call that names no project is billed to,
and checked against, a project of the caller's: the `x-goog-user-project` header when sent
(google-genai `_api_client.py` sends the credentials' quota project there), else the
credential's own project (a service account's, from its email; a federated token's, the
workload identity pool's project number). A project whose Vertex AI API is off answers
SERVICE_DISABLED naming that project (googleapis/python-genai#2173,
googleapis/python-aiplatform#2557: the error names the credential's project, not the one the
caller uses); a project the caller may not bill answers USER_PROJECT_DENIED (googleapis
`google/api/error_reason.proto`: the caller lacks serviceusage.services.use on the user
project). `state.enabled` and `state.billable` say which projects are which. Calls that name a
project in their path are billed to it, as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.recording import DialectState

PROJECT = "vertex-test-project"
EXPRESS_KEY = "AQ.Ab8RN6LoopbackExpressKey0123456789abcdefghij"
GEMINI = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.5-flash"]
CLAUDE = ["claude-sonnet-4-5@20250929", "claude-haiku-4-5@20251001"]
# Where each publisher's models are served (Claude is in fewer regions than Gemini).
LOCATIONS = {
    "google": {"us-central1", "europe-west4", "global"},
    "anthropic": {"us-east5", "europe-west1", "asia-southeast1", "global"},
}
# Where Claude's token counter answers (module doc: the regions every version lists).
COUNT_REGIONS = {"us-east5", "europe-west1", "asia-southeast1"}

BEHAVIOURS = frozenset(
    {
        "ok",
        "service_disabled",  # 403 PERMISSION_DENIED, SERVICE_DISABLED: the API is off
        "billing_disabled",  # 403 PERMISSION_DENIED, BILLING_DISABLED
        "rate_limited",  # 429 RESOURCE_EXHAUSTED, shared quota, no RetryInfo
        "unavailable",  # 503 UNAVAILABLE
        "echo",  # 400 whose message repeats the credentials it got (a hostile gateway)
    }
)

_PROJECT_CALL = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/publishers/"
    r"(?P<publisher>[^/]+)/models/(?P<model>[^/:]+):(?P<method>\w+)$"
)
_EXPRESS_CALL = re.compile(
    r"^/v1/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+):(?P<method>\w+)$"
)
_LIST = re.compile(r"^/v1beta1/publishers/(?P<publisher>[^/]+)/models$")


@dataclass(kw_only=True)
class VertexState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    # Tokens a token service issued (google_token.py's; Google STS's and IAM Credentials' of
    # google_sts.py for a workload identity) -> whose they are.
    issued: Mapping[str, str] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)  # tokens accepted besides those
    # Google STS's federated tokens -> their principal (direct resource access)
    federated: Mapping[str, str] = field(default_factory=dict)
    enabled: set[str] = field(default_factory=lambda: {PROJECT})  # Vertex AI API on
    billable: set[str] = field(default_factory=lambda: {PROJECT})  # x-goog-user-project ok
    express_keys: set[str] = field(default_factory=lambda: {EXPRESS_KEY})
    granted: set[str] = field(default_factory=lambda: {PROJECT})  # predict allowed here
    counted: int = 0  # countTokens calls (free)


def _error(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    err: dict[str, Any] = {"code": status, "message": message, "status": code}
    if details:
        err["details"] = details
    return JSONResponse({"error": err}, status_code=status)


def _info(reason: str, domain: str = "googleapis.com", **metadata: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": metadata,
    }


def _publisher_model(publisher: str, name: str) -> dict[str, Any]:
    return {
        "name": f"publishers/{publisher}/models/{name}",
        "versionId": "001",
        "openSourceCategory": "PROPRIETARY",
        "launchStage": "GA",
        "publisherModelTemplate": f"projects/{{project}}/locations/{{location}}/publishers/"
        f"{publisher}/models/{name}",
    }


def home_project(state: VertexState, token: str) -> str:
    """The project a credential belongs to: a service account's (its email's domain), a
    federated principal's pool project (its number), else the test project."""
    email = state.issued.get(token, "")
    if email.endswith(".iam.gserviceaccount.com"):
        return email.split("@", 1)[1].removesuffix(".iam.gserviceaccount.com")
    principal = state.federated.get(token, "")
    if "/projects/" in principal:
        return principal.split("/projects/", 1)[1].split("/", 1)[0]
    return PROJECT


def make_app(
    behaviour: str = "ok",
    issued: Mapping[str, str] | None = None,
    federated: Mapping[str, str] | None = None,
) -> Starlette:
    state = VertexState()
    if issued is not None:
        state.issued = issued  # shared with the token service: what it issues is accepted
    if federated is not None:
        state.federated = federated  # Google STS's tokens, used without impersonation
    state.reset(behaviour)

    def who(request: Request) -> tuple[str | None, Response | None]:
        """('key' | 'token', None), or the refusal."""
        auth = request.headers.get("authorization", "")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
            if token in state.issued or token in state.tokens or token in state.federated:
                return "token", None
            return None, _error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                [_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", service="aiplatform.googleapis.com")],
            )
        if key:
            if key in state.express_keys:
                return "key", None
            return None, _error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [_info("API_KEY_INVALID", service="aiplatform.googleapis.com")],
            )
        return None, _error(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential.",
            [_info("CREDENTIALS_MISSING", service="aiplatform.googleapis.com")],
        )

    def disabled(project: str) -> Response:
        return _error(
            403,
            "PERMISSION_DENIED",
            f"Vertex AI API has not been used in project {project} before or it is "
            "disabled. Enable it by visiting https://console.developers.google.com/"
            f"apis/api/aiplatform.googleapis.com/overview?project={project} then retry.",
            [
                _info(
                    "SERVICE_DISABLED",
                    consumer=f"projects/{project}",
                    service="aiplatform.googleapis.com",
                )
            ],
        )

    def played(project: str) -> Response | None:
        match state.behaviour:
            case "service_disabled":
                return disabled(project)
            case "billing_disabled":
                return _error(
                    403,
                    "PERMISSION_DENIED",
                    f"This API method requires billing to be enabled. Please enable billing "
                    f"on project #{project} by visiting https://console.developers.google.com/"
                    "billing/enable then retry.",
                    [
                        _info(
                            "BILLING_DISABLED",
                            consumer=f"projects/{project}",
                            service="aiplatform.googleapis.com",
                        )
                    ],
                )
            case "rate_limited":
                return _error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Resource exhausted. Please try again later. Please refer to "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for "
                    "more details.",
                )
            case "unavailable":
                return _error(503, "UNAVAILABLE", "The service is currently unavailable.")
        return None

    def not_found(project: str, location: str, publisher: str, model: str) -> Response:
        return _error(
            404,
            "NOT_FOUND",
            f"Publisher Model `projects/{project}/locations/{location}/publishers/{publisher}/"
            f"models/{model}` was not found or your project does not have access to it. "
            "Please ensure you are using a valid model version.",
        )

    async def handle(request: Request) -> Response:
        seen = await state.record(request)
        path = request.url.path
        kind, refused = who(request)
        if refused is not None:
            return refused
        if state.behaviour == "echo":
            got = request.headers.get("authorization") or request.headers.get("x-goog-api-key")
            return _error(400, "INVALID_ARGUMENT", f"Request refused for credentials {got}.")
        if (listing := _LIST.match(path)) and request.method == "GET":
            if kind == "key":  # not an express-mode method
                return _error(
                    401,
                    "UNAUTHENTICATED",
                    "API keys are not supported by this API. Expected OAuth2 access token or "
                    "other authentication credentials that assert a principal.",
                    [_info("CREDENTIALS_MISSING", service="aiplatform.googleapis.com")],
                )
            token = request.headers["authorization"].removeprefix("Bearer ")
            user_project = request.headers.get("x-goog-user-project")
            if user_project is not None and user_project not in state.billable:
                # googleapis error_reason.proto, USER_PROJECT_DENIED.
                return _error(
                    403,
                    "PERMISSION_DENIED",
                    f"Caller does not have required permission to use project {user_project}. "
                    "Grant the caller the roles/serviceusage.serviceUsageConsumer role, or a "
                    "custom role with the serviceusage.services.use permission, by visiting "
                    "https://console.developers.google.com/iam-admin/iam/project?project="
                    f"{user_project} and then retry.",
                    [
                        _info(
                            "USER_PROJECT_DENIED",
                            consumer=f"projects/{user_project}",
                            service="aiplatform.googleapis.com",
                        )
                    ],
                )
            billed = user_project or home_project(state, token)
            if refused := played(billed):
                return refused
            if billed not in state.enabled:  # python-genai#2173: names the billed project
                return disabled(billed)
            names = GEMINI if listing["publisher"] == "google" else CLAUDE
            return JSONResponse(
                {
                    "publisherModels": [_publisher_model(listing["publisher"], names[0])],
                    "nextPageToken": "1",
                }
            )
        if request.method != "POST":
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        if (call := _PROJECT_CALL.match(path)) and kind == "token":
            project, location = call["project"], call["location"]
        elif (call := _EXPRESS_CALL.match(path)) and kind == "key":
            if call["publisher"] != "google":
                return not_found("express", "global", call["publisher"], call["model"])
            project, location = "express", "global"
        else:
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        if refused := played(project):
            return refused
        publisher, model, method = call["publisher"], call["model"], call["method"]
        resource = f"projects/{project}/locations/{location}/publishers/{publisher}/models/{model}"
        if kind == "token" and project not in state.granted:
            return _error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/{resource}' (or it may not exist).",
                [
                    _info(
                        "IAM_PERMISSION_DENIED",
                        domain="aiplatform.googleapis.com",
                        permission="aiplatform.endpoints.predict",
                        resource=resource,
                    )
                ],
            )
        body = seen.body if isinstance(seen.body, dict) else {}
        if publisher == "anthropic":
            return claude(project, location, model, method, body)
        if publisher != "google" or model not in GEMINI or location not in LOCATIONS["google"]:
            return not_found(project, location, publisher, model)
        if method == "countTokens":
            state.counted += 1
            return JSONResponse({"totalTokens": 8, "totalBillableCharacters": 27})
        if method == "generateContent":
            return generate(model, body)
        return _error(404, "NOT_FOUND", "Requested entity was not found.")

    def claude(
        project: str, location: str, model: str, method: str, body: dict[str, Any]
    ) -> Response:
        if location not in LOCATIONS["anthropic"] or method != "rawPredict":
            return not_found(project, location, "anthropic", model)
        if model == "count-tokens":
            if location not in COUNT_REGIONS:  # BerriAI/litellm PR #20348: 404 at global
                return not_found(project, location, "anthropic", model)
            named = body.get("model")
            if named not in CLAUDE:
                # Anthropic's own error body, passed through (anthropic `_exceptions.py`).
                return JSONResponse(
                    {
                        "type": "error",
                        "error": {"type": "not_found_error", "message": f"model: {named}"},
                    },
                    status_code=404,
                )
            state.counted += 1
            return JSONResponse({"input_tokens": 14})
        if model not in CLAUDE:
            return not_found(project, location, "anthropic", model)
        if not isinstance(body.get("anthropic_version"), str) or "model" in body:
            return JSONResponse(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "anthropic_version: Field required; model: the model goes "
                        "in the URL",
                    },
                },
                status_code=400,
            )
        state.generated += 1
        return JSONResponse(
            {
                "id": f"msg_vrtx_loopback{state.generated}",
                "type": "message",
                "role": "assistant",
                "model": model.split("@")[0],
                "content": [{"type": "text", "text": "OK"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 14, "output_tokens": 1},
            }
        )

    def generate(model: str, body: dict[str, Any]) -> Response:
        config = body.get("generationConfig") or {}
        if not body.get("contents") or config.get("maxOutputTokens") is None:
            return _error(400, "INVALID_ARGUMENT", "contents and maxOutputTokens are expected")
        state.generated += 1
        return JSONResponse(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "OK"}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 8,
                    "candidatesTokenCount": 1,
                    "totalTokenCount": 9,
                },
                "modelVersion": f"{model}-001",
            }
        )

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
    app.state.dialect = state
    return app
