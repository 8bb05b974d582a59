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
  geography prefix: langchain-aws `MODEL_ID_GEO_PREFIXES`), then the profile's model in this
  region. An id GetFoundationModel refuses is asked of GetInferenceProfile before it is
  called unknown, so a geography no list names yet is found. It proves the model or profile
  exists in the region, that a foundation model is invocable on demand
  (`inferenceTypesSupported`), and gives its `modelLifecycle`. End-of-life models leave the
  catalogue (ListFoundationModels and GetFoundationModel no longer know them; Converse says
  "This model version has reached the end of its life"): Model cannot tell such an id from a
  misspelt one and says so, Inference asks Converse anyway and reports which; a profile
  whose model in this region the catalogue no longer has is ModelRetired. A lookup refused
  for other reasons (permissions) tells nothing.
  It cannot prove that these credentials may invoke it: IAM authorizes each action on its
  own (bedrock:InvokeModel is not bedrock:GetFoundationModel), and no free call checks
  InvokeModel (CountTokens is free but is its own action, bedrock:CountTokens, for some
  models only). Inference proves it.
- Inference: also Converse (POST /model/{id}/converse) with `maxTokens: 16`; an answer cut
  at the budget counts.

Refusals that are not what their type says (AWS's "Troubleshooting Amazon Bedrock API Error
Codes"; botocore's service models): FTUFormNotFilled (404, the Anthropic use-case form not
submitted) is PermissionDenied naming the form; MPAgreementBeingCreated (403, the Marketplace
subscription still being processed, "try again after 15 minutes") heals by itself:
ProviderUnavailable, retried after 15 minutes, never Stalled. A Legacy model the account has
not used lately is refused with ResourceNotFoundException "marked by provider as Legacy":
ModelRetired for this account. ServiceQuotaExceededException is "You can resubmit your
request later" (botocore) and a daily token quota ("Too many tokens per day", a
ThrottlingException) resets by itself within the day: both RateLimited (could not judge),
not QuotaExceeded, which waits for a human; the message says where to raise the quota.

One module, past the size of the OpenAI-style flavours: Bedrock shares nothing with them, and
its two planes, its model forms and its reading of AWS's errors change together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import quote

from llmconn.model.reasons import Reason
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import Reply, Signer
from llmconn.probes.aws import AwsError, aws_error, signer
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, rate_limited, read_json

TEST_MAX_TOKENS = 16
TEST_PROMPT = "Reply with the word OK."
SIGNING_NAME = "bedrock"
# Inference profile ids are a model id behind a geography (AWS user guide, "Supported Regions
# and models for inference profiles"; langchain-aws `MODEL_ID_GEO_PREFIXES`). Only a first
# guess: an id GetFoundationModel refuses is asked of GetInferenceProfile too.
PROFILE_PREFIXES = (
    "us.",
    "us-gov.",
    "eu.",
    "apac.",
    "jp.",
    "au.",
    "ca.",
    "sa.",
    "amer.",
    "global.",
)
# A Marketplace subscription being processed: AWS says to try again after 15 minutes.
MARKETPLACE_WAIT = 900.0
# A daily token quota resets within the day: look again in an hour, not every interval.
DAILY_QUOTA_WAIT = 3600.0
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

    life = await check_model(
        ctx, sign, model, listed=_ids(body), inference=vtype is ValidationType.INFERENCE
    )
    aside = _aside(life)
    if vtype is ValidationType.MODEL:
        said = (
            f"The credentials are accepted in {region}; model {model} is available.{aside} "
            "Whether these credentials may invoke it only type Inference proves."
        )
        return dataclasses.replace(ok(said, listing, **found), lifecycle=life)

    answer = await converse(ctx, sign, model, region, life)
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


def _ids(body: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        str(m.get("modelId"))
        for m in body["modelSummaries"]
        if isinstance(m, dict) and m.get("modelId")
    )


def _unknown_id(reply: Reply) -> bool:
    """A lookup's "no such id here": ResourceNotFoundException, or the ValidationException
    AWS gives an identifier it does not know."""
    err = aws_error(reply)
    if err is None:
        return False
    words = err.message.lower()
    return err.code == "ResourceNotFoundException" or (
        err.code == "ValidationException" and "identifier" in words
    )


async def check_model(
    ctx: ProbeContext,
    sign: Signer | None,
    model: str,
    *,
    listed: frozenset[str] = frozenset(),
    inference: bool = False,
) -> Lifecycle | None:
    """The model or inference profile exists in the region and can be invoked on demand;
    returns its lifecycle when it is not simply active. `listed` is ListFoundationModels'
    ids; with `inference`, what the lookups cannot tell is left to Converse."""
    what = f"model {model}"
    if is_profile(model):
        reply = await _get(ctx, sign, "/inference-profiles/" + _segment(model))
        profile = _read_profile(ctx, model, reply)
        return await _profile_lifecycle(ctx, sign, model, profile, listed, inference)
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
    if _unknown_id(reply):
        # Not a foundation model here: perhaps a profile of a geography no list knows yet.
        asked = await _get(ctx, sign, "/inference-profiles/" + _segment(model))
        if asked.status == 200:
            profile = _read_profile(ctx, model, asked)
            return await _profile_lifecycle(ctx, sign, model, profile, listed, inference)
        if inference:
            return None  # Converse tells an end of life from an unknown id
        refused = classify(ctx, reply, what)
        raise ProbeFailure(
            dataclasses.replace(
                refused,
                message=f"{_cap(what)} is neither a foundation model nor an inference "
                f"profile in {_region(ctx)} (GetFoundationModel: HTTP {reply.status}; "
                f"GetInferenceProfile: HTTP {asked.status}). Check spec.model and "
                "spec.bedrock.region. A model past its end of life is no longer listed either: "
                "type Inference (one Converse call) tells the two apart.",
            )
        )
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
        listed_kinds = ", ".join(str(k) for k in kinds)[:64]
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"Model {model} cannot be invoked on demand by its id (it supports "
                f"{listed_kinds}). Set spec.model to an inference profile that contains it (for "
                f"example us.{model} or global.{model}) or to a provisioned throughput ARN.",
                http_status=reply.status,
            )
        )
    return lifecycle(model, details, reply)


def _read_profile(ctx: ProbeContext, model: str, reply: Reply) -> dict[str, Any]:
    profile: dict[str, Any] = read_json(
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
    return profile


async def _profile_lifecycle(
    ctx: ProbeContext,
    sign: Signer | None,
    model: str,
    profile: dict[str, Any],
    listed: frozenset[str],
    inference: bool,
) -> Lifecycle | None:
    """The lifecycle of the foundation model a profile routes to in this region. A lookup
    refused for its permissions tells nothing; a model the catalogue no longer has (neither
    GetFoundationModel nor ListFoundationModels knows it) is past its end of life, which
    Converse confirms where it runs."""
    region = _region(ctx)
    arns = [m.get("modelArn") for m in profile["models"] if isinstance(m, dict)]
    here = [a for a in arns if isinstance(a, str) and f":bedrock:{region}:" in a]
    if not here:
        return None
    reply = await _get(ctx, sign, "/foundation-models/" + _segment(here[0]))
    member = here[0].rsplit("foundation-model/", 1)[-1]
    if _unknown_id(reply) and member not in listed and not inference:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.MODEL_RETIRED,
                f"Inference profile {model} routes to {member} in {region}, which Bedrock no "
                f"longer has (GetFoundationModel: HTTP {reply.status}; not in "
                "ListFoundationModels): models leave the catalogue at their end of life, so "
                "it is read as retired. Move spec.model to an active model.",
                http_status=reply.status,
                code=(aws_error(reply) or AwsError("", "")).code or None,
                lifecycle=Lifecycle(stage="retired"),
            )
        )
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


async def converse(
    ctx: ProbeContext,
    sign: Signer | None,
    model: str,
    region: str,
    life: Lifecycle | None = None,
) -> Reply:
    """One Converse call with a 16-token budget; the answer must carry `output`. `life` is
    what the lookups found, for a retirement's verdict."""
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
    try:
        read_json(
            ctx,
            reply,
            f"the test Converse with model {model}",
            fits=has("output", dict),
            expected="`output`",
            classify=classify,
        )
    except ProbeFailure as failure:
        found = failure.outcome
        if found.reason is Reason.MODEL_RETIRED:
            known = life or Lifecycle(stage="retired")
            raise ProbeFailure(
                dataclasses.replace(found, lifecycle=dataclasses.replace(known, stage="retired"))
            ) from None
        raise
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

    ref = ctx.aws_credentials_ref
    if code == "ExpiredTokenException" and ref is not None and ref.session_token_key:
        return out(
            Reason.INVALID_API_KEY,
            f"AWS says the session token in key {ref.session_token_key} of Secret {ref.name} "
            f"has expired ({tag}){said}. Temporary credentials kept in a Secret stop working "
            "when their session ends: put fresh ones there, or use long-term keys, or "
            "spec.identity.aws, which starts a new session at every validation.",
        )
    if code in _BAD_CREDENTIALS or status == 401 or any(w in words for w in _BAD_KEY_WORDS):
        hint = ctx.key_hint
        if ctx.api_key is None and ctx.aws_credentials is None:
            hint = (
                "set spec.apiKeySecretRef (a Bedrock API key), spec.awsCredentialsSecretRef "
                "(AWS access keys) or spec.identity.aws (a role for a ServiceAccount)"
            )
        return out(Reason.INVALID_API_KEY, f"AWS rejected the credentials ({tag}){said}; {hint}.")
    if code == "FTUFormNotFilled" or "use case details" in words:
        return out(
            Reason.PERMISSION_DENIED,
            f"Bedrock refuses {what} until the account submits the Anthropic use case details "
            f"form ({tag}){said}. Submit it in the Bedrock console (Model catalog, the "
            "model's page), once per account or organization; then the model answers.",
        )
    if code == "MPAgreementBeingCreated" or "subscription for this model is still" in words:
        return ProbeOutcome(
            Reason.PROVIDER_UNAVAILABLE,
            f"The account's AWS Marketplace subscription for the model is still being "
            f"processed ({tag}){said}. It completes by itself: checking again in 15 minutes.",
            http_status=status,
            code=code,
            retry_after=MARKETPLACE_WAIT,
        )
    if code == "AccessDeniedException" or (code is None and status == 403):
        return out(
            Reason.PERMISSION_DENIED,
            f"The credentials are valid but not allowed to do this ({tag}){said}. Check the "
            "identity's IAM permissions for Bedrock in this region, and the model's access.",
        )
    if code == "ThrottlingException" and "per day" in words:
        # A daily quota: it resets by itself, so it is no verdict on the connection.
        return rate_limited(
            reply.headers,
            f"The account has used its Bedrock tokens for the day ({tag}){said}. The quota "
            'resets within the day; if agents reach it, raise "tokens per day" for the '
            "model in Service Quotas.",
            http_status=status,
            code=code,
            wait=DAILY_QUOTA_WAIT,
        )
    if code == "ThrottlingException":
        return rate_limited(
            reply.headers,
            f"Bedrock is throttling these requests ({tag}){said}.",
            http_status=status,
            code=code,
        )
    if code == "ServiceQuotaExceededException":
        # botocore: "You can resubmit your request later": a quota window, not a verdict.
        return rate_limited(
            reply.headers,
            f"The request exceeds a Bedrock service quota of the account ({tag}){said}. "
            "If it persists, raise the quota in Service Quotas.",
            http_status=status,
            code=code,
        )
    if code in _UNAVAILABLE or status >= 500:
        return out(Reason.PROVIDER_UNAVAILABLE, f"Bedrock is unavailable ({tag}){said}.")
    if code == "ResourceNotFoundException" and "end of its life" in words:
        return out(
            Reason.MODEL_RETIRED,
            f"{_cap(what)}: the model is past its end of life ({tag}){said}. Move spec.model "
            "to an active model.",
        )
    if code == "ResourceNotFoundException" and "marked by provider as legacy" in words:
        return out(
            Reason.MODEL_RETIRED,
            f"{_cap(what)}: Bedrock serves this Legacy model only to accounts that used it "
            f"lately, and this one has not ({tag}){said}. For this account it is retired: "
            "move spec.model to an active model.",
        )
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
