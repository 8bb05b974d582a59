"""The Vertex AI dialect server answers as the official SDKs' Vertex clients expect.

- Claude: the anthropic SDK's Vertex client (`anthropic.lib.vertex`, with a given access
  token: no google-auth call) builds the paths for messages and count_tokens, reads the
  bodies, and raises its error classes for Google's refusals.
- Gemini: google-genai with `vertexai=True` (`_api_client.py`: `projects/{p}/locations/{l}/`
  before `publishers/google/models/{m}:method`, and no project or location with an express
  API key, which goes in `x-goog-api-key`) counts tokens and generates with a given token
  or an express key, and raises `errors.ClientError` or `errors.ServerError` with Google's
  code and status (`errors.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx2
import pytest
from anthropic import AnthropicVertex
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from servers import vertex_dialect
from servers.serve import serve

TOKEN = "ya29.sdk-fidelity-token-0123456789"
CLAUDE = "claude-sonnet-4-5@20250929"
MESSAGES = [{"role": "user", "content": "Reply with the single word OK."}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, vertex_dialect.VertexState]]:
    app = vertex_dialect.make_app()
    with serve(app) as url:
        yield url, app.state.dialect


@pytest.fixture
def state(server: tuple[str, vertex_dialect.VertexState]) -> vertex_dialect.VertexState:
    server[1].reset()
    server[1].tokens = {TOKEN}
    server[1].granted = {vertex_dialect.PROJECT}
    return server[1]


def client(
    server: tuple[str, vertex_dialect.VertexState],
    *,
    token: str = TOKEN,
    region: str = "us-east5",
    project: str = vertex_dialect.PROJECT,
) -> AnthropicVertex:
    return AnthropicVertex(
        region=region,
        project_id=project,
        access_token=token,
        base_url=server[0] + "/v1",
        max_retries=0,
    )


def test_a_message_and_a_token_count_are_what_the_sdk_parses(
    server: tuple[str, vertex_dialect.VertexState], state: vertex_dialect.VertexState
) -> None:
    sdk = client(server)
    message = sdk.messages.create(model=CLAUDE, max_tokens=16, messages=MESSAGES)
    assert message.type == "message" and message.content[0].type == "text"
    counted = sdk.messages.count_tokens(model=CLAUDE, messages=MESSAGES)
    assert counted.input_tokens > 0
    paths = [seen.path for seen in state.seen]
    prefix = f"/v1/projects/{vertex_dialect.PROJECT}/locations/us-east5/publishers/anthropic"
    assert paths == [
        f"{prefix}/models/{CLAUDE}:rawPredict",
        f"{prefix}/models/count-tokens:rawPredict",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"token": "ya29.not-issued"}, anthropic.AuthenticationError),
        ({"project": "someone-elses-project"}, anthropic.PermissionDeniedError),
        ({"region": "europe-west4"}, anthropic.NotFoundError),
    ],
)
def test_googles_refusals_raise_the_sdks_errors(
    server: tuple[str, vertex_dialect.VertexState],
    state: vertex_dialect.VertexState,
    kwargs: dict[str, str],
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        client(server, **kwargs).messages.create(model=CLAUDE, max_tokens=16, messages=MESSAGES)


def test_an_unknown_model_is_not_found_for_the_counter_too(
    server: tuple[str, vertex_dialect.VertexState], state: vertex_dialect.VertexState
) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client(server).messages.count_tokens(model="claude-nope@1", messages=MESSAGES)


# --- google-genai ------------------------------------------------------------------------

GEMINI = "gemini-2.5-flash"


@contextlib.asynccontextmanager
async def genai_client(
    url: str, *, token: str = TOKEN, project: str = vertex_dialect.PROJECT, express: bool = False
) -> AsyncIterator[genai.client.AsyncClient]:
    # api_version v1, the probe's (the SDK defaults to v1beta1 for Vertex AI); its httpx2
    # transport on loopback without proxies; no retries without retry_options.
    async with httpx2.AsyncClient(trust_env=False) as http:
        options = types.HttpOptions(base_url=url, api_version="v1", httpx_async_client=http)
        if express:
            sdk = genai.Client(
                vertexai=True, api_key=vertex_dialect.EXPRESS_KEY, http_options=options
            )
        else:
            sdk = genai.Client(
                vertexai=True,
                project=project,
                location="us-central1",
                credentials=Credentials(token=token),
                http_options=options,
            )
        with sdk:
            yield sdk.aio


async def test_genai_counts_and_generates_on_the_probes_paths(
    server: tuple[str, vertex_dialect.VertexState], state: vertex_dialect.VertexState
) -> None:
    async with genai_client(server[0]) as sdk:
        counted = await sdk.models.count_tokens(model=GEMINI, contents="hi")
        answer = await sdk.models.generate_content(
            model=GEMINI,
            contents="hi",
            config=types.GenerateContentConfig(
                max_output_tokens=16, thinking_config=types.ThinkingConfig(thinking_budget=0)
            ),
        )
    assert counted.total_tokens and counted.total_tokens > 0
    assert answer.text == "OK" and answer.model_version == f"{GEMINI}-001"
    prefix = f"/v1/projects/{vertex_dialect.PROJECT}/locations/us-central1/publishers/google"
    assert [s.path for s in state.seen] == [
        f"{prefix}/models/{GEMINI}:countTokens",
        f"{prefix}/models/{GEMINI}:generateContent",
    ]
    assert {s.headers["authorization"] for s in state.seen} == {f"Bearer {TOKEN}"}


async def test_genai_express_mode_counts_with_the_key_on_the_project_free_path(
    server: tuple[str, vertex_dialect.VertexState], state: vertex_dialect.VertexState
) -> None:
    async with genai_client(server[0], express=True) as sdk:
        counted = await sdk.models.count_tokens(model=GEMINI, contents="hi")
    assert counted.total_tokens
    [seen] = state.seen
    assert seen.path == f"/v1/publishers/google/models/{GEMINI}:countTokens"
    assert seen.headers["x-goog-api-key"] == vertex_dialect.EXPRESS_KEY


@pytest.mark.parametrize(
    ("behaviour", "kwargs", "model", "error", "code", "status"),
    [
        ("ok", {"token": "ya29.not-issued"}, GEMINI, errors.ClientError, 401, "UNAUTHENTICATED"),
        ("ok", {"project": "someone-elses"}, GEMINI, errors.ClientError, 403, "PERMISSION_DENIED"),
        ("ok", {}, "gemini-0-imaginary", errors.ClientError, 404, "NOT_FOUND"),
        ("service_disabled", {}, GEMINI, errors.ClientError, 403, "PERMISSION_DENIED"),
        ("rate_limited", {}, GEMINI, errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("unavailable", {}, GEMINI, errors.ServerError, 503, "UNAVAILABLE"),
    ],
)
async def test_googles_refusals_are_the_genai_errors(
    server: tuple[str, vertex_dialect.VertexState],
    state: vertex_dialect.VertexState,
    behaviour: str,
    kwargs: dict[str, str],
    model: str,
    error: type[errors.APIError],
    code: int,
    status: str,
) -> None:
    state.reset(behaviour)
    async with genai_client(server[0], **kwargs) as sdk:
        with pytest.raises(error) as raised:
            await sdk.models.count_tokens(model=model, contents="hi")
    assert (raised.value.code, raised.value.status) == (code, status)
