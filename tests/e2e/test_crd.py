"""The LLMConnection CRD on a real apiserver: names, admission rules, status, printer columns."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import identity_cases
from controlplane.cluster import ControlPlane
from llmconn.model import limits
from llmconn.model.spec import ValidationSpec
from llmconn.probes import parse_spec

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
SAMPLES = sorted((CRDS / "samples").glob("*.yaml"))
CONNECTION_SAMPLES = [path for path in SAMPLES if path.name != "secrets.yaml"]

COLUMNS = ["NAME", "PROVIDER", "MODEL", "READY", "RESULT", "REASON", "LATENCY", "LAST VALIDATED"]
COLUMNS += ["AGE"]
WIDE_COLUMNS = [*COLUMNS, "MESSAGE", "ENDPOINT"]

# A status carrying every field the API documents.
FULL_STATUS: dict[str, Any] = {
    "result": "failed",
    "reason": "InvalidAPIKey",
    "message": "The provider rejected the API key.",
    "httpStatus": 401,
    "code": "invalid_api_key",
    "latencyMs": 142,
    "lastValidationTime": "2026-11-22T10:30:00.123Z",
    "lastSuccessTime": "2026-11-21T08:00:00Z",
    "consecutiveFailures": 2,
    "observedGeneration": 3,
    "provider": "openai",
    "model": "gpt-4o-mini",
    "endpoint": "https://api.openai.com/v1",
    "validation": {"type": "Model", "interval": "5m", "timeout": "10s", "failureThreshold": 3},
    "requestId": "req_5A14FA81",
    "observedSecrets": [{"name": "openai-credentials", "resourceVersion": "48213"}],
    "lastHandledRequestedAt": "2026-11-22T10:29:59Z",
    "details": {"rateLimitRemainingRequests": "499", "modelCount": "42"},
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "InvalidAPIKey",
            "message": "The provider rejected the API key.",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-11-22T10:30:00Z",
        },
        {
            "type": "Stalled",
            "status": "True",
            "reason": "InvalidAPIKey",
            "message": "Fix the key in Secret openai-credentials.",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-11-22T10:30:00Z",
        },
    ],
}


def manifest(spec: dict[str, Any] | None, name: str = "conn") -> str:
    doc: dict[str, Any] = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name},
    }
    if spec is not None:
        doc["spec"] = spec
    return yaml.safe_dump(doc)


def get_json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def shared_ns(cluster: ControlPlane) -> Iterator[str]:
    """One namespace for the many small admission cases, which create few objects."""
    name = cluster.create_namespace("crd")
    yield name
    cluster.delete_namespace(name)


# -- the CRD itself ----------------------------------------------------------------------


def test_crd_is_established_with_documented_names(cluster: ControlPlane) -> None:
    crd = get_json(cluster, "crd", "llmconnections.llmconn.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["spec"]["group"] == "llmconn.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["status"]["acceptedNames"]
    assert names["kind"] == "LLMConnection"
    assert names["plural"] == "llmconnections"
    assert names["singular"] == "llmconnection"
    assert names["shortNames"] == ["llmc"]
    assert names["categories"] == ["llm"]
    [version] = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_short_name_and_category_resolve(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest({"provider": "openai"}))
    for resource in ("llmc", "llm", "llmconnection", "llmconnections.llmconn.dev"):
        out = cluster.kubectl("get", resource, "-n", namespace, "-o", "name").stdout
        assert out.split() == ["llmconnection.llmconn.dev/conn"], resource


def test_explain_documents_the_fields(cluster: ControlPlane) -> None:
    out = cluster.kubectl("explain", "llmconnections.spec.validation.interval").stdout
    assert '"0s"' in out
    out = cluster.kubectl("explain", "llmconnections.status.latencyMs").stdout
    assert "milliseconds" in out


def test_readme_mentions_the_crd_and_every_sample() -> None:
    readme = (CRDS / "README.md").read_text()
    assert "llmconnections.yaml" in readme
    for path in SAMPLES:
        assert f"samples/{path.name}" in readme, path.name


# -- samples -----------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_samples_cover_every_provider_family_without_namespaces() -> None:
    providers = set()
    for path in SAMPLES:
        for doc in load_docs(path):
            assert "namespace" not in doc["metadata"], f"{path.name}: no namespace, please"
            if doc["kind"] == "LLMConnection":
                providers.add(doc["spec"]["provider"])
    families = {"openai", "azure-openai", "anthropic", "gemini", "deepseek", "ollama"}
    assert providers >= families | {"openai-compatible", "mcp"}


def test_every_sample_applies_and_its_secret_refs_resolve(
    cluster: ControlPlane, namespace: str
) -> None:
    for path in SAMPLES:
        cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    expected = {
        doc["metadata"]["name"]
        for path in CONNECTION_SAMPLES
        for doc in load_docs(path)
        if doc["kind"] == "LLMConnection"
    }
    items = get_json(cluster, "llmconnections", "-n", namespace)["items"]
    assert {item["metadata"]["name"] for item in items} == expected

    secrets = {
        s["metadata"]["name"]: s for s in get_json(cluster, "secrets", "-n", namespace)["items"]
    }
    for item in items:
        spec = item["spec"]
        refs = [spec["apiKeySecretRef"]] if "apiKeySecretRef" in spec else []
        refs += [header["secretKeyRef"] for header in spec.get("headersFromSecret", [])]
        if (aws := spec.get("awsCredentialsSecretRef")) is not None:
            # The CRD's defaults are applied: the stored object names both keys.
            refs += [
                {"name": aws["name"], "key": aws["accessKeyIdKey"]},
                {"name": aws["name"], "key": aws["secretAccessKeyKey"]},
            ]
        oauth = spec.get("oauth", {})
        if (cc := oauth.get("clientCredentials")) is not None:
            refs += [
                {"name": cc["secretName"], "key": cc["clientIdKey"]},
                {"name": cc["secretName"], "key": cc["clientSecretKey"]},
            ]
        if (pk := oauth.get("privateKeyJWT")) is not None:
            refs.append({"name": pk["secretName"], "key": pk["privateKeyKey"]})
        for ref in refs:
            assert ref["name"] in secrets, (item["metadata"]["name"], ref)
            assert ref.get("key", "apiKey") in secrets[ref["name"]]["data"], ref
    # The keys are obviously fake, so a sample never looks like a leaked credential.
    for path in SAMPLES:
        for doc in load_docs(path):
            for value in doc.get("stringData", {}).values():
                assert "demo" in value and "real" in value


# -- admission: refused ------------------------------------------------------------------

# spec.identity: the same cases refuse the spec model (tests/unit/test_identity_spec.py).
IDENTITY_INVALID = identity_cases.INVALID

OPENAI = {"provider": "openai"}
AZURE_URL = "https://demo.openai.azure.com"

MCP = {"provider": "mcp", "endpoint": "https://mcp.demo.example/mcp"}
CLIENT = {"clientCredentials": {"secretName": "mcp-oauth-client"}}
# spec.oauth: the same rules refuse the spec model (tests/unit/test_oauth.py).
OAUTH_INVALID: list[tuple[str, dict[str, Any] | None, list[str]]] = [
    ("oauth-no-form", {**MCP, "oauth": {"scopes": ["a"]}}, ["spec.oauth", "exactly one of"]),
    (
        "oauth-two-forms",
        {
            **MCP,
            "oauth": {
                **CLIENT,
                "serviceAccount": {"serviceAccountName": "agent"},
            },
        },
        ["spec.oauth", "exactly one of"],
    ),
    ("oauth-openai", {**OPENAI, "oauth": CLIENT}, ["spec.oauth", "only allowed with provider"]),
    (
        "oauth-and-key",
        {**MCP, "oauth": CLIENT, "apiKeySecretRef": {"name": "k"}},
        ["spec.oauth", "mutually exclusive"],
    ),
    (
        "oauth-secret-name",
        {**MCP, "oauth": {"clientCredentials": {"secretName": "ns/other"}}},
        ["spec.oauth.clientCredentials.secretName", "should match"],
    ),
    (
        "oauth-scope-with-space",
        {**MCP, "oauth": {**CLIENT, "scopes": ["a b"]}},
        ["spec.oauth.scopes[0]", "should match"],
    ),
    (
        "oauth-token-url",
        {**MCP, "oauth": {**CLIENT, "tokenURL": "ftp://auth.example/token"}},
        ["spec.oauth.tokenURL", "http or https"],
    ),
    (
        "oauth-token-url-without-host",
        {**MCP, "oauth": {**CLIENT, "tokenURL": "https://:8443/token"}},
        ["spec.oauth.tokenURL", "with a host"],
    ),
    (
        "oauth-issuer-fragment",
        {**MCP, "oauth": {**CLIENT, "issuer": "https://auth.example/#x"}},
        ["spec.oauth.issuer", "must not have a fragment"],
    ),
    (
        "oauth-resource-port",
        {**MCP, "oauth": {**CLIENT, "resource": "https://mcp.example:99999/mcp"}},
        ["spec.oauth.resource", "invalid port"],
    ),
    (
        "oauth-issuer-long-port",
        {**MCP, "oauth": {**CLIENT, "issuer": "https://auth.example:" + "9" * 40}},
        ["spec.oauth.issuer", "invalid port"],
    ),
]

# What `llmconn validate` (the model) once took and the API server refuses: both refuse them.
ALSO_BY_THE_MODEL: list[tuple[str, dict[str, Any] | None, list[str]]] = [
    (
        "url-with-a-line-break",
        {**OPENAI, "endpoint": "https://api.example/v1\n"},
        ["spec.endpoint", "absolute http"],
    ),
    (
        "url-with-a-space-in-its-path",
        {**OPENAI, "endpoint": "https://api.example/v 1"},
        ["spec.endpoint", "must not contain spaces"],
    ),
    (
        "url-with-a-leading-space",
        {**OPENAI, "endpoint": " https://api.example/v1"},
        ["spec.endpoint", "absolute http"],
    ),
    (
        "oauth-token-url-with-a-space",
        {**MCP, "oauth": {**CLIENT, "tokenURL": "https://auth.example/a token"}},
        ["spec.oauth.tokenURL", "must not contain spaces"],
    ),
    ("header-name-257", {**OPENAI, "headers": {"X" * 257: "v"}}, ["spec.headers", "HTTP tokens"]),
    ("header-value-4097", {**OPENAI, "headers": {"X-A": "v" * 4097}}, ["spec.headers", "4096"]),
]

INVALID: list[tuple[str, dict[str, Any] | None, list[str]]] = [
    *ALSO_BY_THE_MODEL,
    ("no-spec", None, ["spec: Required value"]),
    ("no-provider", {"model": "m"}, ["spec.provider: Required value"]),
    ("unknown-provider", {"provider": "openia"}, ["spec.provider", 'Unsupported value: "openia"']),
    ("not-a-url", {**OPENAI, "endpoint": "not a url"}, ["spec.endpoint", "absolute http"]),
    ("relative-url", {**OPENAI, "endpoint": "/v1"}, ["spec.endpoint", "absolute http"]),
    (
        "ftp-url",
        {**OPENAI, "endpoint": "ftp://files.example/v1"},
        ["spec.endpoint", "http or https"],
    ),
    ("url-without-host", {**OPENAI, "endpoint": "http:///v1"}, ["spec.endpoint", "with a host"]),
    ("url-with-a-port-only", {**OPENAI, "endpoint": "http://:8080/v1"}, ["spec.endpoint", "host"]),
    (
        "headers-over-8-kib",
        {**OPENAI, "headers": {f"X-Pad-{i}": "v" * 4000 for i in range(3)}},
        ["spec.headers", "at most 8192 bytes"],
    ),
    (
        "headers-over-8-kib-in-utf8",
        {**OPENAI, "headers": {"X-Note": "é" * 4096}},
        ["spec.headers", "at most 8192 bytes"],
    ),
    (
        "url-port-out-of-range",
        {**OPENAI, "endpoint": "https://api.example:65536/v1"},
        ["spec.endpoint", "invalid port"],
    ),
    (
        "duration-in-words",
        {**OPENAI, "validation": {"interval": "5 minutes"}},
        ["spec.validation.interval", "should match"],
    ),
    (
        "duration-microseconds",
        {**OPENAI, "validation": {"timeout": "1us"}},
        ["spec.validation.timeout", "should match"],
    ),
    (
        "timeout-zero",
        {**OPENAI, "validation": {"timeout": "0s"}},
        ["spec.validation.timeout", "more than 0"],
    ),
    (
        "timeout-zero-spelled-long",
        {**OPENAI, "validation": {"timeout": "0h0.00m"}},
        ["spec.validation.timeout", "more than 0"],
    ),
    (
        "interval-500ms",
        {**OPENAI, "validation": {"interval": "500ms"}},
        ["spec.validation.interval", "at least 1s"],
    ),
    (
        "failure-threshold-zero",
        {**OPENAI, "validation": {"failureThreshold": 0}},
        ["spec.validation.failureThreshold", "greater than or equal to 1"],
    ),
    (
        "failure-threshold-101",
        {**OPENAI, "validation": {"failureThreshold": 101}},
        ["spec.validation.failureThreshold", "less than or equal to 100"],
    ),
    (
        "unknown-validation-type",
        {**OPENAI, "validation": {"type": "Ping"}},
        ["spec.validation.type", "Unsupported value"],
    ),
    (
        "azure-openai-without-azure",
        {"provider": "azure-openai", "endpoint": AZURE_URL},
        ["spec.azure", "azure.deployment is required"],
    ),
    (
        "azure-openai-without-deployment",
        {"provider": "azure-openai", "endpoint": AZURE_URL, "azure": {"apiVersion": "2024-10-21"}},
        ["spec.azure.deployment: Required value"],
    ),
    (
        "azure-block-on-openai",
        {**OPENAI, "azure": {"deployment": "gpt-4o"}},
        ["spec.azure", "only allowed with provider azure-openai"],
    ),
    (
        "mcp-block-on-anthropic",
        {"provider": "anthropic", "mcp": {"transport": "sse"}},
        ["spec.mcp", "only allowed with provider mcp"],
    ),
    (
        "unknown-mcp-transport",
        {"provider": "mcp", "endpoint": "http://127.0.0.1:9000/mcp", "mcp": {"transport": "ws"}},
        ["spec.mcp.transport", "Unsupported value"],
    ),
    (
        "openai-compatible-without-endpoint",
        {"provider": "openai-compatible"},
        ["spec.endpoint", "required for provider openai-compatible"],
    ),
    ("mcp-without-endpoint", {"provider": "mcp"}, ["spec.endpoint", "required for provider mcp"]),
    (
        "azure-openai-without-endpoint",
        {"provider": "azure-openai", "azure": {"deployment": "gpt-4o"}},
        ["spec.endpoint", "required for provider azure-openai"],
    ),
    (
        "empty-api-key-secret-name",
        {**OPENAI, "apiKeySecretRef": {"name": ""}},
        ["spec.apiKeySecretRef.name", "at least 1 chars"],
    ),
    (
        "empty-header-secret-name",
        {**OPENAI, "headersFromSecret": [{"name": "X-Token", "secretKeyRef": {"name": ""}}]},
        ["spec.headersFromSecret[0].secretKeyRef.name", "at least 1 chars"],
    ),
    (
        "empty-ca-secret-name",
        {**OPENAI, "tls": {"caBundleSecretRef": {"name": ""}}},
        ["spec.tls.caBundleSecretRef.name", "at least 1 chars"],
    ),
    ("unknown-field", {**OPENAI, "region": "eu"}, ['unknown field "spec.region"']),
    (
        "misspelt-nested-field",
        {**OPENAI, "validation": {"intervall": "5m"}},
        ['unknown field "spec.validation.intervall"'],
    ),
    (
        "authorization-header",
        {**OPENAI, "headers": {"Authorization": "Bearer x"}},
        ["spec.headers", "credentials"],
    ),
    (
        "x-api-key-header",
        {**OPENAI, "headers": {"X-API-KEY": "k"}},
        ["spec.headers", "credentials"],
    ),
    ("api-key-header", {**OPENAI, "headers": {"Api-Key": "k"}}, ["spec.headers", "credentials"]),
    (
        "x-goog-api-key-header",
        {**OPENAI, "headers": {"x-goog-api-key": "k"}},
        ["spec.headers", "credentials"],
    ),
    (
        "too-many-headers",
        {**OPENAI, "headers": {f"X-H{i}": "v" for i in range(33)}},
        ["spec.headers", "must have at most 32 items"],
    ),
    ("empty-model", {**OPENAI, "model": ""}, ["spec.model", "at least 1 chars"]),
    (
        "vertex-ai-without-vertex-ai",
        {"provider": "vertex-ai", "model": "gemini-2.5-flash"},
        ["spec.vertexAI", "vertexAI.project and vertexAI.location are required"],
    ),
    (
        "vertex-ai-without-location",
        {"provider": "vertex-ai", "vertexAI": {"project": "my-project"}},
        ["spec.vertexAI.location: Required value"],
    ),
    (
        "vertex-ai-location-that-leaves-the-host",
        {"provider": "vertex-ai", "vertexAI": {"project": "my-project", "location": "x.evil/"}},
        ["spec.vertexAI.location", "must be a region such as us-central1"],
    ),
    (
        "vertex-ai-project-in-capitals",
        {"provider": "vertex-ai", "vertexAI": {"project": "My-Project", "location": "us"}},
        ["spec.vertexAI.project", "must be a Google Cloud project ID"],
    ),
    (
        "vertex-ai-unknown-publisher",
        {
            "provider": "vertex-ai",
            "vertexAI": {"project": "my-project", "location": "us", "publisher": "meta"},
        },
        ["spec.vertexAI.publisher", "Unsupported value"],
    ),
    (
        "vertex-ai-block-on-gemini",
        {"provider": "gemini", "vertexAI": {"project": "my-project", "location": "global"}},
        ["spec.vertexAI", "only allowed with provider vertex-ai"],
    ),
    (
        "bedrock-without-region",
        {"provider": "bedrock"},
        ["spec.bedrock", "bedrock.region is required for provider bedrock"],
    ),
    (
        "bedrock-region-that-is-a-host",
        {"provider": "bedrock", "bedrock": {"region": "us-east-1.attacker.example"}},
        ["spec.bedrock.region", "should match"],
    ),
    (
        "bedrock-block-on-xai",
        {"provider": "xai", "bedrock": {"region": "us-east-1"}},
        ["spec.bedrock", "only allowed with provider bedrock"],
    ),
    (
        "aws-credentials-on-openai",
        {**OPENAI, "awsCredentialsSecretRef": {"name": "aws"}},
        ["spec.awsCredentialsSecretRef", "only allowed with provider bedrock"],
    ),
    (
        "aws-credentials-and-api-key",
        {
            "provider": "bedrock",
            "bedrock": {"region": "us-east-1"},
            "apiKeySecretRef": {"name": "k"},
            "awsCredentialsSecretRef": {"name": "aws"},
        },
        ["spec.awsCredentialsSecretRef", "use one of the two"],
    ),
    (
        "aws-credentials-secret-name-traversal",
        {
            "provider": "bedrock",
            "bedrock": {"region": "us-east-1"},
            "awsCredentialsSecretRef": {"name": "../other/aws"},
        },
        ["spec.awsCredentialsSecretRef.name", "should match"],
    ),
    (
        "x-amz-security-token-header",
        {**OPENAI, "headers": {"X-Amz-Security-Token": "t"}},
        ["spec.headers", "credentials"],
    ),
    *[(name, spec, expected) for name, spec, expected in IDENTITY_INVALID],
    *OAUTH_INVALID,
]


@pytest.mark.parametrize(
    "spec", [c[1] for c in ALSO_BY_THE_MODEL], ids=[c[0] for c in ALSO_BY_THE_MODEL]
)
def test_the_model_refuses_what_admission_refuses(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_spec(spec)


def test_the_crd_bounds_headers_as_the_model_does() -> None:
    text = (CRDS / "llmconnections.yaml").read_text()
    assert f"<= {limits.MAX_HEADER_BYTES}" in text
    assert f"at most {limits.MAX_HEADER_BYTES} bytes, names and values together" in text


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_manifest_is_refused_naming_the_field(
    cluster: ControlPlane, shared_ns: str, spec: dict[str, Any] | None, expected: list[str]
) -> None:
    result = cluster.kubectl(
        "apply", "-n", shared_ns, "-f", "-", input=manifest(spec, "refused"), check=False
    )
    assert result.returncode != 0, result.stdout
    for text in expected:
        assert text in result.stderr
    assert "created" not in result.stdout


# -- admission: accepted -----------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any]]] = [
    ("interval-off", {**OPENAI, "validation": {"interval": "0s"}}),
    ("interval-1s", {**OPENAI, "validation": {"interval": "1s"}}),
    ("interval-1.5s", {**OPENAI, "validation": {"interval": "1.5s", "timeout": "500ms"}}),
    ("interval-90s", {**OPENAI, "validation": {"interval": "90s"}}),
    ("interval-1h30m", {**OPENAI, "validation": {"interval": "1h30m", "timeout": "1m"}}),
    ("loopback", {"provider": "openai-compatible", "endpoint": "http://127.0.0.1:8080/v1"}),
    ("ipv6-loopback", {"provider": "openai-compatible", "endpoint": "http://[::1]:8080/v1"}),
    ("metadata-address", {**OPENAI, "endpoint": "http://169.254.169.254/v1"}),
    ("port-65535", {**OPENAI, "endpoint": "https://api.example:65535/v1"}),
    ("headers-8-kib", {**OPENAI, "headers": {"X-A": "a" * 4093, "X-B": "b" * 4093}}),
    (
        "oauth-urls-with-ports",
        {
            **MCP,
            "oauth": {
                "clientCredentials": {
                    "secretName": "mcp-oauth-client",
                    "clientIdKey": "clientId",
                    "clientSecretKey": "clientSecret",
                },
                "tokenURL": "https://auth.example:8443/token",
                "issuer": "http://127.0.0.1:9000",
                "resource": "https://mcp.demo.example:443/mcp",
            },
        },
    ),
    ("plain-headers", {**OPENAI, "headers": {"OpenAI-Organization": "org-1", "X-Api-Keys": "v1"}}),
    (
        "vertex-ai-claude-by-project-number",
        {
            "provider": "vertex-ai",
            "model": "claude-sonnet-4-5@20250929",
            "vertexAI": {
                "project": "123456789012",
                "location": "us-east5",
                "publisher": "anthropic",
            },
        },
    ),
    (
        "vertex-ai-global-through-psc",
        {
            "provider": "vertex-ai",
            "endpoint": "https://aiplatform-vertex.p.googleapis.com",
            "vertexAI": {"project": "my-project", "location": "global", "publisher": "google"},
        },
    ),
    (
        "everything",
        {
            "provider": "mcp",
            "endpoint": "https://mcp.internal.example:8443/mcp",
            "model": "tools",
            "apiKeySecretRef": {"name": "mcp", "key": "token"},
            "headers": {"X-Team": "agents"},
            "headersFromSecret": [
                {"name": "X-Gateway", "secretKeyRef": {"name": "gw", "key": "t"}}
            ],
            "mcp": {"transport": "sse"},
            "suspend": True,
            "validation": {
                "type": "Inference",
                "interval": "1h",
                "timeout": "30s",
                "failureThreshold": 100,
            },
            "tls": {
                "caBundleSecretRef": {"name": "ca", "key": "ca.crt"},
                "insecureSkipVerify": False,
            },
        },
    ),
]


VALID += identity_cases.VALID


@pytest.mark.parametrize(("name", "spec"), VALID, ids=[c[0] for c in VALID])
def test_valid_manifest_is_stored_as_written(
    cluster: ControlPlane, shared_ns: str, name: str, spec: dict[str, Any]
) -> None:
    cluster.kubectl("apply", "-n", shared_ns, "-f", "-", input=manifest(spec, name))
    stored = get_json(cluster, "llmconnection", name, "-n", shared_ns)["spec"]
    assert stored == spec


def test_defaults_only_where_documented(cluster: ControlPlane, namespace: str) -> None:
    docs = [
        manifest({**OPENAI, "apiKeySecretRef": {"name": "creds"}, "validation": {}}, "plain"),
        manifest(
            {"provider": "azure-openai", "endpoint": AZURE_URL, "azure": {"deployment": "d"}}, "az"
        ),
        manifest({"provider": "mcp", "endpoint": "http://127.0.0.1:9/mcp", "mcp": {}}, "mcp"),
        manifest(
            {"provider": "vertex-ai", "vertexAI": {"project": "my-project", "location": "us"}}, "vx"
        ),
    ]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="---\n".join(docs))
    plain = get_json(cluster, "llmconnection", "plain", "-n", namespace)["spec"]
    # interval, timeout, failureThreshold and type come from the operator's configuration.
    assert plain == {
        **OPENAI,
        "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
        "validation": {},
    }
    azure = get_json(cluster, "llmconnection", "az", "-n", namespace)["spec"]
    assert azure["azure"] == {"deployment": "d", "apiVersion": "2024-10-21"}
    mcp = get_json(cluster, "llmconnection", "mcp", "-n", namespace)["spec"]
    assert mcp["mcp"] == {"transport": "streamable-http"}
    vertex = get_json(cluster, "llmconnection", "vx", "-n", namespace)["spec"]
    assert vertex["vertexAI"] == {"project": "my-project", "location": "us", "publisher": "google"}


# The duration rules in CEL against the operator's own parser, on the tricky spellings.
DURATIONS = [
    "0s", "0", "0ms", "00s", "0.0s", "0h0m0s", "1s", "01s", "500ms", "999ms", "1000ms", "0999ms",
    "01000ms", "0.5s", "0.999s", "1.5s", "0.5s0.5s", "0.4s0.4s", "1m", "0.01m", "0.5m", "1h30m",
    "90s", "1ms1m", "0.001h", "0.0001h", "10h0m0s", "3000000h", "99999999999999999999ms",
    "1us", "-1s", "1.s", ".5s", "1e3s", "1S", "5 minutes", "", "s", "1h 30m",
]  # fmt: skip


def python_accepts(field: str, value: str) -> bool:
    try:
        ValidationSpec.model_validate({field: value})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("field", ["interval", "timeout"])
def test_duration_rules_match_the_operator_parser(
    cluster: ControlPlane, shared_ns: str, field: str
) -> None:
    docs = [
        manifest({**OPENAI, "validation": {field: value}}, f"{field}-{i}")
        for i, value in enumerate(DURATIONS)
    ]
    # One server-side dry run for all: kubectl reports each object, refused or created.
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        shared_ns,
        "-f",
        "-",
        input="---\n".join(docs),
        check=False,
    )
    created = set(re.findall(rf"llmconnection\.llmconn\.dev/({field}-\d+) created", result.stdout))
    crd = {value: f"{field}-{i}" in created for i, value in enumerate(DURATIONS)}
    python = {value: python_accepts(field, value) for value in DURATIONS}
    assert crd == python
    assert any(crd.values()) and not all(crd.values())


# -- status subresource and printer columns ----------------------------------------------


def test_status_with_every_documented_field_survives_unpruned(
    cluster: ControlPlane, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest({"provider": "openai"}))
    cluster.kubectl(
        "patch", "llmconnection", "conn", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": FULL_STATUS}),
    )  # fmt: skip
    stored = get_json(cluster, "llmconnection", "conn", "-n", namespace)
    assert stored["status"] == FULL_STATUS
    # A field the schema does not declare is dropped or refused: so the check above has teeth.
    cluster.kubectl(
        "patch", "llmconnection", "conn", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"undeclared": "x"}}), check=False,
    )  # fmt: skip
    status = get_json(cluster, "llmconnection", "conn", "-n", namespace)["status"]
    assert "undeclared" not in status
    assert status == FULL_STATUS


def test_status_is_written_only_through_the_subresource(
    cluster: ControlPlane, namespace: str
) -> None:
    doc = yaml.safe_load(manifest({"provider": "openai"}))
    doc["status"] = {"result": "success"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    stored = get_json(cluster, "llmconnection", "conn", "-n", namespace)
    assert "status" not in stored or "result" not in stored["status"]


def test_bad_status_values_are_refused(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest({"provider": "openai"}))
    bad = copy.deepcopy(FULL_STATUS)
    bad["result"] = "maybe"
    result = cluster.kubectl(
        "patch", "llmconnection", "conn", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": bad}), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "status.result" in result.stderr


def table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """kubectl's table as its header and one {column: value} per row, cut at the header's
    column starts (empty cells are blank, and titles like LAST VALIDATED hold a space)."""
    header, *rows = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    cut = [
        {n: row[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for row in rows
    ]
    return names, cut


def test_printer_columns(cluster: ControlPlane, namespace: str) -> None:
    spec = {**OPENAI, "model": "gpt-4o-mini"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec))
    status = copy.deepcopy(FULL_STATUS)
    status["conditions"] = status["conditions"][:1]
    cluster.kubectl(
        "patch", "llmconnection", "conn", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip

    header, [values] = table(cluster.kubectl("get", "llmconnections", "-n", namespace).stdout)
    assert header == COLUMNS
    assert values["NAME"] == "conn"
    assert values["PROVIDER"] == "openai"
    assert values["MODEL"] == "gpt-4o-mini"
    assert values["READY"] == "False"
    assert values["RESULT"] == "failed"
    assert values["REASON"] == "InvalidAPIKey"
    assert values["LATENCY"] == "142"
    assert re.fullmatch(r"\d+[smhdy]\S*", values["LAST VALIDATED"]), values  # an age: a date

    header, [values] = table(cluster.kubectl("get", "llmc", "-n", namespace, "-o", "wide").stdout)
    assert header == WIDE_COLUMNS
    assert values["MESSAGE"] == FULL_STATUS["message"]
    assert values["ENDPOINT"] == FULL_STATUS["endpoint"]


def test_printer_columns_before_any_status(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(OPENAI))
    header, [values] = table(cluster.kubectl("get", "llmconnections", "-n", namespace).stdout)
    assert header == COLUMNS
    assert values["NAME"] == "conn"
    assert values["PROVIDER"] == "openai"
    assert values["AGE"]
    # Nothing validated yet: the status columns are blank, not invented.
    for column in ("MODEL", "READY", "RESULT", "REASON", "LATENCY", "LAST VALIDATED"):
        assert values[column] == "", column


# -- spec.identity's cloud blocks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "value", "accepted"),
    identity_cases.CLOUD_BLOCKS,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(identity_cases.CLOUD_BLOCKS)],
)
def test_identity_cloud_block_fields(
    cluster: ControlPlane, shared_ns: str, block: str, value: dict[str, Any], accepted: bool
) -> None:
    """The field rules of each cloud block, as the spec model has them, on the connection of
    the provider that takes the block."""
    spec = identity_cases.with_cloud(block, value)
    result = cluster.kubectl(
        "apply", "-n", shared_ns, "-f", "-", input=manifest(spec, f"cloud-{block}"), check=False
    )
    if accepted:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert f"spec.identity.{block}" in result.stderr, result.stderr
