"""The Anthropic, Gemini, Azure OpenAI and Ollama probes against loopback servers of their dialects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from llmconn.model.blocks import AzureSpec
from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.probes import azure_openai, registry
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome
from servers import anthropic_dialect, azure_dialect, gemini_dialect, ollama_dialect
from servers.serve import serve

CONN = ValidationType.CONNECTIVITY
MODEL = ValidationType.MODEL
INFER = ValidationType.INFERENCE

KEYS = {
    "anthropic": anthropic_dialect.API_KEY,
    "gemini": gemini_dialect.API_KEY,
    "azure-openai": azure_dialect.API_KEY,
    "ollama": None,
}
# The model each provider's good cases use (Azure: the deployment).
GOOD_MODEL = {
    "anthropic": "claude-opus-4-5-20251101",
    "gemini": "gemini-2.5-flash",
    "azure-openai": "gpt-4o-prod",
    "ollama": "llama3.2",
}
MAKERS: dict[str, Callable[[], Any]] = {
    "anthropic": anthropic_dialect.make_app,
    "gemini": gemini_dialect.make_app,
    "azure-openai": azure_dialect.make_app,
    "ollama": ollama_dialect.make_app,
}
# The endpoint each server is reached at, as a user would write it.
SUFFIX = {"anthropic": "", "gemini": "/v1beta", "azure-openai": "", "ollama": ""}


@dataclass
class Server:
    url: str
    state: Any


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    apps = {name: make() for name, make in MAKERS.items()}
    with (
        serve(apps["anthropic"]) as a,
        serve(apps["gemini"]) as g,
        serve(apps["azure-openai"]) as z,
        serve(apps["ollama"]) as o,
    ):
        urls = {"anthropic": a, "gemini": g, "azure-openai": z, "ollama": o}
        yield {name: Server(urls[name], app.state.dialect) for name, app in apps.items()}


@pytest.fixture
def srv(servers: dict[str, Server]) -> dict[str, Server]:
    for server in servers.values():
        server.state.reset()
    return servers


@dataclass
class Run:
    outcome: ProbeOutcome
    ctx: ProbeContext


async def run(
    provider: str,
    endpoint: str,
    vtype: ValidationType,
    *,
    model: str | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    api_version: str = "2024-10-21",
) -> Run:
    azure = None
    if provider == "azure-openai":
        azure = AzureSpec(deployment=model or "", api_version=api_version)
        model = None
    async with httpx2.AsyncClient() as http:
        ctx = ProbeContext(
            provider=registry.get(provider),
            endpoint=endpoint.rstrip("/"),
            validation_type=vtype,
            http=http,
            timeout=5.0,
            model=model,
            api_key=key,
            api_key_ref=SecretKeyRef(name="llm-creds") if key is not None else None,
            headers=headers or {},
            azure=azure,
        )
        try:
            outcome = await ctx.provider.probe(ctx)
        except ProbeFailure as failure:
            outcome = failure.outcome
    return Run(outcome, ctx)


async def probe(
    srv: dict[str, Server],
    provider: str,
    vtype: ValidationType,
    *,
    behaviour: str = "ok",
    model: str | None = "good",
    key: str | None = "good",
    **kwargs: Any,
) -> Run:
    srv[provider].state.reset(behaviour)
    return await run(
        provider,
        srv[provider].url + SUFFIX[provider],
        vtype,
        model=GOOD_MODEL[provider] if model == "good" else model,
        key=KEYS[provider] if key == "good" else key,
        **kwargs,
    )


PROVIDERS = ["anthropic", "gemini", "azure-openai", "ollama"]


# --- the good path, per validation type -------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("vtype", [CONN, MODEL, INFER])
async def test_good_connection_validates(
    srv: dict[str, Server], provider: str, vtype: ValidationType
) -> None:
    result = await probe(srv, provider, vtype)
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    assert result.outcome.http_status in (200, 400)  # Azure's free check is a refused body


@pytest.mark.parametrize(
    ("provider", "count"),
    [
        ("anthropic", str(len(anthropic_dialect.MODELS))),
        ("gemini", str(len(gemini_dialect.MODELS))),
        ("ollama", str(len(ollama_dialect.MODELS))),
    ],
)
async def test_connectivity_reports_model_count(
    srv: dict[str, Server], provider: str, count: str
) -> None:
    result = await probe(srv, provider, CONN)
    assert result.outcome.details["modelCount"] == count
    assert f"{count} models" in result.outcome.message


async def test_anthropic_model_count_marks_more_pages() -> None:
    many = [{"id": f"claude-test-{i:04d}"} for i in range(1001)]
    with serve(anthropic_dialect.make_app(models=many)) as url:
        result = await run("anthropic", url, CONN, key=anthropic_dialect.API_KEY)
    assert result.outcome.details["modelCount"] == "1000+"


@pytest.mark.parametrize(
    ("provider", "vtype", "method", "path"),
    [
        ("anthropic", CONN, "GET", "/v1/models"),
        ("anthropic", MODEL, "GET", "/v1/models/claude-opus-4-5-20251101"),
        # Inference looks the model up (free) before the message, for its lifecycle.
        ("gemini", CONN, "GET", "/v1beta/models"),
        ("gemini", MODEL, "GET", "/v1beta/models/gemini-2.5-flash"),
        ("gemini", INFER, "POST", "/v1beta/models/gemini-2.5-flash:generateContent"),
        ("azure-openai", CONN, "GET", "/openai/models"),
        ("azure-openai", MODEL, "POST", "/openai/deployments/gpt-4o-prod/chat/completions"),
        # Azure's Inference then reads the served model's lifecycle from the (free) model list.
        ("ollama", CONN, "GET", "/api/tags"),
        ("ollama", MODEL, "POST", "/api/show"),
        ("ollama", INFER, "POST", "/api/generate"),
    ],
)
async def test_each_type_makes_one_call_to_the_documented_path(
    srv: dict[str, Server], provider: str, vtype: ValidationType, method: str, path: str
) -> None:
    await probe(srv, provider, vtype)
    assert [(s.method, s.path) for s in srv[provider].state.seen] == [(method, path)]


# --- the key goes out the provider's way, never in the URL ------------------------------


@pytest.mark.parametrize(
    ("provider", "header"),
    [("anthropic", "x-api-key"), ("gemini", "x-goog-api-key"), ("azure-openai", "api-key")],
)
@pytest.mark.parametrize("vtype", [CONN, MODEL, INFER])
async def test_key_travels_in_the_provider_header_only(
    srv: dict[str, Server], provider: str, header: str, vtype: ValidationType
) -> None:
    await probe(srv, provider, vtype)
    key = KEYS[provider]
    assert key is not None
    for seen in srv[provider].state.seen:
        assert seen.headers[header] == key
        assert key not in seen.path and key not in seen.query
        others = {"authorization", "x-api-key", "api-key", "x-goog-api-key"} - {header}
        assert others.isdisjoint(seen.headers)


async def test_anthropic_sends_the_sdks_api_version(srv: dict[str, Server]) -> None:
    # anthropic SDK 2.12.0 _constants.py: ANTHROPIC_API_VERSION = "2026-10-21".
    await probe(srv, "anthropic", CONN)
    assert srv["anthropic"].state.seen[0].headers["anthropic-version"] == "2026-10-21"


async def test_anthropic_version_from_spec_headers_wins(srv: dict[str, Server]) -> None:
    await probe(srv, "anthropic", CONN, headers={"Anthropic-Version": "2023-01-01"})
    assert srv["anthropic"].state.seen[0].headers["anthropic-version"] == "2023-01-01"


async def test_ollama_sends_no_credentials_unless_given(srv: dict[str, Server]) -> None:
    await probe(srv, "ollama", CONN)
    seen = srv["ollama"].state.seen[0].headers
    assert {"authorization", "x-api-key", "api-key", "x-goog-api-key"}.isdisjoint(seen)


async def test_ollama_behind_a_proxy_sends_the_token_as_bearer() -> None:
    app = ollama_dialect.make_app(token="proxy-token-123")
    with serve(app) as url:
        good = await run("ollama", url, CONN, key="proxy-token-123")
        missing = await run("ollama", url, CONN)
        wrong = await run("ollama", url, CONN, key="nope")
    assert good.outcome.reason is Reason.VALIDATED
    assert app.state.dialect.seen[0].headers["authorization"] == "Bearer proxy-token-123"
    assert missing.outcome.reason is Reason.INVALID_API_KEY
    assert "set spec.apiKeySecretRef" in missing.outcome.message
    assert wrong.outcome.reason is Reason.INVALID_API_KEY
    assert "Secret llm-creds" in wrong.outcome.message


# --- rejected keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "status", "code"),
    [
        ("anthropic", 401, "authentication_error"),
        ("gemini", 400, "API_KEY_INVALID"),
        ("azure-openai", 401, "401"),
    ],
)
@pytest.mark.parametrize("vtype", [CONN, MODEL, INFER])
async def test_wrong_key_is_invalid_api_key(
    srv: dict[str, Server], provider: str, status: int, code: str, vtype: ValidationType
) -> None:
    result = await probe(srv, provider, vtype, key="wrong-key-value")
    assert result.outcome.reason is Reason.INVALID_API_KEY
    assert (result.outcome.http_status, result.outcome.code) == (status, code)
    assert "update key apiKey of Secret llm-creds" in result.outcome.message
    assert "wrong-key-value" not in result.outcome.message


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "azure-openai"])
async def test_missing_key_is_invalid_api_key(srv: dict[str, Server], provider: str) -> None:
    result = await probe(srv, provider, CONN, key=None)
    assert result.outcome.reason is Reason.INVALID_API_KEY
    assert "set spec.apiKeySecretRef" in result.outcome.message


async def test_gemini_key_from_headers_from_secret_counts_as_sent(
    srv: dict[str, Server],
) -> None:
    headers = {"X-Goog-Api-Key": gemini_dialect.API_KEY}
    good = await probe(srv, "gemini", CONN, key=None, headers=headers)
    assert good.outcome.reason is Reason.VALIDATED
    refused = await probe(
        srv, "gemini", CONN, key=None, headers=headers, behaviour="service_disabled"
    )
    assert refused.outcome.reason is Reason.PERMISSION_DENIED


async def test_azure_bad_key_message_also_points_at_the_endpoint(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", MODEL, key="wrong")
    assert "spec.endpoint is the resource the key belongs to" in result.outcome.message


# --- missing models ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_missing_model_is_model_not_found(
    srv: dict[str, Server], provider: str, vtype: ValidationType
) -> None:
    result = await probe(srv, provider, vtype, model="no-such-model")
    assert result.outcome.reason is Reason.MODEL_NOT_FOUND, result.outcome.message
    assert result.outcome.http_status == 404
    assert "no-such-model" in result.outcome.message


async def test_azure_missing_deployment_names_the_field_and_the_delay(
    srv: dict[str, Server],
) -> None:
    result = await probe(srv, "azure-openai", MODEL, model="gpt-5-new")
    assert result.outcome.code == "DeploymentNotFound"
    assert "spec.azure.deployment" in result.outcome.message
    assert "5 minutes" in result.outcome.message


async def test_ollama_missing_model_says_how_to_pull_it(srv: dict[str, Server]) -> None:
    result = await probe(srv, "ollama", MODEL, model="mistral")
    assert "ollama pull mistral" in result.outcome.message


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_model_types_without_a_model_are_invalid_configuration(
    srv: dict[str, Server], provider: str, vtype: ValidationType
) -> None:
    result = await probe(srv, provider, vtype, model=None)
    assert result.outcome.reason is Reason.INVALID_CONFIGURATION
    assert "spec.model" in result.outcome.message
    assert not srv[provider].state.seen


async def test_connectivity_does_not_look_at_the_model(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", CONN, model="no-such-model")
    assert result.outcome.reason is Reason.VALIDATED


# --- aliases and model name forms --------------------------------------------------------


async def test_anthropic_alias_resolves_and_is_reported(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", MODEL, model="claude-haiku-4-5")
    assert result.outcome.reason is Reason.VALIDATED
    assert result.outcome.details["resolvedModel"] == "claude-haiku-4-5-20251001"
    assert "alias of claude-haiku-4-5-20251001" in result.outcome.message


async def test_anthropic_full_id_has_no_alias_note(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", MODEL)
    assert "resolvedModel" not in result.outcome.details


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "models/gemini-2.5-flash"])
@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_gemini_accepts_both_model_name_forms(
    srv: dict[str, Server], model: str, vtype: ValidationType
) -> None:
    result = await probe(srv, "gemini", vtype, model=model)
    assert result.outcome.reason is Reason.VALIDATED
    assert srv["gemini"].state.seen[0].path.startswith("/v1beta/models/gemini-2.5-flash")


# --- what Inference sends ----------------------------------------------------------------


async def test_anthropic_inference_is_tiny(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", INFER, model="claude-opus-4-1")
    body = srv["anthropic"].state.seen[-1].body
    assert body["max_tokens"] == 16 and len(body["messages"]) == 1
    assert result.outcome.details["servedModel"] == "claude-opus-4-1-20250805"


async def test_gemini_inference_turns_thinking_off(srv: dict[str, Server]) -> None:
    await probe(srv, "gemini", INFER)
    config = srv["gemini"].state.seen[0].body["generationConfig"]
    assert config == {"maxOutputTokens": 16, "thinkingConfig": {"thinkingBudget": 0}}


async def test_gemini_thinking_only_model_retries_with_the_smallest_budget(
    srv: dict[str, Server],
) -> None:
    result = await probe(srv, "gemini", INFER, model="gemini-2.5-pro")
    assert result.outcome.reason is Reason.VALIDATED
    budgets = [
        s.body["generationConfig"]["thinkingConfig"]["thinkingBudget"]
        for s in srv["gemini"].state.seen
    ]
    assert budgets == [0, 128]
    assert srv["gemini"].state.generated == 1


@pytest.mark.parametrize("model", ["gemini-3.5-flash", "gemini-3-pro-preview"])
async def test_gemini_3_and_later_get_a_thinking_level_never_a_budget(
    srv: dict[str, Server], model: str
) -> None:
    # Issue 10, item 10: Gemini 3.5 and later refuse thinkingBudget; never send both.
    result = await probe(srv, "gemini", INFER, model=model)
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    thinking = [s.body["generationConfig"]["thinkingConfig"] for s in srv["gemini"].state.seen]
    assert thinking == [{"thinkingLevel": "LOW"}]


async def test_ollama_inference_is_tiny_and_not_streamed(srv: dict[str, Server]) -> None:
    await probe(srv, "ollama", INFER)
    body = srv["ollama"].state.seen[0].body
    assert body["stream"] is False and body["options"] == {"num_predict": 16}


async def test_ollama_model_details(srv: dict[str, Server]) -> None:
    result = await probe(srv, "ollama", MODEL)
    assert srv["ollama"].state.seen[0].body == {"model": "llama3.2"}
    assert result.outcome.details == {"parameterSize": "3.2B", "quantizationLevel": "Q4_K_M"}


# --- Azure: free checks spend nothing, and only the right 400 counts --------------------


async def test_azure_connectivity_is_the_resources_model_list(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", CONN)
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    assert result.outcome.details["modelCount"] == str(len(azure_dialect.MODELS))
    seen = srv["azure-openai"].state.seen[0]
    assert (seen.method, seen.path, seen.query) == (
        "GET",
        "/openai/models",
        "api-version=2024-10-21",
    )


async def test_azure_free_checks_generate_nothing(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", MODEL)
    assert result.outcome.reason is Reason.VALIDATED
    assert srv["azure-openai"].state.generated == 0
    seen = srv["azure-openai"].state.seen[0]
    assert seen.body == {"messages": []}
    assert seen.query == "api-version=2024-10-21"
    assert "no tokens were spent" in result.outcome.message


async def test_azure_inference_generates_once_with_a_cap(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", INFER)
    assert srv["azure-openai"].state.generated == 1
    assert srv["azure-openai"].state.seen[0].body["max_tokens"] == 16
    assert result.outcome.details["servedModel"] == "gpt-4o-2024-08-06"


async def test_azure_reasoning_deployment_retries_with_max_completion_tokens(
    srv: dict[str, Server],
) -> None:
    result = await probe(srv, "azure-openai", INFER, model="o3-mini")
    assert result.outcome.reason is Reason.VALIDATED
    bodies = [s.body for s in srv["azure-openai"].state.seen if s.method == "POST"]
    assert [("max_tokens" in b, b.get("max_completion_tokens")) for b in bodies] == [
        (True, None),
        (False, 16),
    ]


async def test_azure_other_400_is_not_taken_as_proof(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", MODEL, model="embeddings")
    assert result.outcome.reason is Reason.INVALID_CONFIGURATION
    assert result.outcome.code == "OperationNotSupported"


async def test_azure_unsupported_api_version(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", MODEL, api_version="2019-01-01")
    assert result.outcome.reason is Reason.INVALID_CONFIGURATION
    assert "spec.azure.apiVersion" in result.outcome.message


async def test_azure_endpoint_with_openai_path_is_explained(srv: dict[str, Server]) -> None:
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + "/openai",
        MODEL,
        model="gpt-4o-prod",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.UNEXPECTED_RESPONSE
    assert "without /openai" in result.outcome.message


@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_azure_v1_surface(srv: dict[str, Server], vtype: ValidationType) -> None:
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + "/openai/v1",
        vtype,
        model="gpt-4o-prod",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.VALIDATED
    seen = srv["azure-openai"].state.seen[0]
    assert (seen.path, seen.query) == ("/openai/v1/chat/completions", "")
    assert seen.body["model"] == "gpt-4o-prod"


async def test_azure_v1_surface_connectivity_lists_models(srv: dict[str, Server]) -> None:
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + "/openai/v1",
        CONN,
        model="gpt-4o-prod",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    seen = srv["azure-openai"].state.seen[0]
    assert (seen.method, seen.path, seen.query) == ("GET", "/openai/v1/models", "")


# Issue 10, item 6: the order key -> deployment -> body is not confirmed, and on the v1
# surface the deployment is in the body. A server that checks the body first must not make a
# missing deployment look Validated.
@pytest.mark.parametrize("suffix", ["", "/openai/v1"])
async def test_azure_body_checked_first_never_validates_a_missing_deployment(
    srv: dict[str, Server], suffix: str
) -> None:
    srv["azure-openai"].state.reset("body_first")
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + suffix,
        MODEL,
        model="gpt-5-typo",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.MODEL_NOT_FOUND, result.outcome.message
    assert result.outcome.code == "DeploymentNotFound"


@pytest.mark.parametrize("suffix", ["", "/openai/v1"])
async def test_azure_body_checked_first_proves_a_real_deployment_with_one_completion(
    srv: dict[str, Server], suffix: str
) -> None:
    srv["azure-openai"].state.reset("body_first")
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + suffix,
        MODEL,
        model="gpt-4o-prod",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    assert "one real completion proved it" in result.outcome.message
    assert srv["azure-openai"].state.generated == 1


@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_azure_responses_only_deployment_answers_through_responses(
    srv: dict[str, Server], vtype: ValidationType
) -> None:
    # Issue 10, item 5 for Azure: the deployment's model is served by the Responses API only.
    result = await probe(srv, "azure-openai", vtype, model="o1-pro")
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    assert "test response" in result.outcome.message
    (sent,) = [s for s in srv["azure-openai"].state.seen if s.path.endswith("/responses")]
    assert sent.path == "/openai/v1/responses"
    assert sent.body["model"] == "o1-pro" and sent.body["max_output_tokens"] == 16


# --- Azure: the served model's lifecycle, from the resource's model list (issue 10) --------


async def test_azure_inference_looks_the_served_model_up_in_the_list(
    srv: dict[str, Server],
) -> None:
    result = await probe(srv, "azure-openai", INFER)
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    seen = srv["azure-openai"].state.seen
    assert [(s.method, s.path, s.query) for s in seen] == [
        ("POST", "/openai/deployments/gpt-4o-prod/chat/completions", "api-version=2024-10-21"),
        ("GET", "/openai/models", "api-version=2024-10-21"),
    ]
    # Generally available, with the end of inference support every model has: not deprecated.
    assert result.outcome.lifecycle is None
    assert "deprecated" not in result.outcome.message


@pytest.mark.parametrize("suffix", ["", "/openai/v1"])
async def test_azure_deprecating_model_validates_with_its_end_of_inference(
    srv: dict[str, Server], suffix: str
) -> None:
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + suffix,
        INFER,
        model="gpt-4o-old",
        key=azure_dialect.API_KEY,
    )
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.lifecycle is not None
    assert (outcome.lifecycle.stage, outcome.lifecycle.retires_at) == (
        "deprecated",
        "2029-03-01T00:00:00Z",
    )
    assert "deprecated; its inference support ends on 2029-03-01T00:00:00Z" in outcome.message
    # The /openai/v1 list has no lifecycle fields: both surfaces read the classic list.
    listed = srv["azure-openai"].state.seen[-1]
    assert (listed.method, listed.path, listed.query) == (
        "GET",
        "/openai/models",
        "api-version=2024-10-21",
    )


@pytest.mark.parametrize("suffix", ["", "/openai/v1"])
async def test_azure_a_passed_end_of_inference_on_a_model_that_answered_is_a_warning(
    srv: dict[str, Server], suffix: str
) -> None:
    # Issue 24, item 4: the date is "not sooner than"; a completion that succeeded is never
    # ModelRetired, and an overdue date is a Deprecated warning.
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + suffix,
        INFER,
        model="gpt-35-legacy",
        key=azure_dialect.API_KEY,
    )
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.lifecycle is not None
    assert (outcome.lifecycle.stage, outcome.lifecycle.retires_at) == (
        "deprecated",
        "2026-01-01T00:00:00Z",
    )
    assert "gpt-35-turbo-0125" in outcome.message and "not sooner than" in outcome.message
    assert outcome.details == {"servedModel": "gpt-35-turbo-0125"}


async def test_azure_matches_the_served_model_to_the_list_whatever_its_case(
    srv: dict[str, Server],
) -> None:
    # Azure's model ids are case-insensitive (a deployment may report "GPT-4o-..."): the
    # served model is found in the list all the same, and its lifecycle read.
    srv["azure-openai"].state.deployments["gpt-4o-upper"] = ("GPT-4o-2024-05-13", "chat")
    result = await run(
        "azure-openai",
        srv["azure-openai"].url,
        INFER,
        model="gpt-4o-upper",
        key=azure_dialect.API_KEY,
    )
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.lifecycle is not None
    assert (outcome.lifecycle.stage, outcome.lifecycle.retires_at) == (
        "deprecated",
        "2029-03-01T00:00:00Z",
    )


async def test_azure_a_bare_model_name_with_several_versions_takes_the_latest_date(
    srv: dict[str, Server],
) -> None:
    # Issue 24, item 4: the list has one entry per version under the bare name, and the
    # completion names only that: another version's passed date says nothing of this one.
    result = await probe(srv, "azure-openai", INFER, model="gpt-35-bare")
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.lifecycle is None
    assert "2 versions of gpt-35-turbo" in outcome.message
    assert "2028-01-01" in outcome.message


async def test_azure_model_check_reads_lifecycle_only_when_a_completion_showed_the_model(
    srv: dict[str, Server],
) -> None:
    free = await probe(srv, "azure-openai", MODEL, model="gpt-4o-old")
    assert free.outcome.reason is Reason.VALIDATED and free.outcome.lifecycle is None
    assert [s.method for s in srv["azure-openai"].state.seen] == ["POST"]
    proven = await probe(srv, "azure-openai", MODEL, behaviour="body_first", model="gpt-4o-old")
    assert proven.outcome.reason is Reason.VALIDATED, proven.outcome.message
    assert proven.outcome.lifecycle is not None
    assert proven.outcome.lifecycle.stage == "deprecated"


@pytest.mark.parametrize("vtype", [MODEL, INFER])
@pytest.mark.parametrize(
    ("deployment", "status"),
    [("gpt-35-gone", 404), ("gpt-35-gone-400", 400), ("gpt-35-gone-410", 410)],
)
@pytest.mark.parametrize("suffix", ["", "/openai/v1"])
async def test_azure_a_deployment_of_a_retired_model_is_model_retired(
    srv: dict[str, Server], vtype: ValidationType, deployment: str, status: int, suffix: str
) -> None:
    # Issue 24, item 3: Azure answers a retired model's deployment with 404 Resource not found
    # or 400 OperationNotSupported (as users report it), or 410 (the management plane's word).
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + suffix,
        vtype,
        model=deployment,
        key=azure_dialect.API_KEY,
    )
    outcome = result.outcome
    assert outcome.reason is Reason.MODEL_RETIRED, outcome.message
    assert outcome.http_status == status
    assert outcome.lifecycle is not None and outcome.lifecycle.stage == "retired"
    assert "spec.azure.deployment" in outcome.message
    assert srv["azure-openai"].state.generated == 0


async def test_azure_a_404_is_the_endpoints_when_the_model_list_fails_too(
    srv: dict[str, Server],
) -> None:
    # The deployment's 404 is read as its own only once the list proved the endpoint.
    result = await run(
        "azure-openai",
        srv["azure-openai"].url + "/openai",
        MODEL,
        model="gpt-35-gone",
        key=azure_dialect.API_KEY,
    )
    assert result.outcome.reason is Reason.UNEXPECTED_RESPONSE, result.outcome.message
    assert "without /openai" in result.outcome.message


@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_azure_a_content_filter_refusing_the_test_prompt_proves_the_deployment(
    srv: dict[str, Server], vtype: ValidationType
) -> None:
    # Issue 24, item 9: 400 content_filter (ResponsibleAIPolicyViolation) comes from the
    # deployment's model after key, deployment and model were accepted.
    result = await probe(srv, "azure-openai", vtype, model="gpt-4o-filtered")
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    if vtype is INFER:
        assert outcome.http_status == 400 and "content filter" in outcome.message
    assert srv["azure-openai"].state.generated == 0


NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
AHEAD, PASSED = int(NOW.timestamp()) + 86400, int(NOW.timestamp()) - 86400


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"lifecycle_status": "generally-available", "deprecation": {"inference": AHEAD}}, None),
        ({"lifecycle_status": "preview", "deprecation": {"inference": AHEAD}}, None),
        ({"lifecycle_status": "Deprecating", "deprecation": {}}, ("deprecated", None)),
        ({"lifecycle_status": "deprecated", "deprecation": {"inference": AHEAD}}, "deprecated"),
        (  # "not sooner than" passed: a warning, never retired (issue 24, item 4)
            {"lifecycle_status": "generally-available", "deprecation": {"inference": PASSED}},
            "deprecated",
        ),
        ({"deprecation": {"inference": True}}, None),
        ({"deprecation": {"inference": 10**20}, "lifecycle_status": "generally-available"}, None),
        ({"deprecation": "2026-01-01"}, None),
        ({}, None),
    ],
)
def test_azure_lifecycle_of_a_list_entry(entry: dict[str, Any], expected: Any) -> None:
    life = azure_openai.lifecycle(entry, NOW)
    if expected is None:
        assert life is None
    elif isinstance(expected, tuple):
        assert life is not None and (life.stage, life.retires_at) == expected
    else:
        assert life is not None and life.stage == expected and life.retires_at is not None


async def test_azure_records_request_id_region_and_headroom(srv: dict[str, Server]) -> None:
    result = await probe(srv, "azure-openai", MODEL)
    assert result.ctx.found.request_id is not None and result.ctx.found.request_id.startswith(
        "5a14fa81-"
    )
    assert result.ctx.found.details["region"] == "Sweden Central"
    assert result.ctx.found.details["rateLimitRemainingRequests"] == "99"
    assert result.ctx.found.details["rateLimitRemainingTokens"] == "99984"


async def test_anthropic_records_request_id_and_headroom(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", CONN)
    assert result.ctx.found.request_id is not None and result.ctx.found.request_id.startswith(
        "req_"
    )
    assert result.ctx.found.details["anthropicRateLimitRequestsRemaining"] == "49"
    assert result.ctx.found.details["anthropicRateLimitTokensLimit"] == "30000"


# --- quota, permission, rate limits, outages ---------------------------------------------


@pytest.mark.parametrize(
    ("provider", "behaviour", "vtype", "reason", "status", "code"),
    [
        ("anthropic", "forbidden", MODEL, Reason.PERMISSION_DENIED, 403, "permission_error"),
        ("anthropic", "no_credit", INFER, Reason.QUOTA_EXCEEDED, 400, "invalid_request_error"),
        # An empty balance shows only when tokens are spent.
        ("anthropic", "no_credit", MODEL, Reason.VALIDATED, 200, None),
        (
            "anthropic",
            "spend_limit",
            INFER,
            Reason.QUOTA_EXCEEDED,
            429,
            "enforced_spend_limit_reached",
        ),
        # A reached spend limit is a 400 too (issue 10, item 3): not a configuration error.
        ("anthropic", "usage_limit", INFER, Reason.QUOTA_EXCEEDED, 400, None),
        ("anthropic", "on_hold", CONN, Reason.PERMISSION_DENIED, 400, "organization_on_hold"),
        ("anthropic", "billing", INFER, Reason.QUOTA_EXCEEDED, 402, "billing_error"),
        ("anthropic", "api_error", CONN, Reason.PROVIDER_UNAVAILABLE, 500, "api_error"),
        ("anthropic", "overloaded", INFER, Reason.PROVIDER_UNAVAILABLE, 529, "overloaded_error"),
        ("gemini", "region", MODEL, Reason.PERMISSION_DENIED, 400, "FAILED_PRECONDITION"),
        ("gemini", "service_disabled", CONN, Reason.PERMISSION_DENIED, 403, "SERVICE_DISABLED"),
        ("gemini", "no_quota", INFER, Reason.QUOTA_EXCEEDED, 429, "RESOURCE_EXHAUSTED"),
        ("gemini", "unavailable", INFER, Reason.PROVIDER_UNAVAILABLE, 503, "UNAVAILABLE"),
        ("azure-openai", "forbidden", MODEL, Reason.PERMISSION_DENIED, 403, "403"),
        (
            "azure-openai",
            "unavailable",
            INFER,
            Reason.PROVIDER_UNAVAILABLE,
            503,
            "ServiceUnavailable",
        ),
        ("ollama", "busy", INFER, Reason.PROVIDER_UNAVAILABLE, 503, None),
        ("ollama", "oom", INFER, Reason.PROVIDER_UNAVAILABLE, 500, None),
    ],
)
async def test_provider_answers_map_to_reasons(
    srv: dict[str, Server],
    provider: str,
    behaviour: str,
    vtype: ValidationType,
    reason: Reason,
    status: int,
    code: str | None,
) -> None:
    result = await probe(srv, provider, vtype, behaviour=behaviour)
    assert result.outcome.reason is reason, result.outcome.message
    assert (result.outcome.http_status, result.outcome.code) == (status, code)


@pytest.mark.parametrize(
    ("provider", "vtype", "wait"),
    [
        ("anthropic", MODEL, 17.0),
        ("gemini", INFER, 21.0),  # from the RetryInfo detail: Gemini sends no Retry-After
        ("azure-openai", MODEL, 6.0),
        ("ollama", CONN, 30.0),
    ],
)
async def test_rate_limited_carries_retry_after(
    srv: dict[str, Server], provider: str, vtype: ValidationType, wait: float
) -> None:
    result = await probe(srv, provider, vtype, behaviour="rate_limited")
    assert result.outcome.reason is Reason.RATE_LIMITED, result.outcome.message
    assert result.outcome.http_status == 429
    assert result.outcome.retry_after == wait


async def test_gemini_rate_limit_names_the_quota(srv: dict[str, Server]) -> None:
    result = await probe(srv, "gemini", INFER, behaviour="rate_limited")
    assert "GenerateRequestsPerMinutePerProjectPerModel-FreeTier" in result.outcome.message


async def test_anthropic_rate_limit_records_exhausted_headroom(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", CONN, behaviour="rate_limited")
    assert result.ctx.found.details["anthropicRateLimitRequestsRemaining"] == "0"


# --- answers that are not the API --------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("behaviour", ["html", "invalid_json", "wrong_shape"])
@pytest.mark.parametrize("vtype", [CONN, MODEL, INFER])
async def test_a_200_that_is_not_the_api_is_unexpected(
    srv: dict[str, Server], provider: str, behaviour: str, vtype: ValidationType
) -> None:
    result = await probe(srv, provider, vtype, behaviour=behaviour)
    assert result.outcome.reason is Reason.UNEXPECTED_RESPONSE, result.outcome.message
    assert result.outcome.http_status == 200
    assert "spec.endpoint" in result.outcome.message


@pytest.mark.parametrize(
    ("provider", "suffix", "hint"),
    [
        ("anthropic", "/v1", "without /v1"),
        ("gemini", "/api", "/v1beta"),
        ("ollama", "/v1", "without /v1"),
    ],
)
async def test_wrong_base_path_is_explained(
    srv: dict[str, Server], provider: str, suffix: str, hint: str
) -> None:
    result = await run(provider, srv[provider].url + suffix, CONN, key=KEYS[provider])
    assert result.outcome.reason is Reason.UNEXPECTED_RESPONSE
    assert result.outcome.http_status == 404
    assert hint in result.outcome.message


@pytest.mark.parametrize("slash", ["", "/"])
async def test_gemini_endpoint_as_google_genai_takes_it(srv: dict[str, Server], slash: str) -> None:
    # Issue 10, item 13: google-genai takes https://generativelanguage.googleapis.com/ and
    # the API version apart; the probe's base URL ends in the version either way.
    endpoint = registry.get("gemini").base_url(srv["gemini"].url + slash)
    result = await run("gemini", endpoint, MODEL, model="gemini-2.5-flash", key=KEYS["gemini"])
    assert result.outcome.reason is Reason.VALIDATED, result.outcome.message
    assert srv["gemini"].state.seen[-1].path == "/v1beta/models/gemini-2.5-flash"


def test_registrations() -> None:
    expected = {
        "anthropic": ("https://api.anthropic.com", "x-api-key"),
        "gemini": ("https://generativelanguage.googleapis.com/v1beta", "x-goog-api-key"),
        "azure-openai": (None, "api-key"),
        "ollama": ("http://localhost:11434", "bearer"),
    }
    for name, (endpoint, auth) in expected.items():
        info = registry.get(name)
        assert (info.default_endpoint, info.auth.value) == (endpoint, auth)


# --- Anthropic: where the model is in its life (issue 10, item 2) -------------------------


@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_anthropic_retired_model_is_model_retired(
    srv: dict[str, Server], vtype: ValidationType
) -> None:
    result = await probe(srv, "anthropic", vtype, model="claude-3-opus-20240229")
    outcome = result.outcome
    assert outcome.reason is Reason.MODEL_RETIRED, outcome.message
    assert "retired" in outcome.message and "spec.model" in outcome.message
    assert outcome.lifecycle is not None and outcome.lifecycle.stage == "retired"
    assert srv["anthropic"].state.generated == 0  # no message was sent to it


@pytest.mark.parametrize("vtype", [MODEL, INFER])
async def test_anthropic_deprecated_model_validates_with_its_dates(
    srv: dict[str, Server], vtype: ValidationType
) -> None:
    result = await probe(srv, "anthropic", vtype, model="claude-3-7-sonnet-20250219")
    outcome = result.outcome
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert "deprecated, retiring on 2027-02-19T00:00:00Z" in outcome.message
    assert outcome.lifecycle is not None
    assert (outcome.lifecycle.stage, outcome.lifecycle.retires_at) == (
        "deprecated",
        "2027-02-19T00:00:00Z",
    )
    assert outcome.lifecycle.deprecated_at == "2025-10-28T00:00:00Z"


async def test_anthropic_active_model_has_no_lifecycle(srv: dict[str, Server]) -> None:
    result = await probe(srv, "anthropic", MODEL)
    assert result.outcome.reason is Reason.VALIDATED
    assert result.outcome.lifecycle is None


async def test_anthropic_inference_looks_the_model_up_first(srv: dict[str, Server]) -> None:
    await probe(srv, "anthropic", INFER)
    assert [(s.method, s.path) for s in srv["anthropic"].state.seen] == [
        ("GET", "/v1/models/claude-opus-4-5-20251101"),
        ("POST", "/v1/messages"),
    ]
