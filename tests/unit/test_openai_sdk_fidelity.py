"""The official openai SDK against the dialect server: proof that the server speaks the dialect.

If the SDK raises the same exception classes, with the same codes, that it raises against the
real providers, the probe tests that use this server test the probes against a faithful copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette

from servers.openai_dialect import RETRY_AFTER_SECONDS, Dialect, make_app
from servers.serve import serve

KEY = "sk-test"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Starlette]]:
    app = make_app(prefix="/v1")
    with serve(app) as base:
        yield base + "/v1", app


@pytest.fixture
async def client(server: tuple[str, Starlette]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server[0], api_key=KEY, max_retries=0) as sdk:
        yield sdk


def use(server: tuple[str, Starlette], **changes: Any) -> Dialect:
    dialect = Dialect(**changes)
    server[1].state.dialect = dialect
    return dialect


async def test_good_answers_parse(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    dialect = use(server, models=("gpt-4o", "o3-mini"))

    listed = [model.id async for model in client.models.list()]
    model = await client.models.retrieve("gpt-4o")
    completion = await client.chat.completions.create(
        model="o3-mini",
        messages=[{"role": "user", "content": "Reply with the word OK."}],
        max_completion_tokens=16,
        reasoning_effort="low",
    )

    assert listed == ["gpt-4o", "o3-mini"]
    assert model.id == "gpt-4o"
    # A reasoning model spends 16 tokens thinking: no content, cut at the budget.
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == ""
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert {s.headers["authorization"] for s in dialect.seen} == {f"Bearer {KEY}"}


async def test_request_id_reaches_the_sdk(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    use(server)
    model = await client.models.retrieve("gpt-4o")
    assert model._request_id is not None and model._request_id.startswith("req_")


def _chat(model: str = "gpt-4o", **fields: Any) -> Any:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **fields
        )

    return call


def _retrieve(model: str = "gpt-4o") -> Any:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.models.retrieve(model)

    return call


async def _list(client: openai.AsyncOpenAI) -> Any:
    return [model async for model in client.models.list()]


@pytest.mark.parametrize(
    ("changes", "call", "error", "status", "code"),
    [
        (
            {"keys": frozenset({"sk-other"})},
            _list,
            openai.AuthenticationError,
            401,
            "invalid_api_key",
        ),
        ({}, _retrieve("gpt-9"), openai.NotFoundError, 404, "model_not_found"),
        ({}, _chat("gpt-9"), openai.NotFoundError, 404, "model_not_found"),
        ({"behaviour": "no_quota"}, _chat(), openai.RateLimitError, 429, "insufficient_quota"),
        ({"behaviour": "quota_legacy"}, _chat(), openai.RateLimitError, 429, None),
        ({"behaviour": "rate_limited"}, _chat(), openai.RateLimitError, 429, "rate_limit_exceeded"),
        ({"behaviour": "overloaded"}, _list, openai.RateLimitError, 429, None),
        (
            {"behaviour": "region_denied"},
            _list,
            openai.PermissionDeniedError,
            403,
            "unsupported_country_region_territory",
        ),
        ({"behaviour": "unavailable"}, _list, openai.InternalServerError, 503, None),
        ({"behaviour": "server_error"}, _chat(), openai.InternalServerError, 500, None),
        # Reasoning models refuse what other models take.
        ({}, _chat("o3-mini", max_tokens=16), openai.BadRequestError, 400, "unsupported_parameter"),
        ({}, _chat("o3-mini", temperature=0), openai.BadRequestError, 400, "unsupported_value"),
        # Other flavours.
        (
            {"flavour": "deepseek", "behaviour": "no_quota"},
            _chat(),
            openai.APIStatusError,
            402,
            "invalid_request_error",
        ),
        (
            {"flavour": "deepseek"},
            _chat("deepseek-v9"),
            openai.BadRequestError,
            400,
            "invalid_request_error",
        ),
        (
            {"flavour": "openrouter", "behaviour": "no_quota"},
            _chat(),
            openai.APIStatusError,
            402,
            "402",
        ),
        (
            {"flavour": "dashscope", "keys": frozenset({"sk-other"})},
            _list,
            openai.AuthenticationError,
            401,
            "invalid_api_key",  # compatible mode
        ),
        (
            {"flavour": "dashscope", "behaviour": "no_quota"},
            _chat(),
            openai.PermissionDeniedError,
            403,
            "Arrearage",
        ),
        (
            {"flavour": "dashscope", "behaviour": "allocation_quota"},
            _chat(),
            openai.RateLimitError,
            429,
            "Throttling.AllocationQuota",
        ),
        (
            {"flavour": "dashscope", "behaviour": "rate_limited"},
            _list,
            openai.RateLimitError,
            429,
            "Throttling.RateQuota",
        ),
        (
            {"flavour": "mistral", "keys": frozenset({"sk-other"})},
            _list,
            openai.AuthenticationError,
            401,
            None,
        ),
        ({"flavour": "vllm"}, _retrieve("gpt-9"), openai.NotFoundError, 404, "404"),
        (
            {"flavour": "groq", "keys": frozenset({"sk-other"})},
            _list,
            openai.AuthenticationError,
            401,
            "invalid_api_key",
        ),
    ],
)
async def test_error_answers_raise_what_the_sdk_raises_for_the_real_api(
    server: tuple[str, Starlette],
    client: openai.AsyncOpenAI,
    changes: dict[str, Any],
    call: Any,
    error: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    use(server, **changes)

    with pytest.raises(error) as raised:
        await call(client)

    assert type(raised.value) is error
    assert raised.value.status_code == status
    assert raised.value.code == code


async def test_rate_limit_headers_reach_the_sdk(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    use(server, behaviour="rate_limited")

    with pytest.raises(openai.RateLimitError) as raised:
        await client.models.retrieve("gpt-4o")

    headers = raised.value.response.headers
    assert headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert raised.value.request_id is not None


async def test_together_answers_a_bare_list(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    # Together's GET /models is a JSON array, not an OpenAI list object; probes accept both.
    use(server, flavour="together", models=("meta-llama/Llama-3.3-70B-Instruct-Turbo",))
    raw = await client.models.with_raw_response.list()

    assert raw.http_response.json()[0]["id"] == "meta-llama/Llama-3.3-70B-Instruct-Turbo"


# --- 2026 answers (issue 10): the SDK reads them as it reads the real API's -------------------


async def test_responses_and_the_chat_refusal_of_a_responses_only_model(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    use(server, models=("gpt-4o", "o1-pro"), responses_only=("o1-pro",))
    with pytest.raises(openai.NotFoundError) as refused:
        await _chat("o1-pro")(client)
    assert refused.value.param == "model"

    response = await client.responses.create(model="o1-pro", input="OK?", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


async def test_refused_fields_are_named_in_param(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    use(server, models=("gpt-6-mini",), reasoning=("gpt-6-mini",))
    with pytest.raises(openai.BadRequestError) as refused:
        await _chat("gpt-6-mini", max_completion_tokens=16, temperature=0)(client)
    assert (refused.value.code, refused.value.param) == ("unsupported_value", "temperature")


async def test_shutdown_date_parses(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI
) -> None:
    use(server, shutdown={"gpt-4o": "2099-02-26"})
    assert (await client.models.retrieve("gpt-4o")).shutdown_date == "2099-02-26"
    assert (await client.models.retrieve("gpt-4o-mini")).shutdown_date is None


@pytest.mark.parametrize(
    ("status", "error"), [(400, openai.BadRequestError), (429, openai.RateLimitError)]
)
async def test_litellm_budget_exceeded(
    server: tuple[str, Starlette], client: openai.AsyncOpenAI, status: int, error: type
) -> None:
    use(server, flavour="vllm", behaviour="budget_exceeded", budget_status=status)
    with pytest.raises(error) as raised:
        await _chat()(client)
    assert raised.value.type == "budget_exceeded"
