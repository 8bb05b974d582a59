"""A loopback server speaking Amazon Bedrock's control plane and runtime, both on one origin
(as spec.endpoint makes them for the probe), checking credentials as AWS does.

`make_app(state)` serves ListFoundationModels, GetFoundationModel, GetInferenceProfile and
Converse. `BedrockState` says what it answers: the Region it is in, the access keys it knows
(with the secret it verifies each SigV4 signature with, and the session token temporary keys
need), the Bedrock API keys it accepts, the models and inference profiles of its Region, the
models an identity may not invoke, and a canned failure (`behaviour`).

Sources:
- Operations, their paths, bodies and errors: Amazon Bedrock API Reference (ListFoundationModels,
  GetFoundationModel, GetInferenceProfile, Converse) and botocore's service models
  `bedrock/2023-04-20` and `bedrock-runtime/2023-09-30` (FoundationModelDetails,
  FoundationModelLifecycle with ISO 8601 times, InferenceType, the httpStatusCode of each
  exception: AccessDeniedException 403, ThrottlingException 429, ValidationException 400,
  ResourceNotFoundException 404, ServiceQuotaExceededException 400, ModelNotReadyException 429,
  ServiceUnavailableException 503).
- The error shape: an `x-amzn-ErrorType` header ("Name:http://internal.amazon.com/coral/...")
  and a `{"message": ...}` body, as botocore's RestJSONParser reads it; `x-amzn-RequestId`.
- SigV4: IAM User Guide, "Create a signed AWS API request" (canonical request, string to
  sign, signing key, the path URI-encoded a second time for every service but S3) and AWS's
  common errors (UnrecognizedClientException "The security token included in the request is
  invalid.", InvalidSignatureException "The request signature we calculated does not match
  ...", "Signature expired", MissingAuthenticationTokenException). The verification below is
  written from those pages, not with botocore, so it checks the probe's signer independently.
- As users report them, not confirmed from a primary source: the 403 `{"Message":
  "Authentication failed: Please make sure your API Key is valid."}` for a bad Bedrock API
  key, "The provided model identifier is invalid." (ValidationException) for an unknown model,
  "This model version has reached the end of its life." (ResourceNotFoundException) and the
  on-demand refusal of a model served only through inference profiles.
- End of life (`retired`): the model is gone from ListFoundationModels and GetFoundationModel
  (Bedrock user guide, "Model lifecycle": after the end-of-life date a model "is no longer
  available"; gsd-build/gsd-2#5425 quotes the Converse answer), and GetFoundationModel answers
  it as an unknown id (not confirmed: the ValidationException above). Its system-defined
  inference profiles still answer GetInferenceProfile (not confirmed either).
- Legacy models an account has not used lately (`legacy_unused`): Converse answers
  ResourceNotFoundException "Access denied. This Model is marked by provider as Legacy and you
  have not been actively using the model in the last 15 days. ..." (as users report it:
  aws-samples/amazon-bedrock-workshop#386, gsd-build/gsd-2#5425).
- First-use gates (`gated`): AWS's "Troubleshooting Amazon Bedrock API Error Codes"
  (https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html)
  lists FTUFormNotFilled (404, "Model use case details have not been submitted for this
  account") and MPAgreementBeingCreated (403, "Your AWS Marketplace subscription for this model
  is still being processed"). Whether they come as the error type or as the message of a
  ResourceNotFoundException and an AccessDeniedException is not confirmed: `gate_style` plays
  both ("code", "message").
- Quotas: ServiceQuotaExceededException (400) is "Your request exceeds the service quota for
  your account. ... You can resubmit your request later." (botocore `bedrock-runtime`
  service model); a daily token quota is a ThrottlingException "Too many tokens per day,
  please wait before trying again." (as users report it: minorun365/agent-book#29).
- Temporary keys whose session ended (`expired`): 403 ExpiredTokenException "The security
  token included in the request is expired" (AWS "Common Errors").
- Inference profile ids carry a geography prefix; langchain-aws `MODEL_ID_GEO_PREFIXES`
  (libs/aws/langchain_aws/utils.py) has eu, us, us-gov, apac, sa, amer, global, jp and au.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.recording import DialectState

SERVICE = "bedrock"
MAX_SKEW = dt.timedelta(minutes=5)
FAULTS = ("throttled", "tokens_per_day", "quota", "unavailable", "not_ready", "html")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_CORAL = "http://internal.amazon.com/coral/com.amazon.bedrock/"


def model(
    model_id: str,
    *,
    status: str = "ACTIVE",
    legacy: str | None = None,
    end_of_life: str | None = None,
    inference_types: tuple[str, ...] = ("ON_DEMAND",),
) -> dict[str, Any]:
    """A FoundationModelDetails (also a FoundationModelSummary: the same members)."""
    provider, _, name = model_id.partition(".")
    lifecycle: dict[str, Any] = {"status": status, "startOfLifeTime": "2024-06-20T00:00:00Z"}
    if legacy:
        lifecycle["legacyTime"] = legacy
    if end_of_life:
        lifecycle["endOfLifeTime"] = end_of_life
    return {
        "modelArn": f"arn:aws:bedrock:{{region}}::foundation-model/{model_id}",
        "modelId": model_id,
        "modelName": name,
        "providerName": provider.capitalize(),
        "inputModalities": ["TEXT"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": list(inference_types),
        "modelLifecycle": lifecycle,
    }


HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET_37 = "anthropic.claude-3-7-sonnet-20250219-v1:0"  # inference profiles only
NOVA = "amazon.nova-lite-v1:0"


@dataclass
class BedrockState(DialectState):
    """What the server answers. Tests change the fields between requests."""

    BEHAVIOURS = frozenset({"ok", *FAULTS})

    region: str = "us-east-1"
    # access key id -> (secret access key, session token or None for long-term keys); also
    # the sessions a loopback STS issued (aws_sts.SessionKeys)
    access_keys: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    api_keys: frozenset[str] = frozenset()
    models: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            HAIKU: model(HAIKU),
            NOVA: model(NOVA),
            SONNET_37: model(SONNET_37, inference_types=("INFERENCE_PROFILE",)),
        }
    )
    profiles: tuple[str, ...] = (f"us.{SONNET_37}", f"global.{HAIKU}", f"amer.{NOVA}")
    invoke_denied: frozenset[str] = frozenset()  # models the identity may look up, not invoke
    retired: frozenset[str] = frozenset()  # past their end of life: unlisted, refused
    legacy_unused: frozenset[str] = frozenset()  # Legacy, and not used by this account lately
    gated: Mapping[str, str] = field(default_factory=dict)  # model -> "ftu" | "marketplace"
    gate_style: str = "code"  # how a gate answers: its own error type, or words (module doc)
    expired: frozenset[str] = frozenset()  # access key ids whose session has ended
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


Handler = Callable[[BedrockState, Request, Any], Awaitable[Response]]


def make_app(state: BedrockState | None = None) -> Starlette:
    routes = [
        Route("/foundation-models", _endpoint(_list), methods=["GET"]),
        Route("/foundation-models/{model_id:path}", _endpoint(_get_model), methods=["GET"]),
        Route("/inference-profiles/{profile_id:path}", _endpoint(_get_profile), methods=["GET"]),
        Route("/model/{model_id:path}/converse", _endpoint(_converse), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.bedrock = state or BedrockState()
    return app


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state: BedrockState = request.app.state.bedrock
        raw = await request.body()
        body = (await state.record(request)).body
        if (refused := _authenticate(state, request, raw)) is not None:
            return refused
        if (canned := _fault(state)) is not None:
            return canned
        return await handler(state, request, body)

    return endpoint


# --- credentials ---------------------------------------------------------------------------


def _authenticate(state: BedrockState, request: Request, body: bytes) -> Response | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme == "Bearer":
        if token in state.api_keys:
            return None
        # As users report a bad Bedrock API key: 403, "Message" capitalized, no error type.
        message = "Authentication failed: Please make sure your API Key is valid."
        return JSONResponse({"Message": message}, 403, headers=_rid())
    if not header:
        return _error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    return _verify_sigv4(state, request, body)


def _verify_sigv4(state: BedrockState, request: Request, body: bytes) -> Response | None:
    """Verify the signature as AWS does: rebuild the canonical request from what arrived."""
    found = _AUTH.match(request.headers["authorization"])
    if found is None:
        return _error(
            400, "IncompleteSignatureException", "Authorization header requires 'Credential'."
        )
    key_id, date, region, service, terminal = (found["credential"].split("/") + [""] * 5)[:5]
    signed = found["signed"].split(";")
    known = state.access_keys.get(key_id)
    token = request.headers.get("x-amz-security-token")
    if key_id in state.expired:
        return _error(
            403, "ExpiredTokenException", "The security token included in the request is expired"
        )
    if known is None or token != known[1]:
        return _error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    if region != state.region:
        return _error(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{region}'. ",
        )
    if service != SERVICE or terminal != "aws4_request":
        return _error(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SERVICE}'. ",
        )
    if "host" not in signed or "x-amz-date" not in signed:
        return _error(
            403,
            "InvalidSignatureException",
            "'Host' and 'X-Amz-Date' must be signed headers.",
        )
    if token is not None and "x-amz-security-token" not in signed:
        return _error(
            403, "InvalidSignatureException", "'X-Amz-Security-Token' must be a signed header."
        )
    stamp = request.headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return _error(400, "IncompleteSignatureException", "Invalid X-Amz-Date.")
    if abs(state.now() - when) > MAX_SKEW or stamp[:8] != date:
        return _error(
            403,
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than the allowed time window.",
        )
    canonical = "\n".join(
        [
            request.method,
            _canonical_uri(request.scope["raw_path"]),
            _canonical_query(request.scope["query_string"]),
            "".join(f"{name}:{_trimmed(request.headers.get(name, ''))}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + known[0]).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, found["signature"]):
        return _error(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
    return None


def _canonical_uri(raw_path: bytes) -> str:
    # Every service but S3: the path as sent (already encoded once) is URI-encoded again.
    return quote(raw_path.decode("ascii"), safe="/~") or "/"


def _canonical_query(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True)
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def _trimmed(value: str) -> str:
    return " ".join(value.split())


# --- answers ---------------------------------------------------------------------------------


def _fault(state: BedrockState) -> Response | None:
    match state.behaviour:
        case "throttled":
            text = "Too many requests, please wait before trying again."
            return _error(429, "ThrottlingException", text)
        case "tokens_per_day":  # minorun365/agent-book#29
            text = "Too many tokens per day, please wait before trying again."
            return _error(429, "ThrottlingException", text)
        case "quota":  # botocore bedrock-runtime: ServiceQuotaExceededException, 400
            text = (
                "Your request exceeds the service quota for your account. You can view your "
                "quotas at Viewing service quotas. You can resubmit your request later."
            )
            return _error(400, "ServiceQuotaExceededException", text)
        case "unavailable":
            return _error(503, "ServiceUnavailableException", "Service unavailable.")
        case "not_ready":
            text = "The model is not ready to serve inference requests."
            return _error(429, "ModelNotReadyException", text)
        case "html":
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>"
            return Response(page, 200, media_type="text/html")
    return None


def _details(state: BedrockState, model_id: str) -> dict[str, Any]:
    details = dict(state.models[model_id])
    details["modelArn"] = details["modelArn"].replace("{region}", state.region)
    return details


async def _list(state: BedrockState, request: Request, body: Any) -> Response:
    # End-of-life models leave the catalogue (module doc).
    summaries = [_details(state, m) for m in state.models if m not in state.retired]
    return _ok({"modelSummaries": summaries})


def _model_id(identifier: str) -> str:
    # A foundation model ARN names the model after "foundation-model/".
    return identifier.rsplit("foundation-model/", 1)[-1]


async def _get_model(state: BedrockState, request: Request, body: Any) -> Response:
    model_id = _model_id(request.path_params["model_id"])
    if model_id not in state.models or model_id in state.retired:
        return _error(400, "ValidationException", "The provided model identifier is invalid.")
    return _ok({"modelDetails": _details(state, model_id)})


async def _get_profile(state: BedrockState, request: Request, body: Any) -> Response:
    profile = request.path_params["profile_id"].rsplit("inference-profile/", 1)[-1]
    if profile not in state.profiles:
        return _error(404, "ResourceNotFoundException", "The inference profile was not found.")
    geography, _, model_id = profile.partition(".")
    arn = f"arn:aws:bedrock:{state.region}:123456789012:inference-profile/{profile}"
    return _ok(
        {
            "inferenceProfileName": f"{geography.upper()} {model_id}",
            "inferenceProfileArn": arn,
            "inferenceProfileId": profile,
            "models": [
                {"modelArn": f"arn:aws:bedrock:{state.region}::foundation-model/{model_id}"}
            ],
            "status": "ACTIVE",
            "type": "SYSTEM_DEFINED",
            "createdAt": "2025-02-19T00:00:00Z",
            "updatedAt": "2025-02-19T00:00:00Z",
            "description": f"Routes requests to {model_id} in {geography}.",
        }
    )


async def _converse(state: BedrockState, request: Request, body: Any) -> Response:
    target = _model_id(request.path_params["model_id"])
    profile = target in state.profiles
    model_id = target.partition(".")[2] if profile else target
    if model_id in state.retired:  # gsd-build/gsd-2#5425
        return _error(
            404,
            "ResourceNotFoundException",
            "This model version has reached the end of its life. Please refer to the AWS "
            "documentation for more details.",
        )
    if model_id not in state.models:
        return _error(400, "ValidationException", "The provided model identifier is invalid.")
    if target in state.invoke_denied or model_id in state.invoke_denied:
        arn = f"arn:aws:bedrock:{state.region}::foundation-model/{model_id}"
        return _error(
            403,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/agent is not authorized to perform: "
            f"bedrock:InvokeModel on resource: {arn} because no identity-based policy allows "
            "the bedrock:InvokeModel action",
        )
    if (gate := state.gated.get(model_id)) is not None:
        return _gate(state, gate)
    if model_id in state.legacy_unused:  # aws-samples/amazon-bedrock-workshop#386
        return _error(
            404,
            "ResourceNotFoundException",
            "Access denied. This Model is marked by provider as Legacy and you have not been "
            "actively using the model in the last 15 days. Please upgrade to an active model "
            "on Amazon Bedrock",
        )
    if not profile and "ON_DEMAND" not in state.models[model_id]["inferenceTypesSupported"]:
        return _error(
            400,
            "ValidationException",
            f"Invocation of model ID {model_id} with on-demand throughput isn't supported. "
            "Retry your request with the ID or ARN of an inference profile that contains "
            "this model.",
        )
    config = body.get("inferenceConfig") if isinstance(body, dict) else None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return _error(400, "ValidationException", "A conversation must start with a user message.")
    budget = config.get("maxTokens") if isinstance(config, dict) else None
    state.generated += 1
    cut = isinstance(budget, int) and budget <= 16
    return _ok(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "OK"}]}},
            "stopReason": "max_tokens" if cut else "end_turn",
            "usage": {"inputTokens": 12, "outputTokens": 1, "totalTokens": 13},
            "metrics": {"latencyMs": 211},
        }
    )


def _gate(state: BedrockState, gate: str) -> Response:
    """A first-use gate, as AWS's troubleshooting page names it (module doc)."""
    if gate == "ftu":
        cause = (
            "Model use case details have not been submitted for this account. Fill out the "
            "Anthropic use case details form before using the model."
        )
        code = "FTUFormNotFilled" if state.gate_style == "code" else "ResourceNotFoundException"
        return _error(404, code, cause)
    cause = (
        "Your account is not authorized to access this model. Your AWS Marketplace "
        "subscription for this model is still being processed. Please try again after 15 "
        "minutes."
    )
    code = "MPAgreementBeingCreated" if state.gate_style == "code" else "AccessDeniedException"
    return _error(403, code, cause)


def _rid() -> dict[str, str]:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def _ok(body: Any) -> Response:
    return JSONResponse(body, 200, headers=_rid())


def _error(status: int, code: str, message: str) -> Response:
    headers = {**_rid(), "x-amzn-ErrorType": f"{code}:{_CORAL}"}
    return JSONResponse({"message": message}, status, headers=headers)
