"""Amazon Bedrock: the control plane proves the credentials and the model, the runtime answers
one tiny `Converse`.

Credentials: a Bedrock API key (`Authorization: Bearer`, from apiKeySecretRef), or AWS
credentials (`ctx.aws_credentials`, from awsCredentialsSecretRef or spec.identity.aws: the
session STS issued for the ServiceAccount's token, its session token signed along)
with which every request is signed (SigV4, service `bedrock` on both planes: the signing name
in botocore's `bedrock` and `bedrock-runtime` service models). With neither, requests go
unsigned, for a signing proxy in front; AWS itself refuses them (InvalidAPIKey).

Endpoints: `bedrock.{region}.amazonaws.com` (control plane) and
`bedrock-runtime.{region}.amazonaws.com` (runtime; `.amazonaws.com.cn` in the China
Regions). spec.endpoint replaces both: one base URL then serves both planes' paths, which do
not overlap (a gateway, a test server). VPC interface endpoints with private DNS, the
default, answer at the default names, so they need no spec.endpoint.

The steps (Bedrock API Reference, botocore's service models `bedrock/2023-04-20` and
`bedrock-runtime/2023-09-30`):

- Connectivity: ListFoundationModels (GET /foundation-models), free.
- Model: also GetFoundationModel (GET /foundation-models/{id}), or GetInferenceProfile (GET
  /inference-profiles/{id}) for an inference profile (an ARN of one, or an id with a
  geography prefix such as `us.` or `global.`), then the profile's model in this region
  (best effort). It proves the model or profile exists in the region, that a foundation
  model is invocable on demand (`inferenceTypesSupported`), and gives its `modelLifecycle`.
  It cannot prove that these credentials may invoke it: IAM authorizes each action on its
  own (bedrock:InvokeModel is not bedrock:GetFoundationModel), and no free call checks
  InvokeModel (CountTokens is free but is its own action, bedrock:CountTokens, for some
  models only). Inference proves it.
- Inference: also Converse (POST /model/{id}/converse) with `maxTokens: 16`; an answer cut
  at the budget counts.

One module, past the size of the OpenAI-style flavours: Bedrock shares nothing with them, and
its two planes, its model forms and its reading of AWS's errors change together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import quote

from llmconn.exchange import Reply, Signer
from llmconn.probes.aws import aws_error, signer
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, rate_limited, read_json
from llmconn.reasons import Reason
from llmconn.spec import LLMConnectionSpec, ValidationType
from llmconn.verdict import Lifecycle

TEST_MAX_TOKENS = 16
TEST_PROMPT = "Reply with the word OK."
SIGNING_NAME = "bedrock"
# Inference profile ids are a model id behind a geography (AWS user guide, "Supported Regions
# and models for inference profiles").
PROFILE_PREFIXES = ("us.", "us-gov.", "eu.", "apac.", "jp.", "au.", "ca.", "global.")
_PROFILE_ARN = (":inference-profile/", ":application-inference-profile/")

# AWS's refusals of the credentials themselves (AWS "Common Errors"; a Bedrock API key that is
# not valid is a 403 "Authentication failed: Please make sure your API Key is valid.", as
# users report it).
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)
_BAD_KEY_WORDS = ("authentication failed", "invalid api key")
_UNAVAILABLE = frozenset(
    {
        "InternalServerException",
        "ServiceUnavailableException",
        "ModelErrorException",
        "ModelNotReadyException",  # 429, "not ready to serve inference requests": it heals
        "ModelTimeoutException",
    }
)


def _suffix(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def control_plane(region: str) -> str:
    return f"https://bedrock.{region}.{_suffix(region)}"


def runtime(region: str) -> str:
    return f"https://bedrock-runtime.{region}.{_suffix(region)}"


def endpoint_for(spec: LLMConnectionSpec) -> str:
    return control_plane(spec.bedrock.region) if spec.bedrock is not None else ""


@registry.provider(
    "bedrock",
    default_endpoint="https://bedrock.{region}.amazonaws.com",
    title="Amazon Bedrock",
    requires=("bedrock",),
    aws_sigv4=True,
    endpoint_for=endpoint_for,
    identities=("aws",),  # STS AssumeRoleWithWebIdentity's session credentials
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    assert ctx.bedrock is not None  # required by the provider's declaration
    region = ctx.bedrock.region
    sign = None
    if ctx.aws_credentials is not None:
        sign = await signer(ctx.aws_credentials, region, SIGNING_NAME)
    vtype = ctx.validation_type
    model = ctx.model if vtype is ValidationType.CONNECTIVITY else ctx.required_model()

    listing = await _get(ctx, sign, "/foundation-models")
    body = read_json(
        ctx,
        listing,
        "the foundation model list",
        fits=has("modelSummaries", list),
        expected="`modelSummaries`",
        classify=classify,
        endpoint="the Bedrock control plane, or leave it unset",
    )
    found = {"modelCount": str(len(body["modelSummaries"])), "region": region}
    ctx.found.details.update(found)
    if vtype is ValidationType.CONNECTIVITY or model is None:
        said = f"The credentials are accepted in {region}; {found['modelCount']} foundation models."
        return ok(said, listing, **found)

    life = await check_model(ctx, sign, model)
    aside = _aside(life)
    if vtype is ValidationType.MODEL:
        said = (
            f"The credentials are accepted in {region}; model {model} is available.{aside} "
            "Whether these credentials may invoke it only type Inference proves."
        )
        return dataclasses.replace(ok(said, listing, **found), lifecycle=life)

    answer = await converse(ctx, sign, model, region)
    said = f"The credentials are accepted in {region}; model {model} answered a test Converse."
    return dataclasses.replace(ok(said + aside, answer, **found), lifecycle=life)


async def _get(ctx: ProbeContext, sign: Signer | None, path: str) -> Reply:
    return await ctx.request("GET", path, sign=sign)


def is_profile(model: str) -> bool:
    return any(part in model for part in _PROFILE_ARN) or model.startswith(PROFILE_PREFIXES)


def _segment(value: str) -> str:
    # A label in the URI is percent-encoded whole, ':' and '/' of ARNs included, as the AWS
    # SDKs' rest-json serializers do.
    return quote(value, safe="")


async def check_model(ctx: ProbeContext, sign: Signer | None, model: str) -> Lifecycle | None:
    """The model or inference profile exists in the region and can be invoked on demand;
    returns its lifecycle when it is not simply active."""
    what = f"model {model}"
    if is_profile(model):
        reply = await _get(ctx, sign, "/inference-profiles/" + _segment(model))
        profile = read_json(
            ctx,
            reply,
            f"inference profile {model}",
            fits=has("models", list),
            expected="an inference profile",
            classify=classify,
        )
        ctx.found.details["inferenceProfileType"] = str(profile.get("type"))[:64]
        status = profile.get("status")
        if status is not None and status != "ACTIVE":
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.MODEL_NOT_FOUND,
                    f"Inference profile {model} is {str(status)[:32]}, not ACTIVE.",
                    http_status=reply.status,
                )
            )
        return await _profile_lifecycle(ctx, sign, model, profile)
    if ":" in model and model.startswith("arn:") and ":foundation-model/" not in model:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"Model {model} is neither a foundation model nor an inference profile: type "
                "Model checks only those. Use type Inference (one Converse call) for "
                "provisioned throughput, custom or imported models.",
            )
        )
    reply = await _get(ctx, sign, "/foundation-models/" + _segment(model))
    body = read_json(
        ctx,
        reply,
        what,
        fits=has("modelDetails", dict),
        expected="`modelDetails`",
        classify=classify,
    )
    details: dict[str, Any] = body["modelDetails"]
    kinds = details.get("inferenceTypesSupported")
    if isinstance(kinds, list) and kinds and "ON_DEMAND" not in kinds:
        listed = ", ".join(str(k) for k in kinds)[:64]
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"Model {model} cannot be invoked on demand by its id (it supports {listed}). "
                "Set spec.model to an inference profile that contains it (for example "
                f"us.{model} or global.{model}) or to a provisioned throughput ARN.",
                http_status=reply.status,
            )
        )
    return lifecycle(model, details, reply)


async def _profile_lifecycle(
    ctx: ProbeContext, sign: Signer | None, model: str, profile: dict[str, Any]
) -> Lifecycle | None:
    """The lifecycle of the foundation model a profile routes to in this region, best effort:
    a lookup that fails (the identity may not read foundation models) tells nothing."""
    region = _region(ctx)
    arns = [m.get("modelArn") for m in profile["models"] if isinstance(m, dict)]
    here = [a for a in arns if isinstance(a, str) and f":bedrock:{region}:" in a]
    if not here:
        return None
    reply = await _get(ctx, sign, "/foundation-models/" + _segment(here[0]))
    body = reply.json()
    if reply.status != 200 or not isinstance(body, dict):
        return None
    details = body.get("modelDetails")
    return lifecycle(model, details, reply) if isinstance(details, dict) else None


def lifecycle(model: str, details: dict[str, Any], reply: Reply) -> Lifecycle | None:
    """`modelLifecycle` (FoundationModelLifecycle: `status` ACTIVE or LEGACY, `legacyTime`,
    `endOfLifeTime`, ISO 8601): LEGACY is deprecated; past its end of life, retired."""
    life = details.get("modelLifecycle")
    if not isinstance(life, dict) or life.get("status") != "LEGACY":
        return None
    legacy, end = life.get("legacyTime"), life.get("endOfLifeTime")
    found = Lifecycle(
        stage="deprecated",
        deprecated_at=legacy[:64] if isinstance(legacy, str) else None,
        retires_at=end[:64] if isinstance(end, str) else None,
    )
    if found.retires_at and _past(found.retires_at):
        raise ProbeFailure(
            ProbeOutcome(
                Reason.MODEL_RETIRED,
                f"Model {model} reached its end of life on {found.retires_at}: requests naming "
                "it fail. Move spec.model to an active model.",
                http_status=reply.status,
                lifecycle=dataclasses.replace(found, stage="retired"),
            )
        )
    return found


def _past(when: str) -> bool:
    try:
        moment = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment <= dt.datetime.now(dt.UTC)


def _aside(life: Lifecycle | None) -> str:
    if life is None:
        return ""
    when = f" and reaches its end of life on {life.retires_at}" if life.retires_at else ""
    return f" It is a legacy model{when}: plan the move."


async def converse(ctx: ProbeContext, sign: Signer | None, model: str, region: str) -> Reply:
    """One Converse call with a 16-token budget; the answer must carry `output`."""
    base = ctx.endpoint
    if base == control_plane(region):
        base = runtime(region)
    request = {
        "messages": [{"role": "user", "content": [{"text": TEST_PROMPT}]}],
        "inferenceConfig": {"maxTokens": TEST_MAX_TOKENS, "temperature": 0},
    }
    reply = await ctx.request(
        "POST", f"{base}/model/{_segment(model)}/converse", json_body=request, sign=sign
    )
    read_json(
        ctx,
        reply,
        f"the test Converse with model {model}",
        fits=has("output", dict),
        expected="`output`",
        classify=classify,
    )
    ctx.found.details["stopReason"] = str(reply.json().get("stopReason"))[:32]
    return reply


def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    """An AWS error answer -> a reason (the exceptions in the Bedrock API Reference for each
    operation, and AWS's common errors for the credentials)."""
    err = aws_error(reply)
    if err is None:
        return classify_error(ctx, reply, what)
    code, status, message = err.code or None, reply.status, err.message
    said = f": {message.rstrip('. ')}" if message else ""
    tag = f"HTTP {status}{' ' + code if code else ''}"
    words = message.lower()

    def out(reason: Reason, text: str) -> ProbeOutcome:
        return ProbeOutcome(reason, text, http_status=status, code=code)

    if code in _BAD_CREDENTIALS or status == 401 or any(w in words for w in _BAD_KEY_WORDS):
        hint = ctx.key_hint
        if ctx.api_key is None and ctx.aws_credentials is None:
            hint = (
                "set spec.apiKeySecretRef (a Bedrock API key), spec.awsCredentialsSecretRef "
                "(AWS access keys) or spec.identity.aws (a role for a ServiceAccount)"
            )
        return out(Reason.INVALID_API_KEY, f"AWS rejected the credentials ({tag}){said}; {hint}.")
    if code == "AccessDeniedException" or (code is None and status == 403):
        return out(
            Reason.PERMISSION_DENIED,
            f"The credentials are valid but not allowed to do this ({tag}){said}. Check the "
            "identity's IAM permissions for Bedrock in this region, and the model's access.",
        )
    if code == "ThrottlingException":
        return rate_limited(
            reply.headers,
            f"Bedrock is throttling these requests ({tag}){said}.",
            http_status=status,
            code=code,
        )
    if code == "ServiceQuotaExceededException":
        return out(
            Reason.QUOTA_EXCEEDED,
            f"The request exceeds a Bedrock service quota of the account ({tag}){said}. "
            "Raise the quota in Service Quotas.",
        )
    if code in _UNAVAILABLE or status >= 500:
        return out(Reason.PROVIDER_UNAVAILABLE, f"Bedrock is unavailable ({tag}){said}.")
    if code == "ResourceNotFoundException" and "end of its life" in words:
        return out(Reason.MODEL_RETIRED, f"{_cap(what)} is retired ({tag}){said}.")
    if code == "ResourceNotFoundException":
        return out(
            Reason.MODEL_NOT_FOUND,
            f"{_cap(what)} was not found in {_region(ctx)} ({tag}){said}. Check spec.model and "
            "spec.bedrock.region.",
        )
    if code == "ValidationException" and "on-demand throughput" in words:
        return out(
            Reason.INVALID_CONFIGURATION,
            f"{_cap(what)} cannot be invoked on demand by this id ({tag}){said}. Use an "
            "inference profile id or ARN that contains the model.",
        )
    if code == "ValidationException" and ("model identifier" in words or "model id" in words):
        return out(
            Reason.MODEL_NOT_FOUND,
            f"{_cap(what)} is not a model Bedrock knows in {_region(ctx)} ({tag}){said}. "
            "Check spec.model.",
        )
    if status in (400, 422):
        return out(
            Reason.INVALID_CONFIGURATION,
            f"Bedrock refused {what} as invalid ({tag}){said}. Check the spec.",
        )
    return out(
        Reason.UNEXPECTED_RESPONSE, f"{_cap(what)} returned an unexpected answer ({tag}){said}."
    )


def _region(ctx: ProbeContext) -> str:
    return ctx.bedrock.region if ctx.bedrock is not None else "the region"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
