"""The bedrock and xai probes through the validation core (spec + Secrets -> verdict), against
loopback servers speaking each dialect: Bedrock's two planes checking SigV4 signatures and
Bedrock API keys as AWS does (tests/servers/bedrock_dialect.py), and xAI's OpenAI-style API
with its key check (tests/servers/openai_dialect.py, flavour xai)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pydantic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmconn.model.reasons import STALLING, TRANSIENT, Reason
from llmconn.model.verdict import Defaults, SecretData, Verdict
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import bedrock, parse_spec, registry
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.bedrock_dialect import HAIKU, NOVA, SONNET_37, BedrockState, make_app, model
from servers.openai_dialect import Dialect
from servers.openai_dialect import make_app as openai_app
from servers.serve import serve

ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TEMP_KEY_ID = "ASIAQEXAMPLETEMPKEY7"
TEMP_SECRET = "tEmPoRaRy/SeCrEt+AcCeSs/kEy/0123456789ab"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQD-session-token"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlLWtleS0xMjM0NTY3ODkw"
XAI_KEY = "xai-" + "k" * 20 + "0123456789abcdef"

AWS_SECRET = {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
TEMP_SECRET_DATA = {"id": TEMP_KEY_ID, "secret": TEMP_SECRET, "token": SESSION_TOKEN}
ALL_SECRETS = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, TEMP_KEY_ID, TEMP_SECRET, SESSION_TOKEN, API_KEY)
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


class Secrets:
    def __init__(self, secrets: Mapping[str, Mapping[str, str]]) -> None:
        self.secrets = {
            name: SecretData({k: v.encode() for k, v in data.items()}, resource_version="7")
            for name, data in secrets.items()
        }

    async def get(self, name: str) -> SecretData | None:
        return self.secrets.get(name)


SECRETS = Secrets({"aws": AWS_SECRET, "temp": TEMP_SECRET_DATA, "key": {"apiKey": API_KEY}})


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    yield clients
    await clients.aclose()


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[Starlette, str]]:
    app = make_app()
    with serve(app) as url:
        yield app, url


@pytest.fixture
def state(aws: tuple[Starlette, str]) -> BedrockState:
    """A fresh Bedrock for each test: keys known, the default models of us-east-1."""
    fresh = BedrockState(
        access_keys={
            ACCESS_KEY_ID: (SECRET_ACCESS_KEY, None),
            TEMP_KEY_ID: (TEMP_SECRET, SESSION_TOKEN),
        },
        api_keys=frozenset({API_KEY}),
    )
    aws[0].state.bedrock = fresh
    return fresh


def bedrock_spec(url: str, **extra: Any) -> Any:
    raw: dict[str, Any] = {
        "provider": "bedrock",
        "endpoint": url,
        "bedrock": {"region": "us-east-1"},
        "awsCredentialsSecretRef": {"name": "aws"},
        "model": HAIKU,
    }
    raw.update(extra)
    return parse_spec({k: v for k, v in raw.items() if v is not None})


async def run_bedrock(
    aws: tuple[Starlette, str], pool: ClientPool, secrets: Secrets = SECRETS, **extra: Any
) -> Verdict:
    verdict = await validate(
        bedrock_spec(aws[1], **extra), secrets, pool, Defaults(), now=lambda: NOW
    )
    text = json.dumps([verdict.message, verdict.code, dict(verdict.details), verdict.request_id])
    assert not [s for s in ALL_SECRETS if s in text or s[4:16] in text]
    return verdict


# --- bedrock: credentials ---------------------------------------------------------------------


@pytest.mark.parametrize("vtype", ["Connectivity", "Model", "Inference"])
async def test_signed_with_access_keys_it_validates_each_type(
    aws: Any, pool: ClientPool, state: BedrockState, vtype: str
) -> None:
    verdict = await run_bedrock(aws, pool, validation={"type": vtype})
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert verdict.details["modelCount"] == "3" and verdict.details["region"] == "us-east-1"
    assert verdict.request_id  # x-amzn-RequestId
    assert verdict.endpoint == aws[1]
    paths = [seen.path for seen in state.seen]
    expected = {
        "Connectivity": ["/foundation-models"],
        "Model": ["/foundation-models", f"/foundation-models/{HAIKU}"],
        "Inference": [
            "/foundation-models",
            f"/foundation-models/{HAIKU}",
            f"/model/{HAIKU}/converse",
        ],
    }[vtype]
    assert paths == expected
    for seen in state.seen:
        assert seen.headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"
        )
        assert "/us-east-1/bedrock/aws4_request" in seen.headers["authorization"]
        assert "x-amz-security-token" not in seen.headers
    assert state.generated == (1 if vtype == "Inference" else 0)


async def test_model_says_that_only_inference_proves_invoke_permission(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.invoke_denied = frozenset({HAIKU})
    verdict = await run_bedrock(aws, pool)
    assert verdict.reason is Reason.VALIDATED
    assert "only type Inference proves" in verdict.message
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert verdict.code == "AccessDeniedException" and verdict.http_status == 403
    assert "bedrock:InvokeModel" in verdict.message


async def test_the_converse_call_is_tiny_and_names_the_model_as_one_segment(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert verdict.reason is Reason.VALIDATED
    converse = state.seen[-1]
    assert converse.method == "POST"
    assert converse.body["inferenceConfig"]["maxTokens"] == 16
    assert converse.body["messages"][0]["role"] == "user"
    assert verdict.details["stopReason"] == "max_tokens"


async def test_temporary_credentials_send_the_session_token(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    ref = {
        "name": "temp",
        "accessKeyIdKey": "id",
        "secretAccessKeyKey": "secret",
        "sessionTokenKey": "token",
    }
    verdict = await run_bedrock(aws, pool, awsCredentialsSecretRef=ref)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert all(seen.headers["x-amz-security-token"] == SESSION_TOKEN for seen in state.seen)
    assert [o.name for o in verdict.observed_secrets] == ["temp"]
    # The same keys without their token are not recognized.
    del ref["sessionTokenKey"]
    verdict = await run_bedrock(aws, pool, awsCredentialsSecretRef=ref)
    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "UnrecognizedClientException"
    assert "update keys id and secret of Secret temp" in verdict.message


async def test_a_wrong_secret_access_key_fails_the_signature(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    wrong = Secrets({"aws": {**AWS_SECRET, "AWS_SECRET_ACCESS_KEY": "x" * 40}})
    verdict = await run_bedrock(aws, pool, secrets=wrong)
    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "InvalidSignatureException" and verdict.http_status == 403
    assert "signature we calculated does not match" in verdict.message
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY of Secret aws" in verdict.message
    assert "x" * 12 not in verdict.message


async def test_an_unknown_access_key_is_unrecognized(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.access_keys = {}
    verdict = await run_bedrock(aws, pool)
    assert (verdict.reason, verdict.code) == (Reason.INVALID_API_KEY, "UnrecognizedClientException")


async def test_requests_are_signed_for_the_spec_region(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.region = "eu-central-1"
    verdict = await run_bedrock(aws, pool)
    assert verdict.code == "InvalidSignatureException"
    assert "scoped to a valid region, not 'us-east-1'" in verdict.message
    verdict = await run_bedrock(aws, pool, bedrock={"region": "eu-central-1"})
    assert verdict.reason is Reason.VALIDATED


async def test_a_bedrock_api_key_goes_as_a_bearer_token(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    extra = {"awsCredentialsSecretRef": None, "apiKeySecretRef": {"name": "key"}}
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"}, **extra)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert all(seen.headers["authorization"] == f"Bearer {API_KEY}" for seen in state.seen)
    state.api_keys = frozenset()
    verdict = await run_bedrock(aws, pool, **extra)
    assert verdict.reason is Reason.INVALID_API_KEY and verdict.http_status == 403
    assert "update key apiKey of Secret key" in verdict.message


async def test_no_credentials_at_all_is_refused_by_aws(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    verdict = await run_bedrock(aws, pool, awsCredentialsSecretRef=None)
    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "MissingAuthenticationTokenException"
    assert "authorization" not in state.seen[0].headers


async def test_a_missing_secret_key_names_it(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    partial = Secrets({"aws": {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID}})
    verdict = await run_bedrock(aws, pool, secrets=partial)
    assert verdict.reason is Reason.SECRET_KEY_NOT_FOUND
    assert "no key AWS_SECRET_ACCESS_KEY (spec.awsCredentialsSecretRef)" in verdict.message
    assert state.seen == type(state.seen)()  # nothing was sent


async def test_credentials_echoed_by_the_provider_are_redacted(pool: ClientPool) -> None:
    async def echo(request: Request) -> JSONResponse:
        said = json.dumps(dict(request.headers))
        return JSONResponse(
            {"message": said}, 403, headers={"x-amzn-ErrorType": "AccessDeniedException"}
        )

    app = Starlette(routes=[Route("/{path:path}", echo)])
    ref = {"name": "temp", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}
    ref["sessionTokenKey"] = "token"
    with serve(app) as url:
        verdict = await run_bedrock((app, url), pool, awsCredentialsSecretRef=ref)
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert "x-amz-security-token" in verdict.message and "[REDACTED]" in verdict.message


# --- bedrock: models --------------------------------------------------------------------------


async def test_a_model_the_region_does_not_have_is_model_not_found(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    verdict = await run_bedrock(aws, pool, model="meta.llama3-1-405b-instruct-v1:0")
    assert verdict.reason is Reason.MODEL_NOT_FOUND
    assert verdict.code == "ValidationException"
    assert "us-east-1" in verdict.message


async def test_an_inference_profile_is_looked_up_as_one(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    profile = f"us.{SONNET_37}"
    verdict = await run_bedrock(aws, pool, model=profile, validation={"type": "Inference"})
    assert verdict.reason is Reason.VALIDATED, verdict.message
    arn_here = f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET_37}"
    assert [seen.path for seen in state.seen][1:] == [
        f"/inference-profiles/{profile}",
        f"/foundation-models/{arn_here}",
        f"/model/{profile}/converse",
    ]
    assert verdict.details["inferenceProfileType"] == "SYSTEM_DEFINED"
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{profile}"
    assert (await run_bedrock(aws, pool, model=arn)).reason is Reason.VALIDATED
    missing = await run_bedrock(aws, pool, model=f"eu.{SONNET_37}")
    assert (missing.reason, missing.code) == (Reason.MODEL_NOT_FOUND, "ResourceNotFoundException")


async def test_a_model_served_only_through_profiles_is_refused_before_any_token(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    verdict = await run_bedrock(aws, pool, model=SONNET_37, validation={"type": "Inference"})
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"us.{SONNET_37}" in verdict.message
    assert state.generated == 0 and not any("converse" in s.path for s in state.seen)


async def test_a_foundation_model_arn_is_looked_up(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA}"
    verdict = await run_bedrock(aws, pool, model=arn)
    assert verdict.reason is Reason.VALIDATED
    assert state.seen[-1].path == f"/foundation-models/{arn}"


async def test_other_arns_need_inference(aws: Any, pool: ClientPool, state: BedrockState) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"
    verdict = await run_bedrock(aws, pool, model=arn)
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "type Inference" in verdict.message


async def test_a_legacy_model_is_deprecated_with_its_dates(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.models[HAIKU] = model(
        HAIKU, status="LEGACY", legacy="2026-06-01T00:00:00Z", end_of_life="2099-01-15T00:00:00Z"
    )
    verdict = await run_bedrock(aws, pool)
    assert verdict.reason is Reason.VALIDATED
    assert verdict.lifecycle is not None
    assert verdict.lifecycle.stage == "deprecated"
    assert verdict.lifecycle.deprecated_at == "2026-06-01T00:00:00Z"
    assert verdict.lifecycle.retires_at == "2099-01-15T00:00:00Z"
    assert "legacy model" in verdict.message


async def test_a_profile_reports_the_lifecycle_of_its_model_in_the_region(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.models[SONNET_37] = model(
        SONNET_37,
        status="LEGACY",
        end_of_life="2099-03-01T00:00:00Z",
        inference_types=("INFERENCE_PROFILE",),
    )
    verdict = await run_bedrock(aws, pool, model=f"us.{SONNET_37}")
    assert verdict.reason is Reason.VALIDATED
    assert verdict.lifecycle is not None and verdict.lifecycle.retires_at == "2099-03-01T00:00:00Z"


async def test_no_credentials_name_every_way_to_give_them(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    verdict = await run_bedrock(aws, pool, awsCredentialsSecretRef=None)
    assert (
        "spec.apiKeySecretRef (a Bedrock API key), spec.awsCredentialsSecretRef (AWS access "
        "keys) or spec.identity.aws"
    ) in verdict.message


async def test_a_model_past_its_end_of_life_is_retired(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.models[HAIKU] = model(HAIKU, status="LEGACY", end_of_life="2025-01-15T00:00:00Z")
    verdict = await run_bedrock(aws, pool)
    assert verdict.reason is Reason.MODEL_RETIRED
    assert verdict.lifecycle is not None and verdict.lifecycle.stage == "retired"
    # At the runtime, the end of life is a ResourceNotFoundException saying so.
    state.models[HAIKU] = model(HAIKU)
    state.retired = frozenset({HAIKU})
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert (verdict.reason, verdict.code) == (Reason.MODEL_RETIRED, "ResourceNotFoundException")


async def test_a_legacy_model_this_account_has_not_used_lately_is_retired_for_it(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    # Issue 24, item 5: Converse's ResourceNotFoundException says why; it is no typo.
    state.models[HAIKU] = model(
        HAIKU, status="LEGACY", legacy="2026-06-01T00:00:00Z", end_of_life="2099-01-15T00:00:00Z"
    )
    state.legacy_unused = frozenset({HAIKU})
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert verdict.reason is Reason.MODEL_RETIRED, verdict.message
    assert verdict.code == "ResourceNotFoundException"
    assert "Legacy" in verdict.message and "Check spec.model" not in verdict.message
    assert verdict.lifecycle is not None and verdict.lifecycle.stage == "retired"
    assert verdict.lifecycle.retires_at == "2099-01-15T00:00:00Z"


async def test_an_end_of_life_model_is_retired_though_no_lookup_finds_it(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    # Issue 24, item 6: end-of-life models leave the catalogue; Converse says why.
    state.retired = frozenset({HAIKU})
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert (verdict.reason, verdict.code) == (Reason.MODEL_RETIRED, "ResourceNotFoundException")
    assert state.generated == 0
    # Model cannot tell an unlisted model from a misspelt one, and says what would.
    verdict = await run_bedrock(aws, pool)
    assert verdict.reason is Reason.MODEL_NOT_FOUND
    assert "end of life" in verdict.message and "type Inference" in verdict.message


@pytest.mark.parametrize("vtype", ["Model", "Inference"])
async def test_a_profile_whose_model_left_the_catalogue_does_not_pass(
    aws: Any, pool: ClientPool, state: BedrockState, vtype: str
) -> None:
    # Issue 24, item 6: the profile answers, its model in this region does not.
    state.retired = frozenset({SONNET_37})
    verdict = await run_bedrock(aws, pool, model=f"us.{SONNET_37}", validation={"type": vtype})
    assert verdict.reason is Reason.MODEL_RETIRED, verdict.message
    assert state.generated == 0


@pytest.mark.parametrize("style", ["code", "message"])
async def test_the_anthropic_use_case_form_is_permission_denied_naming_it(
    aws: Any, pool: ClientPool, state: BedrockState, style: str
) -> None:
    # Issue 24, item 7: AWS's troubleshooting page, FTUFormNotFilled (404).
    state.gated, state.gate_style = {HAIKU: "ftu"}, style
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert verdict.reason is Reason.PERMISSION_DENIED, verdict.message
    assert verdict.http_status == 404
    assert "use case details form" in verdict.message


@pytest.mark.parametrize("style", ["code", "message"])
async def test_a_marketplace_subscription_being_processed_heals_by_itself(
    aws: Any, pool: ClientPool, state: BedrockState, style: str
) -> None:
    # Issue 24, item 7: MPAgreementBeingCreated (403), "try again after 15 minutes".
    state.gated, state.gate_style = {HAIKU: "marketplace"}, style
    verdict = await run_bedrock(aws, pool, validation={"type": "Inference"})
    assert verdict.reason in TRANSIENT and verdict.reason not in STALLING, verdict.message
    assert verdict.http_status == 403
    assert verdict.retry_after == 900
    assert "Marketplace subscription" in verdict.message


@pytest.mark.parametrize("prefix", ["amer", "sa", "jp", "au", "us-gov", "mx"])
async def test_inference_profiles_of_every_geography_are_found(
    aws: Any, pool: ClientPool, state: BedrockState, prefix: str
) -> None:
    # Issue 24, item 8: langchain-aws MODEL_ID_GEO_PREFIXES; and a geography no list has yet
    # ("mx." here) is found by asking GetInferenceProfile once GetFoundationModel refuses it.
    profile = f"{prefix}.{NOVA}"
    state.profiles = (*state.profiles, profile)
    verdict = await run_bedrock(aws, pool, model=profile, validation={"type": "Inference"})
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert f"/inference-profiles/{profile}" in [seen.path for seen in state.seen]
    assert state.seen[-1].path == f"/model/{profile}/converse"


async def test_a_daily_token_quota_waits_for_the_day_instead_of_stalling(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    # Issue 24, item 11: a ThrottlingException "Too many tokens per day" resets by itself.
    state.reset("tokens_per_day")
    verdict = await run_bedrock(aws, pool)
    assert (verdict.reason, verdict.code) == (Reason.RATE_LIMITED, "ThrottlingException")
    assert "per day" in verdict.message and "Service Quotas" in verdict.message
    assert verdict.retry_after == 3600


async def test_an_expired_session_token_in_a_secret_says_so(
    aws: Any, pool: ClientPool, state: BedrockState
) -> None:
    state.expired = frozenset({TEMP_KEY_ID})
    ref = {
        "name": "temp",
        "accessKeyIdKey": "id",
        "secretAccessKeyKey": "secret",
        "sessionTokenKey": "token",
    }
    verdict = await run_bedrock(aws, pool, awsCredentialsSecretRef=ref)
    assert (verdict.reason, verdict.code) == (Reason.INVALID_API_KEY, "ExpiredTokenException")
    assert "session token in key token of Secret temp has expired" in verdict.message
    assert "spec.identity.aws" in verdict.message


# --- bedrock: the service's own failures --------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour, reason, code",
    [
        ("throttled", Reason.RATE_LIMITED, "ThrottlingException"),
        # Issue 24, item 11: botocore says "You can resubmit your request later".
        ("quota", Reason.RATE_LIMITED, "ServiceQuotaExceededException"),
        ("unavailable", Reason.PROVIDER_UNAVAILABLE, "ServiceUnavailableException"),
        ("not_ready", Reason.PROVIDER_UNAVAILABLE, "ModelNotReadyException"),
        ("html", Reason.UNEXPECTED_RESPONSE, None),
    ],
)
async def test_service_failures_are_named(
    aws: Any, pool: ClientPool, state: BedrockState, behaviour: str, reason: Reason, code: str
) -> None:
    state.reset(behaviour)
    verdict = await run_bedrock(aws, pool)
    assert (verdict.reason, verdict.code) == (reason, code), verdict.message


# --- bedrock: the spec and the endpoints -----------------------------------------------------


def test_the_default_endpoints_are_the_regions() -> None:
    info = registry.get("bedrock")
    spec = parse_spec({"provider": "bedrock", "bedrock": {"region": "eu-central-1"}})
    assert info.base_url(None, spec) == "https://bedrock.eu-central-1.amazonaws.com"
    assert bedrock.runtime("eu-central-1") == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert bedrock.control_plane("cn-north-1") == "https://bedrock.cn-north-1.amazonaws.com.cn"
    given = "https://vpce-0a1b.bedrock.us-east-1.vpce.amazonaws.com"
    spec = parse_spec(
        {"provider": "bedrock", "endpoint": given, "bedrock": {"region": "us-east-1"}}
    )
    assert info.base_url(spec.endpoint, spec) == given


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"provider": "bedrock"}, "bedrock.region is required"),
        ({"bedrock": {"region": "us-east-1.evil.example"}}, "bedrock.region"),
        ({"bedrock": {"region": "US-EAST-1"}}, "bedrock.region"),
        (
            {"provider": "openai", "awsCredentialsSecretRef": {"name": "aws"}},
            "only allowed with provider bedrock",
        ),
        (
            {"apiKeySecretRef": {"name": "k"}, "awsCredentialsSecretRef": {"name": "aws"}},
            "use one of the two",
        ),
        ({"awsCredentialsSecretRef": {"name": "../other/aws"}}, "not a Secret name"),
        ({"headers": {"X-Amz-Security-Token": "t"}}, "carries credentials"),
        (
            {
                "awsCredentialsSecretRef": {"name": "aws"},
                "headersFromSecret": [{"name": "Authorization", "secretKeyRef": {"name": "s"}}],
            },
            "awsCredentialsSecretRef fills",
        ),
    ],
)
def test_the_spec_refuses(raw: dict[str, Any], words: str) -> None:
    # A raw spec naming its provider is whole; others are added to a bedrock spec.
    spec = raw if "provider" in raw else {"provider": "bedrock", "bedrock": {"region": "us-east-1"}}
    spec = {**spec, **raw}
    with pytest.raises(pydantic.ValidationError) as caught:
        parse_spec(spec)
    assert words in str(caught.value)


def test_every_aws_secret_key_is_a_reference_that_triggers() -> None:
    spec = parse_spec(
        {
            "provider": "bedrock",
            "bedrock": {"region": "us-gov-west-1"},
            "awsCredentialsSecretRef": {"name": "aws", "sessionTokenKey": "AWS_SESSION_TOKEN"},
        }
    )
    assert [(r.name, r.key) for r in spec.secret_refs] == [
        ("aws", "AWS_ACCESS_KEY_ID"),
        ("aws", "AWS_SECRET_ACCESS_KEY"),
        ("aws", "AWS_SESSION_TOKEN"),
    ]


def test_botocore_is_imported_only_by_a_probe_that_signs() -> None:
    code = (
        "import sys, llmconn.validation.validate, llmconn.cli.oneshot, llmconn.probes;"
        "assert not [m for m in sys.modules if m.startswith('botocore')], 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- xai --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xai_server() -> Iterator[tuple[Starlette, str]]:
    app = openai_app(prefix="/v1")
    with serve(app) as url:
        yield app, url


@pytest.fixture
def xai(xai_server: tuple[Starlette, str]) -> tuple[Dialect, str]:
    dialect = Dialect(flavour="xai", keys=frozenset({XAI_KEY}), models=("grok-4", "grok-3-mini"))
    xai_server[0].state.dialect = dialect
    return dialect, xai_server[1]


async def run_xai(
    url: str, pool: ClientPool, key: str = XAI_KEY, endpoint: str = "/v1", **extra: Any
) -> Verdict:
    raw = {
        "provider": "xai",
        "endpoint": url + endpoint,
        "model": "grok-4",
        "apiKeySecretRef": {"name": "xai"},
        **extra,
    }
    verdict = await validate(
        parse_spec(raw), Secrets({"xai": {"apiKey": key}}), pool, Defaults(), now=lambda: NOW
    )
    assert key not in json.dumps([verdict.message, dict(verdict.details)])
    return verdict


@pytest.mark.parametrize("vtype", ["Connectivity", "Model", "Inference"])
async def test_xai_checks_the_key_first(
    xai: tuple[Dialect, str], pool: ClientPool, vtype: str
) -> None:
    dialect, url = xai
    verdict = await run_xai(url, pool, validation={"type": vtype})
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert verdict.details["keyAcls"] == "api-key:model:*, api-key:endpoint:*"
    paths = [seen.path for seen in dialect.seen]
    assert paths[:2] == ["/v1/api-key", "/v1/models"]
    if vtype != "Connectivity":
        assert paths[2] == "/v1/models/grok-4"
    if vtype == "Inference":
        assert paths[3] == "/v1/chat/completions"
        assert dialect.seen[3].body["max_tokens"] == 16
    assert dialect.generated == (1 if vtype == "Inference" else 0)


async def test_xai_host_only_endpoint_gets_v1(xai: tuple[Dialect, str], pool: ClientPool) -> None:
    verdict = await run_xai(xai[1], pool, endpoint="")
    assert verdict.reason is Reason.VALIDATED and verdict.endpoint == xai[1] + "/v1"


async def test_xai_bad_key_is_a_400_read_as_invalid_api_key(
    xai: tuple[Dialect, str], pool: ClientPool
) -> None:
    verdict = await run_xai(xai[1], pool, key="xai-wrong-" + "w" * 30)
    assert verdict.reason is Reason.INVALID_API_KEY and verdict.http_status == 400
    assert verdict.code == "Client specified an invalid argument"
    assert "Incorrect API key provided" in verdict.message
    assert "update key apiKey of Secret xai" in verdict.message
    assert [seen.path for seen in xai[0].seen] == ["/v1/api-key"]


@pytest.mark.parametrize("flag", ["api_key_blocked", "api_key_disabled", "team_blocked"])
async def test_xai_blocked_keys_and_teams_are_permission_denied(
    xai: tuple[Dialect, str], pool: ClientPool, flag: str
) -> None:
    xai[0].key_flags = frozenset({flag})
    verdict = await run_xai(xai[1], pool)
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert flag.replace("api_key", "key").split("_")[-1] in verdict.message
    assert verdict.details["keyAcls"]


async def test_xai_missing_model(xai: tuple[Dialect, str], pool: ClientPool) -> None:
    verdict = await run_xai(xai[1], pool, model="grok-9")
    assert verdict.reason is Reason.MODEL_NOT_FOUND and verdict.http_status == 404


async def test_xai_team_without_credits_is_quota_exceeded(
    xai: tuple[Dialect, str], pool: ClientPool
) -> None:
    xai[0].reset("no_quota")
    xai[0].fault_on = frozenset({"chat"})
    verdict = await run_xai(xai[1], pool, validation={"type": "Inference"})
    assert verdict.reason is Reason.QUOTA_EXCEEDED and verdict.http_status == 403


async def test_xai_rate_limit(xai: tuple[Dialect, str], pool: ClientPool) -> None:
    xai[0].reset("rate_limited")
    verdict = await run_xai(xai[1], pool)
    assert verdict.reason is Reason.RATE_LIMITED and verdict.retry_after == 20
