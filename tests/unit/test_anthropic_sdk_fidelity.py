"""The official Anthropic SDK reads the Anthropic loopback server as it reads the real API.

When the SDK raises its own error class for each of the server's failures and parses its
successes into its own types, the server speaks the dialect closely enough for the probe
tests built on it to mean something.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest

from servers import anthropic_dialect
from servers.serve import serve


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, anthropic_dialect.AnthropicState]]:
    app = anthropic_dialect.make_app()
    with serve(app) as url:
        yield url, app.state.dialect


@pytest.fixture
async def client(
    server: tuple[str, anthropic_dialect.AnthropicState],
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    url, state = server
    state.reset()
    async with anthropic.AsyncAnthropic(
        base_url=url, api_key=anthropic_dialect.API_KEY, max_retries=0
    ) as sdk:
        yield sdk


def _set(server: tuple[str, anthropic_dialect.AnthropicState], behaviour: str) -> None:
    server[1].reset(behaviour)


async def _message(sdk: anthropic.AsyncAnthropic, model: str) -> Any:
    return await sdk.messages.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "Reply OK."}]
    )


# --- successes ---------------------------------------------------------------------------


async def test_models_list_pages_through_every_model(client: anthropic.AsyncAnthropic) -> None:
    ids = [model.id async for model in client.models.list(limit=2)]
    assert ids == [m["id"] for m in anthropic_dialect.MODELS]


async def test_models_retrieve_resolves_an_alias(client: anthropic.AsyncAnthropic) -> None:
    model = await client.models.retrieve("claude-haiku-4-5")
    assert (model.id, model.type) == ("claude-haiku-4-5-20251001", "model")


async def test_messages_create_parses(client: anthropic.AsyncAnthropic) -> None:
    message = await _message(client, "claude-opus-4-5")
    assert message.model == "claude-opus-4-5-20251101"
    assert message.content[0].type == "text" and message.content[0].text == "OK"
    assert message.usage.output_tokens == 2


async def test_the_sdk_headers_pass_the_servers_checks(
    client: anthropic.AsyncAnthropic, server: tuple[str, anthropic_dialect.AnthropicState]
) -> None:
    await client.models.retrieve("claude-opus-4-1")
    seen = server[1].seen[-1].headers
    # SDK 2.x sends an api_key as a Bearer token and a newer API version than the probe's
    # 2023-06-01; the server takes both, as the API must for its own SDK.
    sent = seen.get("x-api-key") or seen.get("authorization", "").removeprefix("Bearer ")
    assert sent == anthropic_dialect.API_KEY
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", seen["anthropic-version"])


# --- failures ----------------------------------------------------------------------------


async def test_wrong_key_is_authentication_error(
    server: tuple[str, anthropic_dialect.AnthropicState],
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=server[0], api_key="sk-ant-wrong", max_retries=0
    ) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk.models.list()
    assert caught.value.status_code == 401
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")


async def test_unknown_model_is_not_found_error(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-no-such-model")
    with pytest.raises(anthropic.NotFoundError):
        await _message(client, "claude-no-such-model")


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("forbidden", anthropic.PermissionDeniedError),
        ("rate_limited", anthropic.RateLimitError),
        ("api_error", anthropic.InternalServerError),
        ("overloaded", anthropic.OverloadedError),
    ],
)
async def test_failures_raise_the_sdk_class(
    client: anthropic.AsyncAnthropic,
    server: tuple[str, anthropic_dialect.AnthropicState],
    behaviour: str,
    error: type[anthropic.APIStatusError],
) -> None:
    _set(server, behaviour)
    with pytest.raises(error) as caught:
        await client.models.list()
    assert type(caught.value) is error
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"


async def test_overloaded_is_a_529(
    client: anthropic.AsyncAnthropic, server: tuple[str, anthropic_dialect.AnthropicState]
) -> None:
    _set(server, "overloaded")
    with pytest.raises(anthropic.OverloadedError) as caught:
        await _message(client, "claude-haiku-4-5")
    assert caught.value.status_code == 529


async def test_rate_limit_sends_retry_after(
    client: anthropic.AsyncAnthropic, server: tuple[str, anthropic_dialect.AnthropicState]
) -> None:
    _set(server, "rate_limited")
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.models.list()
    assert caught.value.response.headers["retry-after"] == "17"


async def test_empty_balance_is_a_bad_request_about_credit(
    client: anthropic.AsyncAnthropic, server: tuple[str, anthropic_dialect.AnthropicState]
) -> None:
    _set(server, "no_credit")
    await client.models.list()  # free calls still work without credit
    with pytest.raises(anthropic.BadRequestError) as caught:
        await _message(client, "claude-haiku-4-5")
    assert "credit balance is too low" in caught.value.message


async def test_spend_limit_detail_is_read_by_the_sdk(
    client: anthropic.AsyncAnthropic, server: tuple[str, anthropic_dialect.AnthropicState]
) -> None:
    _set(server, "spend_limit")
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError):
        await _message(client, "claude-haiku-4-5")


# --- 2026 answers (issue 10): lifecycle and the error codes the SDK maps ------------------------


async def test_model_lifecycle_parses(server, client) -> None:
    _set(server, "ok")
    retired = await client.models.retrieve("claude-3-opus-20240229")
    deprecated = await client.models.retrieve("claude-3-7-sonnet-20250219")
    active = await client.models.retrieve("claude-opus-4-5-20251101")
    assert retired.lifecycle == "retired" and retired.retires_at is not None
    assert deprecated.lifecycle == "deprecated"
    assert deprecated.retires_at is not None and deprecated.retires_at.year == 2027
    assert active.lifecycle == "active" and active.retires_at is None


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("on_hold", anthropic.BadRequestError),  # the SDK's OrganizationOnHoldError
        ("billing", anthropic.PaymentRequiredError),
        ("usage_limit", anthropic.BadRequestError),
    ],
)
async def test_2026_errors_raise_the_sdks_classes(server, client, behaviour, error) -> None:
    _set(server, behaviour)
    with pytest.raises(error) as raised:
        await _message(client, "claude-opus-4-5")
    if behaviour == "on_hold":
        assert type(raised.value).__name__ == "OrganizationOnHoldError"
