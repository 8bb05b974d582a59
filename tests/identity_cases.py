"""spec.identity manifests that the CRD (tests/e2e/test_crd.py) and the spec model
(tests/unit/test_identity_spec.py) must both refuse, naming the field, or both accept: one
connection per cloud, of the provider that takes it (bedrock, azure-openai, vertex-ai)."""

from __future__ import annotations

from typing import Any

AZURE_URL = "https://demo.openai.azure.com"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
ROLE = "arn:aws:iam::123456789012:role/agent"
POOL = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/cluster/providers/k8s"
)

AZURE_IDENTITY: dict[str, Any] = {
    "serviceAccountName": "agent",
    "azure": {"tenantId": TENANT, "clientId": CLIENT},
}
AZURE: dict[str, Any] = {
    "provider": "azure-openai",
    "endpoint": AZURE_URL,
    "azure": {"deployment": "gpt-4o", "apiVersion": "2024-10-21"},
    "identity": AZURE_IDENTITY,
}


BEDROCK: dict[str, Any] = {
    "provider": "bedrock",
    "bedrock": {"region": "us-east-1"},
    "identity": {"serviceAccountName": "agent", "aws": {"roleArn": ROLE}},
}
VERTEX: dict[str, Any] = {
    "provider": "vertex-ai",
    "vertexAI": {"project": "my-proj", "location": "us-central1", "publisher": "google"},
    "identity": {"serviceAccountName": "agent", "gcp": {"audience": POOL}},
}
# The connection of the provider that takes each cloud.
BY_CLOUD = {"aws": BEDROCK, "azure": AZURE, "gcp": VERTEX}


def azure(**identity: Any) -> dict[str, Any]:
    """The Azure connection with its identity block changed (None removes a key)."""
    merged = {**AZURE_IDENTITY, **identity}
    return {**AZURE, "identity": {k: v for k, v in merged.items() if v is not None}}


def with_cloud(block: str, value: dict[str, Any]) -> dict[str, Any]:
    """The connection of the provider that takes `block`, with that block set to `value`."""
    base = BY_CLOUD[block]
    return {**base, "identity": {"serviceAccountName": "agent", block: value}}


# (test id, spec, texts the refusal must contain). The CRD and the model word some refusals
# differently (a pattern against a message); the field's name is in both.
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "identity-and-api-key",
        {**AZURE, "apiKeySecretRef": {"name": "creds"}},
        ["identity and apiKeySecretRef are mutually exclusive"],
    ),
    (
        "identity-without-cloud",
        azure(azure=None),
        ["identity needs exactly one of aws, azure or gcp"],
    ),
    (
        "identity-with-two-clouds",
        azure(gcp={"audience": POOL}),
        ["identity needs exactly one of aws, azure or gcp"],
    ),
    (
        "identity-without-service-account",
        azure(serviceAccountName=None),
        ["serviceAccountName"],
    ),
    (
        "identity-service-account-path",
        azure(serviceAccountName="../kube-system/admin"),
        ["serviceAccountName"],
    ),
    (
        "identity-azure-on-openai",
        {"provider": "openai", "identity": AZURE_IDENTITY},
        ["identity.azure is only allowed with provider azure-openai"],
    ),
    (
        "identity-aws-on-openai",
        {"provider": "openai", "identity": {"serviceAccountName": "a", "aws": {"roleArn": ROLE}}},
        ["identity.aws is only allowed with provider bedrock"],
    ),
    (
        "identity-gcp-on-gemini",
        {"provider": "gemini", "identity": {"serviceAccountName": "a", "gcp": {"audience": POOL}}},
        ["identity.gcp is only allowed with provider vertex-ai"],
    ),
    (
        "identity-azure-on-bedrock",
        {**BEDROCK, "identity": AZURE_IDENTITY},
        ["identity.azure is only allowed with provider azure-openai"],
    ),
    (
        "identity-and-aws-credentials",
        {**BEDROCK, "awsCredentialsSecretRef": {"name": "aws"}},
        ["identity and awsCredentialsSecretRef are mutually exclusive"],
    ),
    (
        "identity-and-vertex-key",
        {**VERTEX, "apiKeySecretRef": {"name": "vertex", "key": "key.json"}},
        ["identity and apiKeySecretRef are mutually exclusive"],
    ),
    (
        "identity-azure-client-not-guid",
        azure(azure={"tenantId": TENANT, "clientId": "my-app"}),
        ["clientId"],
    ),
    (
        "identity-azure-tenant-with-slash",
        azure(azure={"tenantId": "evil.example/x", "clientId": CLIENT}),
        ["tenantId"],
    ),
    (
        "identity-azure-without-tenant",
        azure(azure={"clientId": CLIENT}),
        ["tenantId"],
    ),
    (
        "identity-with-authorization-from-secret",
        {
            **AZURE,
            "headersFromSecret": [
                {"name": "Authorization", "secretKeyRef": {"name": "gw", "key": "t"}}
            ],
        },
        ["headersFromSecret sets 'authorization', which the identity's credentials fill"],
    ),
]

# Accepted by both as written (and stored so by the API server).
VALID: list[tuple[str, dict[str, Any]]] = [
    ("identity-azure", AZURE),
    ("identity-aws-bedrock", BEDROCK),
    ("identity-gcp-vertex-ai", VERTEX),
    (
        "identity-gcp-impersonating",
        with_cloud(
            "gcp",
            {"audience": POOL, "serviceAccountEmail": "agent@my-proj.iam.gserviceaccount.com"},
        ),
    ),
    (
        "identity-azure-tenant-domain",
        azure(azure={"tenantId": "contoso.onmicrosoft.com", "clientId": CLIENT.upper()}),
    ),
    (
        "identity-azure-with-gateway-header",
        {
            **AZURE,
            "headersFromSecret": [
                {"name": "X-Gateway-Token", "secretKeyRef": {"name": "gw", "key": "t"}}
            ],
        },
    ),
]

# Field-level rules of each cloud block, set on the connection of the provider that takes it
# (`with_cloud`). (block, value, accepted)
CLOUD_BLOCKS: list[tuple[str, dict[str, Any], bool]] = [
    ("aws", {"roleArn": ROLE}, True),
    ("aws", {"roleArn": "arn:aws:iam::123456789012:role/path/to/agent+x=y,z.@-"}, True),
    ("aws", {"roleArn": ROLE, "stsRegion": "eu-central-1"}, True),
    (
        "aws",
        {"roleArn": "arn:aws-us-gov:iam::123456789012:role/a", "stsRegion": "us-gov-west-1"},
        True,
    ),
    ("aws", {"roleArn": "arn:aws-cn:iam::123456789012:role/a"}, False),  # no global STS
    ("aws", {"roleArn": "arn:aws:iam::123456789012:user/a"}, False),
    ("aws", {"roleArn": "arn:aws:iam::1234:role/a"}, False),
    ("aws", {"roleArn": ROLE, "stsRegion": "EU"}, False),
    ("aws", {}, False),
    ("gcp", {"audience": POOL}, True),
    (
        "gcp",
        {"audience": POOL, "serviceAccountEmail": "agent@my-proj.iam.gserviceaccount.com"},
        True,
    ),
    ("gcp", {"audience": "https:" + POOL}, False),
    ("gcp", {"audience": POOL, "serviceAccountEmail": "agent@example.com"}, False),
    ("gcp", {}, False),
    ("azure", {"tenantId": TENANT, "clientId": CLIENT}, True),
    ("azure", {"tenantId": TENANT}, False),
]
