"""What a namespace user can put in an LLMConnection, tried as an attacker would.

Each test is one attack from the hardening review; the spec model refuses what the CRD
refuses (tests/e2e/test_security.py proves the CRD side on a real API server), and the API
client refuses a bad name even when both were bypassed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import kopf
import pydantic
import pytest

from llmconn.controller import kube as kube_mod
from llmconn.controller.wire import Answer
from llmconn.probes import parse_spec

TRAVERSAL = "../../victim/secrets/topsecret"


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(pydantic.ValidationError) as info:
        parse_spec(raw)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]) + ": " + err["msg"]


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"apiKeySecretRef": {"name": TRAVERSAL}}, "apiKeySecretRef.name"),
        (
            {"headersFromSecret": [{"name": "X-Token", "secretKeyRef": {"name": TRAVERSAL}}]},
            "headersFromSecret.0.secretKeyRef.name",
        ),
        ({"tls": {"caBundleSecretRef": {"name": TRAVERSAL}}}, "tls.caBundleSecretRef.name"),
        ({"apiKeySecretRef": {"name": "ok", "key": "../x"}}, "apiKeySecretRef.key"),
        ({"apiKeySecretRef": {"name": "Upper"}}, "apiKeySecretRef.name"),
        ({"apiKeySecretRef": {"name": "a%2f..%2fb"}}, "apiKeySecretRef.name"),
    ],
)
def test_secret_references_are_names_not_paths(spec: dict[str, Any], field: str) -> None:
    message = refused({"provider": "openai", **spec})
    assert message.startswith(field)
    assert "not a Secret" in message


@pytest.mark.parametrize(
    "name",
    [
        "../../victim/secrets/topsecret",
        "a/b",
        "..",
        "x?watch=1",
        "x#y",
        "UPPER",
        "a" * 254,
        "",
    ],
)
def test_the_api_client_builds_no_path_from_a_bad_name(name: str) -> None:
    with pytest.raises(kube_mod.InvalidName):
        kube_mod.object_path("team-a", "secrets", name)
    with pytest.raises(kube_mod.InvalidName):
        kube_mod.object_path(name, "secrets", "ok")


class MockWire:
    """The API client's wire, answered by `handler` (no network)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def call(self, method: str, url: str, *, headers: Any, body: Any, timeout: Any) -> Any:
        request = httpx2.Request(method, url, headers=headers, content=body or b"")
        response = self.handler(request)
        return Answer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        pass


async def test_a_bad_secret_name_sends_no_request_even_past_the_crd_and_the_model() -> None:
    sent: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.url.path)
        return httpx2.Response(200, json={"data": {"apiKey": "c2VjcmV0"}})

    info = kopf.ConnectionInfo(server="https://127.0.0.1:1", token="t")  # never dialled
    client = kube_mod.Kube(info)
    await client.aclose()
    client._wire = MockWire(handler)  # type: ignore[assignment]
    try:
        with pytest.raises(kube_mod.InvalidName):
            await client.get_secret("team-a", TRAVERSAL)
        with pytest.raises(kube_mod.InvalidName):
            await client.patch_status("team-a", "../x", {})
        assert sent == []
        assert await client.get_secret("team-a", "ok") is not None
        assert sent == ["/api/v1/namespaces/team-a/secrets/ok"]
    finally:
        await client.aclose()


async def test_a_bad_service_account_name_mints_nothing_elsewhere() -> None:
    """spec.identity.serviceAccountName goes into a TokenRequest path: a name that climbs
    ("../../kube-system/serviceaccounts/admin") is refused before any request, even past
    the CRD and the spec model."""
    sent: list[tuple[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx2.Response(201, json={"status": {"token": "header.claims.signature"}})

    info = kopf.ConnectionInfo(server="https://127.0.0.1:1", token="t")  # never dialled
    client = kube_mod.Kube(info)
    await client.aclose()
    client._wire = MockWire(handler)  # type: ignore[assignment]
    try:
        for name in ("../../kube-system/serviceaccounts/admin", "agent/token", "Agent", ""):
            with pytest.raises(kube_mod.InvalidName):
                await client.service_account_token("team-a", name, "sts.amazonaws.com")
        assert sent == []
        tokens = kube_mod.ServiceAccountTokens(client, "team-a")
        assert await tokens.token("agent", "sts.amazonaws.com") == "header.claims.signature"
        [(path, body)] = sent
        assert path == "/api/v1/namespaces/team-a/serviceaccounts/agent/token"
        assert body["spec"] == {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 600}
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"validation": {"timeout": "9999h"}}, "validation.timeout", "at most 1m"),
        ({"validation": {"timeout": "61s"}}, "validation.timeout", "at most 1m"),
        ({"endpoint": "https://api.example.com/v1?"}, "endpoint", "query"),
        ({"endpoint": "https://api.example.com/v1#x"}, "endpoint", "fragment"),
        ({"endpoint": "https://api.example.com:99999/v1"}, "endpoint", "port"),
        ({"provider": "gemini", "model": "../../../admin/secret"}, "model", "'..'"),
        ({"model": "a/./b"}, "model", "'.'"),
        (
            {
                "provider": "azure-openai",
                "endpoint": "https://x.example",
                "azure": {"deployment": ".."},
            },
            "azure.deployment",
            "'..'",
        ),
        ({"headers": {"Host": "internal.example"}}, "headers", "set by the HTTP client"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "headers", "set by the HTTP client"),
        ({"headers": {"Connection": "close"}}, "headers", "set by the HTTP client"),
        ({"headers": {"Content-Length": "0"}}, "headers", "set by the HTTP client"),
        ({"headers": {"Proxy-Connection": "x"}}, "headers", "set by the HTTP client"),
        ({"headers": {"Cookie": "session=1"}}, "headers", "credentials"),
        ({"headers": {"Proxy-Authorization": "Basic x"}}, "headers", "credentials"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a header name"),
        (
            {"headersFromSecret": [{"name": "Upgrade", "secretKeyRef": {"name": "s"}}]},
            "headersFromSecret.0.name",
            "set by the HTTP client",
        ),
    ],
)
def test_request_shaping_is_refused_with_the_field_named(
    spec: dict[str, Any], field: str, words: str
) -> None:
    message = refused({"provider": "openai", **spec})
    assert message.startswith(field), message
    assert words in message


@pytest.mark.parametrize(
    "provider, header, extra",
    [
        ("openai", "Authorization", {}),
        ("anthropic", "X-Api-Key", {}),
        ("gemini", "x-goog-api-key", {}),
        (
            "azure-openai",
            "Api-Key",
            {"endpoint": "https://x.example", "azure": {"deployment": "d"}},
        ),
    ],
)
def test_the_providers_auth_header_is_not_sent_twice(
    provider: str, header: str, extra: dict[str, Any]
) -> None:
    message = refused(
        {
            "provider": provider,
            "apiKeySecretRef": {"name": "key"},
            "headersFromSecret": [{"name": header, "secretKeyRef": {"name": "other"}}],
            **extra,
        }
    )
    assert "apiKeySecretRef fills" in message


def test_a_header_given_twice_in_any_case_is_refused() -> None:
    message = refused(
        {
            "provider": "openai",
            "headers": {"X-Tenant": "a"},
            "headersFromSecret": [{"name": "x-tenant", "secretKeyRef": {"name": "s"}}],
        }
    )
    assert "given twice" in message


def test_what_a_user_legitimately_writes_is_still_accepted() -> None:
    spec = parse_spec(
        {
            "provider": "openai-compatible",
            "endpoint": "https://gateway.example.com:8443/v1",
            "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
            "apiKeySecretRef": {"name": "gw.key-1", "key": "api_key.v2"},
            "headers": {"X-Tenant": "a", "OpenAI-Organization": "org-1"},
            "headersFromSecret": [
                {"name": "Cookie", "secretKeyRef": {"name": "gw", "key": "cookie"}},
                {"name": "Proxy-Authorization", "secretKeyRef": {"name": "gw", "key": "proxy"}},
            ],
            "validation": {"timeout": "1m"},
        }
    )
    assert json.loads(spec.model_dump_json(by_alias=True))["validation"]["timeout"] == "1m"


@pytest.mark.parametrize(
    "location",
    [
        "evil.example/#",  # https://evil.example/#-aiplatform.googleapis.com
        "x@evil.example",
        "127.0.0.1",
        "us-central1.evil",
        "US-CENTRAL1",
        "us-central1-",
        "",
    ],
)
def test_a_vertex_ai_location_cannot_change_the_host_it_names(location: str) -> None:
    message = refused(
        {"provider": "vertex-ai", "vertexAI": {"project": "my-project", "location": location}}
    )
    assert message.startswith("vertexAI.location"), message
