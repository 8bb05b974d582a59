"""The official Ollama client (ollama-python) reads the Ollama loopback server as it reads Ollama.

The calls are the probe's: /api/tags, /api/show, a tiny /api/generate (and /api/chat), and the
errors it classifies. The client raises `ResponseError` for every error status, with the
status code and the `error` string of Ollama's `{"error": "..."}` body (`_types.py`), and
parses successes into its pydantic types.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ollama
import pytest

from servers import ollama_dialect
from servers.serve import serve

Server = tuple[str, ollama_dialect.OllamaState]
TOKEN = "loopback-proxy-token"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = ollama_dialect.make_app()
    with serve(app) as url:
        yield url, app.state.dialect


@contextlib.asynccontextmanager
async def _client(host: str, **options: Any) -> AsyncIterator[ollama.AsyncClient]:
    # trust_env off: the client's httpx would otherwise send loopback to a proxy from the env.
    # (AsyncClient has __aexit__ but no __aenter__ in 0.6.3: close it by hand.)
    sdk = ollama.AsyncClient(host=host, trust_env=False, **options)
    try:
        yield sdk
    finally:
        await sdk.close()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[ollama.AsyncClient]:
    server[1].reset()
    async with _client(server[0]) as sdk:
        yield sdk


# --- successes ---------------------------------------------------------------------------


async def test_tags_parse(client: ollama.AsyncClient) -> None:
    listed = await client.list()

    assert isinstance(listed, ollama.ListResponse)
    assert [m.model for m in listed.models] == list(ollama_dialect.MODELS)
    assert listed.models[0].details is not None
    assert listed.models[0].details.parameter_size == "3.2B"
    assert listed.models[0].modified_at is not None


async def test_show_parses_a_name_without_a_tag(server: Server, client: ollama.AsyncClient) -> None:
    shown = await client.show("llama3.2")

    assert isinstance(shown, ollama.ShowResponse)
    assert shown.details is not None and shown.details.quantization_level == "Q4_K_M"
    assert shown.capabilities == ["completion", "tools"]
    assert server[1].seen[-1].body == {"model": "llama3.2"}


async def test_generate_without_streaming_parses(
    server: Server, client: ollama.AsyncClient
) -> None:
    answer = await client.generate(
        model="llama3.2", prompt="Reply OK.", stream=False, options={"num_predict": 16}
    )

    assert isinstance(answer, ollama.GenerateResponse)
    assert (answer.response, answer.done, answer.done_reason) == ("OK", True, "stop")
    assert answer.model == "llama3.2:latest"
    assert server[1].seen[-1].body["stream"] is False
    assert server[1].generated == 1


async def test_chat_without_streaming_parses(client: ollama.AsyncClient) -> None:
    answer = await client.chat(
        model="qwen3:8b", messages=[{"role": "user", "content": "Reply OK."}], stream=False
    )
    assert isinstance(answer, ollama.ChatResponse)
    assert (answer.message.role, answer.message.content) == ("assistant", "OK")


async def test_a_streamed_generation_ends_with_done(client: ollama.AsyncClient) -> None:
    # Streaming is Ollama's default; the probe turns it off, the client reads it line by line.
    parts = [
        part async for part in await client.generate(model="llama3.2", prompt="OK?", stream=True)
    ]

    assert "".join(p.response for p in parts) == "OK"
    assert [p.done for p in parts] == [False, False, True]
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == 2


# --- failures ----------------------------------------------------------------------------


async def test_unknown_model_is_a_404_response_error(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as shown:
        await client.show("mistral")
    with pytest.raises(ollama.ResponseError) as generated:
        await client.generate(model="mistral", prompt="OK?", stream=False)

    assert (shown.value.status_code, shown.value.error) == (404, "model 'mistral' not found")
    assert generated.value.status_code == 404
    assert generated.value.error == 'model "mistral" not found, try pulling it first'


async def test_an_embedding_model_refuses_generate(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        await client.generate(model="nomic-embed-text", prompt="OK?", stream=False)
    assert raised.value.status_code == 400
    assert raised.value.error == '"nomic-embed-text" does not support generate'


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [("busy", 503), ("oom", 500), ("rate_limited", 429)],
)
async def test_failures_raise_response_error(
    server: Server, client: ollama.AsyncClient, behaviour: str, status: int
) -> None:
    server[1].reset(behaviour)
    with pytest.raises(ollama.ResponseError) as raised:
        await client.list()
    assert raised.value.status_code == status
    # The client took the message out of {"error": ...}, so the body was Ollama's shape.
    assert not raised.value.error.startswith("{")


async def test_unknown_path_is_gos_plain_404(server: Server) -> None:
    # An endpoint that is not an Ollama (or a wrong base path): the client reports the text.
    async with _client(server[0] + "/v1") as client:
        with pytest.raises(ollama.ResponseError) as raised:
            await client.list()
    assert (raised.value.status_code, raised.value.error) == (404, "404 page not found")


async def test_a_proxy_token_goes_as_bearer() -> None:
    app = ollama_dialect.make_app(token=TOKEN)
    with serve(app) as url:
        async with _client(url) as without:
            with pytest.raises(ollama.ResponseError) as raised:
                await without.list()
        async with _client(url, headers={"Authorization": f"Bearer {TOKEN}"}) as signed:
            listed = await signed.list()

    assert (raised.value.status_code, raised.value.error) == (401, "unauthorized")
    assert len(listed.models) == len(ollama_dialect.MODELS)
