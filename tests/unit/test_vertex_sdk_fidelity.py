"""The Vertex AI dialect server answers Claude calls as the anthropic SDK's Vertex client
(`anthropic.lib.vertex`, with a given access token: no google-auth) expects: the paths it
builds for messages and count_tokens, the bodies it reads, and the error classes it raises
for Google's refusals."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from anthropic import AnthropicVertex

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
