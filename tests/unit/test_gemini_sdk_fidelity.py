"""The official Gemini SDK (google-genai) reads the Gemini loopback server as it reads the API.

The calls are the probe's: list the models, get one, one tiny generation, and the errors it
classifies (a bad key, an unknown model, the region and service refusals, a 429 with its
RetryInfo, a 503). google-genai raises `errors.ClientError` for every 4xx and
`errors.ServerError` for every 5xx (`errors.py`, `APIError.raise_error`), with the code, the
status and the whole error body; successes parse into its pydantic types.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from servers import gemini_dialect
from servers.serve import serve

Server = tuple[str, gemini_dialect.GeminiState]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = gemini_dialect.make_app()
    with serve(app) as url:
        yield url, app.state.dialect


@contextlib.asynccontextmanager
async def _client(
    url: str, key: str = gemini_dialect.API_KEY
) -> AsyncIterator[genai.client.AsyncClient]:
    # base_url and api_version as for a proxy in front of the API; no retries (the SDK's
    # default when http_options has no retry_options), so each error is the first answer.
    # The SDK's httpx2 transport (its default without aiohttp), on loopback without proxies.
    async with httpx2.AsyncClient(trust_env=False) as http:
        options = types.HttpOptions(base_url=url, api_version="v1beta", httpx_async_client=http)
        with genai.Client(api_key=key, http_options=options) as sdk:
            yield sdk.aio


@pytest.fixture
async def client(server: Server) -> AsyncIterator[genai.client.AsyncClient]:
    server[1].reset()
    async with _client(server[0]) as sdk:
        yield sdk


def _config(**thinking: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        max_output_tokens=16, thinking_config=types.ThinkingConfig(**thinking)
    )


# --- successes ---------------------------------------------------------------------------


async def test_models_list_pages_through_every_model(
    server: Server, client: genai.client.AsyncClient
) -> None:
    pager = await client.models.list(config={"page_size": 2})
    models = [model async for model in pager]

    assert [m.name for m in models] == [f"models/{m}" for m in gemini_dialect.MODELS]
    assert all(isinstance(m, types.Model) for m in models)
    assert models[0].supported_actions == ["generateContent", "countTokens"]
    # The SDK followed nextPageToken: three pages of two.
    assert [s.query for s in server[1].seen] == [
        "pageSize=2",
        "pageSize=2&pageToken=2",
        "pageSize=2&pageToken=4",
    ]
    assert {s.headers["x-goog-api-key"] for s in server[1].seen} == {gemini_dialect.API_KEY}


async def test_models_get_parses(client: genai.client.AsyncClient) -> None:
    model = await client.models.get(model="gemini-2.5-flash")
    assert isinstance(model, types.Model)
    assert (model.name, model.output_token_limit) == ("models/gemini-2.5-flash", 65536)


async def test_generate_content_parses(server: Server, client: genai.client.AsyncClient) -> None:
    answer = await client.models.generate_content(
        model="gemini-2.5-flash", contents="Reply OK.", config=_config(thinking_budget=0)
    )

    assert isinstance(answer, types.GenerateContentResponse)
    assert answer.text == "OK"
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason is types.FinishReason.STOP
    assert answer.usage_metadata is not None and answer.usage_metadata.total_token_count == 9
    assert answer.model_version == "gemini-2.5-flash"
    assert server[1].generated == 1


async def test_thinking_level_parses_on_gemini_3(client: genai.client.AsyncClient) -> None:
    answer = await client.models.generate_content(
        model="gemini-3.5-flash",
        contents="Reply OK.",
        config=_config(thinking_level=types.ThinkingLevel.LOW),
    )
    assert answer.text == "OK"


# --- failures ----------------------------------------------------------------------------


async def test_wrong_key_is_a_client_error_with_api_key_invalid(server: Server) -> None:
    async with _client(server[0], key="AIzaSyWrongKey") as sdk:
        with pytest.raises(errors.ClientError) as raised:
            await sdk.models.list()

    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
    details = raised.value.details["error"]["details"]
    assert details[0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("call", ["get", "generate"])
async def test_unknown_model_is_a_not_found_client_error(
    client: genai.client.AsyncClient, call: str
) -> None:
    with pytest.raises(errors.ClientError) as raised:
        if call == "get":
            await client.models.get(model="gemini-9-ultra")
        else:
            await client.models.generate_content(model="gemini-9-ultra", contents="OK?")
    assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")
    assert raised.value.message is not None and "models/gemini-9-ultra" in raised.value.message


async def test_the_sdks_own_thinking_fields_are_read(client: genai.client.AsyncClient) -> None:
    # google-genai sends thinkingConfig's fields in snake case; the API reads them (proto3
    # JSON takes both names), so Gemini 3.5 refuses the SDK's thinking_budget as it refuses
    # the probe's thinkingBudget.
    with pytest.raises(errors.ClientError) as raised:
        await client.models.generate_content(
            model="gemini-3.5-flash", contents="OK?", config=_config(thinking_budget=0)
        )
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")

    with pytest.raises(errors.ClientError) as only_thinking:
        await client.models.generate_content(
            model="gemini-2.5-pro", contents="OK?", config=_config(thinking_budget=0)
        )
    assert only_thinking.value.message is not None
    assert "only works in thinking mode" in only_thinking.value.message


@pytest.mark.parametrize(
    ("behaviour", "error", "code", "status"),
    [
        ("region", errors.ClientError, 400, "FAILED_PRECONDITION"),
        ("service_disabled", errors.ClientError, 403, "PERMISSION_DENIED"),
        ("rate_limited", errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("no_quota", errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("unavailable", errors.ServerError, 503, "UNAVAILABLE"),
    ],
)
async def test_failures_raise_the_sdk_class(
    server: Server,
    client: genai.client.AsyncClient,
    behaviour: str,
    error: type[errors.APIError],
    code: int,
    status: str,
) -> None:
    server[1].reset(behaviour)
    with pytest.raises(error) as raised:
        await client.models.generate_content(model="gemini-2.5-pro", contents="OK?")
    assert type(raised.value) is error
    assert (raised.value.code, raised.value.status) == (code, status)


async def test_rate_limit_carries_quota_failure_and_retry_info(
    server: Server, client: genai.client.AsyncClient
) -> None:
    # Gemini says how long to wait in a RetryInfo detail of the body, not in a header.
    server[1].reset("rate_limited")
    with pytest.raises(errors.ClientError) as raised:
        await client.models.list()

    details = {d["@type"].rsplit(".", 1)[-1]: d for d in raised.value.details["error"]["details"]}
    assert details["RetryInfo"]["retryDelay"] == "21s"
    assert details["QuotaFailure"]["violations"][0]["quotaValue"] == "5"
