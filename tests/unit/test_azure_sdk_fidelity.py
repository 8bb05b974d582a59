"""The official openai SDK's Azure client reads the Azure OpenAI loopback server as it reads Azure.

The calls are the probe's: the resource's model list, a chat completion on a deployment, the
free check (an empty `messages` list the deployment refuses), and the errors it classifies.
`AsyncAzureOpenAI` builds the dated surface's URLs itself (openai `lib/azure.py`:
/openai/deployments/{model}/chat/completions, `api-version` on every call, the key in
`api-key`); the /openai/v1 surface is called with the plain client, as Microsoft's guide does.
The SDK raises the same classes, with the same codes, as for Azure itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from servers import azure_dialect
from servers.serve import serve

Server = tuple[str, azure_dialect.AzureState]
API_VERSION = "2024-10-21"
USER = [{"role": "user", "content": "Reply with the single word OK."}]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = azure_dialect.make_app()
    with serve(app) as url:
        yield url, app.state.dialect


def _azure(url: str, key: str = azure_dialect.API_KEY, **options: Any) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=url,
        api_key=key,
        api_version=options.pop("api_version", API_VERSION),
        max_retries=0,
        **options,
    )


@pytest.fixture
async def client(server: Server) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    server[1].reset()
    async with _azure(server[0]) as sdk:
        yield sdk


@pytest.fixture
async def v1(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    server[1].reset()
    async with openai.AsyncOpenAI(
        base_url=server[0] + "/openai/v1/", api_key=azure_dialect.API_KEY, max_retries=0
    ) as sdk:
        yield sdk


# --- successes ---------------------------------------------------------------------------


async def test_models_list_parses(server: Server, client: openai.AsyncAzureOpenAI) -> None:
    models = [model async for model in client.models.list()]

    assert [m.id for m in models] == [m["id"] for m in azure_dialect.MODELS]
    assert models[1].model_extra is not None
    assert models[1].model_extra["lifecycle_status"] == azure_dialect.MODELS[1]["lifecycle_status"]
    (seen,) = server[1].seen
    assert (seen.path, seen.query) == ("/openai/models", f"api-version={API_VERSION}")
    assert seen.headers["api-key"] == azure_dialect.API_KEY


async def test_chat_completion_on_a_deployment_parses(
    server: Server, client: openai.AsyncAzureOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-prod", messages=USER, max_tokens=16
    )
    completion = raw.parse()

    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].message.content == "OK"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    assert raw.headers["x-ms-deployment-name"] == "gpt-4o-prod"
    assert server[1].seen[-1].path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert server[1].generated == 1


async def test_the_free_check_is_a_bad_request_from_the_deployment(
    server: Server, client: openai.AsyncAzureOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="gpt-4o-prod", messages=[])

    assert raised.value.param == "messages"
    assert raised.value.response.headers["x-ms-deployment-name"] == "gpt-4o-prod"
    assert server[1].generated == 0


async def test_v1_surface_takes_the_openai_client(server: Server, v1: openai.AsyncOpenAI) -> None:
    listed = [model.id async for model in v1.models.list()]
    completion = await v1.chat.completions.create(model="gpt-4o-prod", messages=USER, max_tokens=16)
    response = await v1.responses.create(model="o1-pro", input="OK?", max_output_tokens=16)

    assert listed == [m["id"] for m in azure_dialect.MODELS]
    assert completion.model == "gpt-4o-2024-08-06"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert {s.headers["authorization"] for s in server[1].seen} == {
        f"Bearer {azure_dialect.API_KEY}"
    }


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["dated", "v1"])
async def test_wrong_key_is_authentication_error(server: Server, surface: str) -> None:
    sdk: openai.AsyncOpenAI
    if surface == "dated":
        sdk = _azure(server[0], key="0" * 32)
    else:
        sdk = openai.AsyncOpenAI(
            base_url=server[0] + "/openai/v1/", api_key="0" * 32, max_retries=0
        )
    async with sdk:
        with pytest.raises(openai.AuthenticationError) as raised:
            await sdk.models.list()
    assert (raised.value.status_code, raised.value.code) == (401, "401")


async def test_unknown_deployment_is_not_found(client: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="gpt-9-prod", messages=USER)
    assert raised.value.code == "DeploymentNotFound"


async def test_unknown_api_version_is_a_bad_request(server: Server) -> None:
    async with _azure(server[0], api_version="2020-01-01") as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.models.list()
    assert raised.value.code == "BadRequest"
    assert "API version not supported" in raised.value.message


@pytest.mark.parametrize(
    ("deployment", "fields", "code", "param"),
    [
        ("o3-mini", {"max_tokens": 16}, "unsupported_parameter", "max_tokens"),
        ("embeddings", {}, "OperationNotSupported", None),
    ],
)
async def test_a_deployment_refuses_what_its_model_does_not_take(
    client: openai.AsyncAzureOpenAI,
    deployment: str,
    fields: dict[str, Any],
    code: str,
    param: str | None,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model=deployment, messages=USER, **fields)
    assert (raised.value.code, raised.value.param) == (code, param)


@pytest.mark.parametrize(
    ("behaviour", "error", "status"),
    [
        ("forbidden", openai.PermissionDeniedError, 403),
        ("rate_limited", openai.RateLimitError, 429),
        ("unavailable", openai.InternalServerError, 503),
    ],
)
async def test_failures_raise_the_sdk_class(
    server: Server,
    client: openai.AsyncAzureOpenAI,
    behaviour: str,
    error: type[openai.APIStatusError],
    status: int,
) -> None:
    server[1].reset(behaviour)
    with pytest.raises(error) as raised:
        await client.chat.completions.create(model="gpt-4o-prod", messages=USER)
    assert type(raised.value) is error
    assert raised.value.status_code == status


async def test_rate_limit_wait_is_read_by_the_sdk(
    server: Server, client: openai.AsyncAzureOpenAI
) -> None:
    server[1].reset("rate_limited")
    with pytest.raises(openai.RateLimitError) as raised:
        await client.models.list()

    headers = raised.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("6", "6000")
    # The wait the SDK itself would honour before a retry (openai `_base_client.py`).
    assert client._parse_retry_after_header(headers) == 6.0
