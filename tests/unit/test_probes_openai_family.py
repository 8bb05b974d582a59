"""The OpenAI-style probes against loopback servers speaking each provider's dialect."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from starlette.applications import Starlette

from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.probes import registry
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome
from servers.openai_dialect import Dialect, make_app
from servers.serve import serve

CONNECTIVITY, MODEL, INFERENCE = (
    ValidationType.CONNECTIVITY,
    ValidationType.MODEL,
    ValidationType.INFERENCE,
)
GOOD_KEY = "sk-test"
SECRET = SecretKeyRef(name="llm-credentials")


@dataclass(frozen=True)
class Case:
    """One provider: the server flavour that imitates it and the models it lists."""

    flavour: str
    models: tuple[str, ...]
    unlisted: tuple[str, ...] = ()
    missing: str = "no-such-model"  # a model the provider does not have

    @property
    def model(self) -> str:
        return self.models[0]


CASES = {
    "openai": Case("openai", ("gpt-4o", "gpt-4o-mini", "o3-mini"), missing="gpt-4o-turbo-x"),
    "openai-compatible": Case("vllm", ("Qwen/Qwen2.5-7B-Instruct",), missing="Qwen/Qwen2.5-7B"),
    # DeepSeek's list-models reference (GET /models) lists both models it serves.
    "deepseek": Case("deepseek", ("deepseek-chat", "deepseek-reasoner")),
    "dashscope": Case("dashscope", ("qwen-plus", "qwen-max", "qwen-turbo")),
    "mistral": Case("mistral", ("mistral-large-latest", "mistral-small-latest")),
    "groq": Case("groq", ("llama-3.3-70b-versatile", "llama-3.1-8b-instant")),
    "openrouter": Case("openrouter", ("openai/gpt-4o", "anthropic/claude-sonnet-4")),
    "together": Case("together", ("meta-llama/Llama-3.3-70B-Instruct-Turbo",)),
}
PROVIDERS = list(CASES)
# Flavours that send x-ratelimit-* headers on every answer.
HEADROOM = {"openai", "groq", "openrouter", "together"}


@dataclass
class Live:
    """A running dialect server for one provider; `use()` sets what it answers next."""

    provider: str
    endpoint: str
    app: Starlette
    case: Case = field(init=False)

    def __post_init__(self) -> None:
        self.case = CASES[self.provider]

    def use(self, **changes: Any) -> Dialect:
        settings: dict[str, Any] = {
            "flavour": self.case.flavour,
            "models": self.case.models,
            "unlisted": self.case.unlisted,
        }
        dialect = Dialect(**(settings | changes))
        self.app.state.dialect = dialect
        return dialect


def _prefix(provider: str) -> str:
    # Serve under the real API's path, so probes are proven to join paths onto it correctly.
    default = registry.get(provider).default_endpoint
    return urlsplit(default).path if default else "/v1"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Live]]:
    with contextlib.ExitStack() as stack:
        lives = {}
        for provider in PROVIDERS:
            app = make_app(prefix=_prefix(provider))
            base = stack.enter_context(serve(app))
            lives[provider] = Live(provider, base + _prefix(provider), app)
        yield lives


@pytest.fixture
def live(servers: dict[str, Live], provider: str) -> Live:
    servers[provider].use()
    return servers[provider]


async def run(
    live: Live,
    vtype: ValidationType = MODEL,
    *,
    model: str | None = "",
    key: str | None = GOOD_KEY,
    endpoint: str | None = None,
) -> tuple[ProbeOutcome, ProbeContext]:
    """Run the provider's probe as the caller does; a ProbeFailure is an outcome too."""
    async with httpx2.AsyncClient(trust_env=False) as http:
        ctx = ProbeContext(
            provider=registry.get(live.provider),
            endpoint=endpoint or live.endpoint,
            validation_type=vtype,
            http=http,
            timeout=10.0,
            model=live.case.model if model == "" else model,
            api_key=key,
            api_key_ref=SECRET if key else None,
        )
        try:
            outcome = await ctx.provider.probe(ctx)
        except ProbeFailure as failure:
            outcome = failure.outcome
    return outcome, ctx


# --- success, at each depth ------------------------------------------------------------------


@pytest.mark.parametrize("vtype", [CONNECTIVITY, MODEL, INFERENCE])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_good_connection_validates(live: Live, vtype: ValidationType) -> None:
    dialect = live.use()
    outcome, ctx = await run(live, vtype)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.http_status == 200
    assert outcome.details["modelCount"] == str(len(live.case.models))
    expected = {
        CONNECTIVITY: f"the key can list {len(live.case.models)} models",
        MODEL: f"model {live.case.model} is available",
        INFERENCE: f"model {live.case.model} answered a test completion",
    }[vtype]
    assert expected in outcome.message
    # Every request carried the key the OpenAI way.
    assert dialect.seen
    assert {s.headers.get("authorization") for s in dialect.seen} == {f"Bearer {GOOD_KEY}"}
    chats = [s for s in dialect.seen if s.path.endswith("/chat/completions")]
    assert len(chats) == (1 if vtype is INFERENCE else 0)
    if live.case.flavour in HEADROOM:
        assert ctx.found.details["rateLimitRemainingRequests"] == "499"
        assert ctx.found.details["rateLimitLimitTokens"] == "30000"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_model_is_checked_the_providers_way(live: Live) -> None:
    dialect = live.use()
    outcome, _ = await run(live, MODEL)

    assert outcome.reason is Reason.VALIDATED
    paths = [s.path.removeprefix(_prefix(live.provider)) for s in dialect.seen]
    if live.provider == "openai":
        assert paths == ["/models", f"/models/{live.case.model}"]
    else:  # the list is the check: no second request
        assert "/models" in paths
        assert not any(p.startswith("/models/") for p in paths)


async def test_openai_model_ids_are_sent_as_one_path_segment(servers: dict[str, Live]) -> None:
    live = servers["openai"]
    tuned = "ft:gpt-4o-mini-2024-07-18:acme::9Xy1"
    dialect = live.use(unlisted=(tuned,))
    outcome, _ = await run(live, MODEL, model=tuned)

    assert outcome.reason is Reason.VALIDATED
    assert dialect.seen[-1].path == f"/v1/models/{tuned}"


@pytest.mark.parametrize(
    ("provider", "model", "fields"),
    [
        ("openai", "gpt-4o", {"max_completion_tokens": 16, "temperature": 0}),
        # The dialect server refuses max_tokens and temperature 0 for reasoning models.
        ("openai", "o3-mini", {"max_completion_tokens": 16, "reasoning_effort": "low"}),
        ("deepseek", "deepseek-chat", {"max_tokens": 16, "temperature": 0}),
        ("groq", "llama-3.3-70b-versatile", {"max_tokens": 16, "temperature": 0}),
        ("openai-compatible", "Qwen/Qwen2.5-7B-Instruct", {"max_tokens": 16, "temperature": 0}),
    ],
)
async def test_inference_asks_for_a_tiny_completion(
    live: Live, model: str, fields: dict[str, Any]
) -> None:
    dialect = live.use()
    outcome, _ = await run(live, INFERENCE, model=model)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    (chat,) = [s for s in dialect.seen if s.path.endswith("/chat/completions")]
    assert chat.body["model"] == model
    assert chat.body["messages"][0]["role"] == "user"
    assert {k: v for k, v in chat.body.items() if k not in ("model", "messages")} == fields


@pytest.mark.parametrize("provider", ["openai-compatible"])
async def test_local_server_without_a_key(live: Live) -> None:
    dialect = live.use(keys=None, models=("llama3.2:latest",))
    outcome, _ = await run(live, MODEL, model="llama3.2", key=None)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert all("authorization" not in s.headers for s in dialect.seen)


@pytest.mark.parametrize("vtype", [MODEL, INFERENCE])
@pytest.mark.parametrize("provider", ["openai", "deepseek"])
async def test_no_model_to_check_is_a_configuration_error(
    live: Live, vtype: ValidationType
) -> None:
    dialect = live.use()
    outcome, _ = await run(live, vtype, model=None)

    assert outcome.reason is Reason.INVALID_CONFIGURATION
    assert "spec.model" in outcome.message
    assert not dialect.seen


# --- failures every provider must name -------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_bad_key(live: Live) -> None:
    dialect = live.use()
    wrong = "sk-wrong-0123456789abcdef"
    outcome, ctx = await run(live, CONNECTIVITY, key=wrong)

    assert outcome.reason is Reason.INVALID_API_KEY, outcome.message
    assert outcome.http_status == 401
    assert "Secret llm-credentials" in outcome.message
    assert wrong not in outcome.message
    assert dialect.seen[-1].headers["authorization"] == f"Bearer {wrong}"
    # The request id comes from a header or, for DashScope and Mistral, from the error body.
    assert ctx.found.request_id is not None and ctx.found.request_id.startswith("req_")
    if live.provider == "dashscope":
        assert "region" in outcome.message
        assert outcome.code == "invalid_api_key"  # compatible mode


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_missing_model(live: Live) -> None:
    live.use()
    outcome, _ = await run(live, MODEL, model=live.case.missing)

    assert outcome.reason is Reason.MODEL_NOT_FOUND, outcome.message
    assert live.case.missing in outcome.message
    assert "spec.model" in outcome.message
    if live.provider == "openai":
        assert (outcome.http_status, outcome.code) == (404, "model_not_found")


async def test_missing_model_suggests_close_names(servers: dict[str, Live]) -> None:
    live = servers["openai-compatible"]
    live.use()
    outcome, _ = await run(live, MODEL, model="Qwen/Qwen2.5-7B-Instruct-AWQ")

    assert outcome.reason is Reason.MODEL_NOT_FOUND
    assert "Close names: Qwen/Qwen2.5-7B-Instruct." in outcome.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_quota_on_the_test_completion(live: Live) -> None:
    # Listing models is free for every provider: credit runs out on the completion.
    live.use(behaviour="no_quota", fault_on=frozenset({"chat"}))
    outcome, _ = await run(live, INFERENCE)

    assert outcome.reason is Reason.QUOTA_EXCEEDED, outcome.message
    assert outcome.http_status == {"deepseek": 402, "openrouter": 402, "dashscope": 403}.get(
        live.provider, 429
    )


@pytest.mark.parametrize(
    ("provider", "fault", "code"),
    [
        ("openai", "quota_legacy", "insufficient_quota"),  # code null: the type tells
    ],
)
async def test_quota_variants(live: Live, fault: str, code: str) -> None:
    live.use(behaviour=fault)
    outcome, _ = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.QUOTA_EXCEEDED, outcome.message
    assert outcome.code == code


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limited(live: Live) -> None:
    live.use(behaviour="rate_limited")
    outcome, ctx = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.RATE_LIMITED, outcome.message
    assert outcome.http_status == 429
    assert outcome.retry_after == 20
    assert ctx.found.details["rateLimitRemainingRequests"] == "0"
    assert ctx.found.details["rateLimitResetRequests"] == "20s"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", ["unavailable", "server_error"])
async def test_unavailable(live: Live, fault: str) -> None:
    live.use(behaviour=fault)
    outcome, _ = await run(live, MODEL)

    assert outcome.reason is Reason.PROVIDER_UNAVAILABLE, outcome.message
    assert outcome.http_status == (503 if fault == "unavailable" else 500)


@pytest.mark.parametrize("provider", ["openai"])
async def test_overloaded_429_is_unavailable_not_rate_limited(live: Live) -> None:
    live.use(behaviour="overloaded")
    outcome, _ = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.PROVIDER_UNAVAILABLE
    assert outcome.http_status == 429


@pytest.mark.parametrize("provider", ["openai"])
async def test_region_refused_is_permission_denied(live: Live) -> None:
    live.use(behaviour="region_denied")
    outcome, _ = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.PERMISSION_DENIED
    assert outcome.code == "unsupported_country_region_territory"


# --- answers that are not the provider's API -------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", ["html", "invalid_json", "not_a_list"])
async def test_not_the_api(live: Live, fault: str) -> None:
    live.use(behaviour=fault)
    outcome, _ = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert outcome.http_status == 200
    assert "spec.endpoint" in outcome.message


@pytest.mark.parametrize("provider", ["openai", "mistral"])
@pytest.mark.parametrize("fault", ["html", "no_choices"])
async def test_completion_that_is_not_the_api(live: Live, fault: str) -> None:
    live.use(behaviour=fault, fault_on=frozenset({"chat"}))
    outcome, _ = await run(live, INFERENCE)

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert "completion" in outcome.message


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
async def test_wrong_base_path_says_check_the_endpoint(live: Live) -> None:
    live.use()
    root = live.endpoint.removesuffix("/v1")  # the common mistake: the host without /v1
    outcome, _ = await run(live, CONNECTIVITY, endpoint=root)

    assert outcome.reason is Reason.UNEXPECTED_RESPONSE, outcome.message
    assert outcome.http_status == 404
    assert "spec.endpoint" in outcome.message


@pytest.mark.parametrize(
    ("provider", "flavour", "changes", "vtype", "reason"),
    [
        # OpenAI-shaped error, its code says what it is.
        ("openai", "openai", {}, CONNECTIVITY, Reason.INVALID_API_KEY),
        # vLLM's flat error carries the HTTP status in "code".
        ("openai", "vllm", {}, MODEL, Reason.MODEL_NOT_FOUND),
        (
            "deepseek",
            "deepseek",
            {"behaviour": "no_quota", "fault_on": frozenset({"chat"})},
            INFERENCE,
            Reason.QUOTA_EXCEEDED,
        ),
    ],
)
async def test_error_sent_with_http_200_is_that_error(
    live: Live, flavour: str, changes: dict[str, Any], vtype: ValidationType, reason: Reason
) -> None:
    live.use(flavour=flavour, errors_as_200=True, **changes)
    key = "sk-wrong-key-123456" if reason is Reason.INVALID_API_KEY else GOOD_KEY
    model = "no-such-model" if reason is Reason.MODEL_NOT_FOUND else ""
    outcome, _ = await run(live, vtype, key=key, model=model)

    assert outcome.reason is reason, outcome.message
    assert outcome.http_status == 200


# --- DeepSeek: the list is the check, and the balance ------------------------------------------


@pytest.mark.parametrize("provider", ["deepseek"])
async def test_deepseek_misspelled_model_is_model_not_found(live: Live) -> None:
    # DeepSeek's list-models reference lists every model it serves (issue 10, item 1).
    live.use()
    outcome, _ = await run(live, MODEL, model="deepseek-chatt")

    assert outcome.reason is Reason.MODEL_NOT_FOUND, outcome.message
    assert "Close names: deepseek-chat" in outcome.message


@pytest.mark.parametrize("provider", ["deepseek"])
async def test_deepseek_balance_in_details(live: Live) -> None:
    live.use(balance="42.50")
    outcome, _ = await run(live, MODEL)

    assert outcome.reason is Reason.VALIDATED
    assert outcome.details["balance"] == "42.50 CNY"


@pytest.mark.parametrize("provider", ["deepseek"])
@pytest.mark.parametrize(
    "changes",
    [
        {"balance": None},  # no such route: 404
        {"behaviour": "unavailable", "fault_on": frozenset({"balance"})},
        {"behaviour": "html", "fault_on": frozenset({"balance"})},
        {"behaviour": "invalid_json", "fault_on": frozenset({"balance"})},
    ],
)
async def test_deepseek_balance_failures_never_fail_the_probe(
    live: Live, changes: dict[str, Any]
) -> None:
    dialect = live.use(**changes)
    outcome, _ = await run(live, MODEL)

    assert any(s.path == "/user/balance" for s in dialect.seen)  # it was asked
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert "balance" not in outcome.details


@pytest.mark.parametrize("provider", ["deepseek"])
async def test_deepseek_balance_that_cannot_pay_is_quota_exceeded(live: Live) -> None:
    live.use(balance="0.00", balance_available=False)
    outcome, ctx = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.QUOTA_EXCEEDED
    assert "0.00 CNY" in outcome.message
    assert ctx.found.details["balance"] == "0.00 CNY"


# --- OpenRouter: GET /key ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openrouter"])
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {},
            {
                "keyLimit": "10",
                "keyLimitRemaining": "7.5",
                "keyExpiresAt": "2027-06-30T00:00:00Z",
                "freeTier": "false",
            },
        ),
        ({"credit_limit": None, "free_tier": True}, {"keyLimit": "none", "freeTier": "true"}),
    ],
)
async def test_openrouter_key_headroom(
    live: Live, changes: dict[str, Any], expected: dict[str, str]
) -> None:
    key = "sk-or-v1-0123456789abcdef0123456789abcdef"
    live.use(keys=frozenset({key}), **changes)
    outcome, _ = await run(live, MODEL, key=key)

    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert {k: v for k, v in outcome.details.items() if k in expected} == expected
    assert ("keyLimitRemaining" in outcome.details) == (expected["keyLimit"] != "none")
    assert "credit" not in " ".join(outcome.details).lower()
    # The /key answer's label shows part of the key: nothing of it is kept.
    assert not any(key[:8] in text for text in [outcome.message, *outcome.details.values()])


@pytest.mark.parametrize("provider", ["openrouter"])
async def test_openrouter_key_is_checked_on_key_not_on_the_public_list(live: Live) -> None:
    dialect = live.use()
    outcome, _ = await run(live, MODEL, key="sk-or-v1-revoked")

    assert outcome.reason is Reason.INVALID_API_KEY
    assert [s.path for s in dialect.seen] == ["/api/v1/key"]


# --- issue 10: answers the providers give in 2026 ------------------------------------------------


@pytest.mark.parametrize("provider", ["openai-compatible"])
@pytest.mark.parametrize("status", [400, 429])
async def test_litellm_budget_exceeded_is_quota_exceeded(live: Live, status: int) -> None:
    # Item 4: a LiteLLM proxy's spend ceiling; waiting does not lift it, so not RateLimited.
    live.use(behaviour="budget_exceeded", budget_status=status, fault_on=frozenset({"chat"}))
    outcome, _ = await run(live, INFERENCE)

    assert outcome.reason is Reason.QUOTA_EXCEEDED, outcome.message
    assert (outcome.http_status, outcome.code) == (status, str(status))
    assert "Budget has been exceeded" in outcome.message


@pytest.mark.parametrize("provider", ["openai"])
async def test_responses_only_model_is_asked_through_responses(live: Live) -> None:
    # Item 5: the chat 404 names the API, not a missing model; GET /models/{id} finds it.
    dialect = live.use(models=("gpt-4o", "o1-pro"), responses_only=("o1-pro",))
    model_outcome, _ = await run(live, MODEL, model="o1-pro")
    assert model_outcome.reason is Reason.VALIDATED, model_outcome.message

    outcome, _ = await run(live, INFERENCE, model="o1-pro")
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert "answered a test response" in outcome.message
    (sent,) = [s for s in dialect.seen if s.path.endswith("/responses")]
    assert sent.body["model"] == "o1-pro"
    assert sent.body["max_output_tokens"] == 16
    assert dialect.generated == 1


@pytest.mark.parametrize("provider", ["openai-compatible"])
async def test_responses_only_model_where_no_responses_api_is_a_mismatch(live: Live) -> None:
    model = live.case.model
    live.use(responses_only=(model,))
    outcome, _ = await run(live, INFERENCE)

    assert outcome.reason is Reason.INVALID_CONFIGURATION, outcome.message
    assert "Responses API" in outcome.message
    assert outcome.reason is not Reason.MODEL_NOT_FOUND


@pytest.mark.parametrize("provider", ["dashscope"])
async def test_dashscope_allocation_quota_is_rate_limited_for_a_minute(live: Live) -> None:
    # Item 7: usually the per-minute allocation; Arrearage stays QuotaExceeded (no_quota above).
    live.use(behaviour="allocation_quota")
    outcome, _ = await run(live, CONNECTIVITY)

    assert outcome.reason is Reason.RATE_LIMITED, outcome.message
    assert outcome.code == "Throttling.AllocationQuota"
    assert outcome.retry_after == 60.0
    assert "Retrying after 60s" in outcome.message


@pytest.mark.parametrize("provider", ["openrouter"])
@pytest.mark.parametrize("variant", ["nitro", "floor", "exacto", "online", "free"])
async def test_openrouter_routing_variants_are_valid_models(live: Live, variant: str) -> None:
    # Item 9: a variant has no list entry of its own.
    live.use()
    outcome, _ = await run(live, MODEL, model=f"openai/gpt-4o:{variant}")
    assert outcome.reason is Reason.VALIDATED, outcome.message


@pytest.mark.parametrize("provider", ["openrouter"])
async def test_openrouter_unknown_suffix_is_still_not_found(live: Live) -> None:
    live.use()
    outcome, _ = await run(live, MODEL, model="openai/gpt-4o:turbo")
    assert outcome.reason is Reason.MODEL_NOT_FOUND, outcome.message


@pytest.mark.parametrize("provider", ["dashscope"])
async def test_dashscope_qwen3_inference_turns_thinking_off(live: Live) -> None:
    # Item 11: Qwen3 thinking models refuse a non-streaming call with thinking on.
    dialect = live.use(models=("qwen3-32b", "qwen-plus"))
    outcome, _ = await run(live, INFERENCE, model="qwen3-32b")

    assert outcome.reason is Reason.VALIDATED, outcome.message
    (chat,) = [s for s in dialect.seen if s.path.endswith("/chat/completions")]
    assert chat.body["enable_thinking"] is False


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
async def test_reasoning_model_unknown_by_name_is_asked_again_without_refused_fields(
    live: Live,
) -> None:
    # Item 12: a reasoning model whose name no prefix list knows; its 16-token answer holds
    # only reasoning and ends with finish_reason "length", which is a success.
    dialect = live.use(models=("gpt-6-mini", live.case.model), reasoning=("gpt-6-mini",))
    outcome, _ = await run(live, INFERENCE, model="gpt-6-mini")

    assert outcome.reason is Reason.VALIDATED, outcome.message
    chats = [s.body for s in dialect.seen if s.path.endswith("/chat/completions")]
    assert 2 <= len(chats) <= 3
    assert "temperature" not in chats[-1] and "max_tokens" not in chats[-1]
    assert chats[-1].get("max_completion_tokens") == 16 or "max_tokens" not in chats[0]
    assert dialect.generated == 1


@pytest.mark.parametrize("provider", ["mistral"])
@pytest.mark.parametrize("body", ["detail", "empty"])
async def test_mistral_401_bodies_are_invalid_api_key(live: Live, body: str) -> None:
    live.use(unauthorized=body)
    outcome, _ = await run(live, CONNECTIVITY, key="wrong-key-0123456789")
    assert outcome.reason is Reason.INVALID_API_KEY, outcome.message
    assert outcome.http_status == 401


@pytest.mark.parametrize(
    "provider", ["openai", "groq", "mistral", "together", "openrouter", "dashscope"]
)
@pytest.mark.parametrize("slash", ["", "/"])
async def test_an_endpoint_given_as_the_host_gets_the_api_path(live: Live, slash: str) -> None:
    # Item 13: groq's, together's and mistral's SDKs take the host alone; so may a user.
    dialect = live.use()
    root = live.endpoint.removesuffix(_prefix(live.provider))
    # What the validation core probes for spec.endpoint (status.endpoint shows it too).
    endpoint = registry.get(live.provider).base_url(root + slash)
    outcome, _ = await run(live, MODEL, endpoint=endpoint)

    assert endpoint == live.endpoint
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert all(s.path.startswith(_prefix(live.provider) + "/") for s in dialect.seen)


def test_together_default_endpoint_is_api_together_ai() -> None:
    assert registry.get("together").default_endpoint == "https://api.together.ai/v1"


@pytest.mark.parametrize("provider", ["openai"])
async def test_openai_shutdown_date_is_the_models_lifecycle(live: Live) -> None:
    live.use(shutdown={"gpt-4o-mini": "2099-02-26", "gpt-4o": "2025-06-14"})
    outcome, _ = await run(live, MODEL, model="gpt-4o-mini")
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert outcome.lifecycle is not None
    assert (outcome.lifecycle.stage, outcome.lifecycle.retires_at) == ("deprecated", "2099-02-26")
    assert "shuts down on 2099-02-26" in outcome.message

    retired, _ = await run(live, INFERENCE, model="gpt-4o")
    assert retired.reason is Reason.MODEL_RETIRED, retired.message
    assert live.app.state.dialect.generated == 0

    active, _ = await run(live, MODEL, model="o3-mini")
    assert active.reason is Reason.VALIDATED and active.lifecycle is None


@pytest.mark.parametrize("provider", ["openai"])
@pytest.mark.parametrize("shutdown", [None, "2099-02-26"])
async def test_openai_a_listed_model_that_says_it_is_deprecated_is_retired(
    live: Live, shutdown: str | None
) -> None:
    # Issue 24, item 10: a shut-down model is still listed (and retrievable, with or without
    # a shutdown_date); only its completion says "has been deprecated" (404 model_not_found).
    live.use(shut_down=("gpt-4o",), shutdown={"gpt-4o": shutdown} if shutdown else {})
    outcome, _ = await run(live, INFERENCE, model="gpt-4o")
    assert outcome.reason is Reason.MODEL_RETIRED, outcome.message
    assert outcome.http_status == 404 and outcome.code == "model_not_found"
    assert outcome.lifecycle is not None and outcome.lifecycle.stage == "retired"
    assert "spec.model" in outcome.message
    # A model that does not exist is still ModelNotFound.
    missing, _ = await run(live, INFERENCE, model="gpt-4o-turbo-x")
    assert missing.reason is Reason.MODEL_NOT_FOUND
