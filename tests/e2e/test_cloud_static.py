"""xai and bedrock with static credentials from Secrets, end to end on the real control plane:
the operator reads a Bedrock API key, or AWS access keys from one Secret, signs with them,
and writes each verdict; a rotation of the access keys' Secret reaches its verdict; no
credential appears in a status, an Event, a metric or the debug log."""

from __future__ import annotations

import json
import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opkit import Api, OperatorProcess, condition, leaked, manifest, secret, wait_for

from controlplane.cluster import ControlPlane
from servers.bedrock_dialect import HAIKU, NOVA, SONNET_37, BedrockState
from servers.bedrock_dialect import make_app as bedrock_app
from servers.openai_dialect import Dialect
from servers.openai_dialect import make_app as openai_app
from servers.serve import serve

ACCESS_KEY_ID = "akid-" + pysecrets.token_hex(8).upper()
SECRET_ACCESS_KEY = "secret-" + pysecrets.token_hex(20)
ROTATED_SECRET = "rotated-" + pysecrets.token_hex(20)
API_KEY = "absk-" + pysecrets.token_hex(24)
XAI_KEY = "xai-" + pysecrets.token_hex(24)
BAD_XAI_KEY = "xai-bad-" + pysecrets.token_hex(24)
ALL = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, ROTATED_SECRET, API_KEY, XAI_KEY, BAD_XAI_KEY)


@pytest.fixture
def providers() -> Iterator[tuple[BedrockState, str, str]]:
    state = BedrockState(
        access_keys={ACCESS_KEY_ID: (SECRET_ACCESS_KEY, None)},
        api_keys=frozenset({API_KEY}),
        invoke_denied=frozenset({NOVA}),
    )
    xai = openai_app(Dialect(flavour="xai", keys=frozenset({XAI_KEY}), models=("grok-4",)))
    with serve(bedrock_app(state)) as aws, serve(xai) as url:
        yield state, aws, url + "/v1"


def bedrock(aws: str, model: str, vtype: str, **credentials: Any) -> dict[str, Any]:
    return {
        "provider": "bedrock",
        "endpoint": aws,
        "bedrock": {"region": "us-east-1"},
        "model": model,
        "validation": {"type": vtype},
        **credentials,
    }


def test_static_cloud_credentials_reach_their_verdicts_and_never_leak(
    cluster: ControlPlane,
    namespace: str,
    tmp_path: Path,
    providers: tuple[BedrockState, str, str],
) -> None:
    state, aws, xai = providers
    signed = {"awsCredentialsSecretRef": {"name": "aws"}}
    keyed = {"apiKeySecretRef": {"name": "bedrock-key"}}
    connections = {
        "sigv4": bedrock(aws, HAIKU, "Inference", **signed),
        "api-key": bedrock(aws, f"us.{SONNET_37}", "Model", **keyed),
        "no-invoke": bedrock(aws, NOVA, "Inference", **signed),
        "xai": {
            "provider": "xai",
            "endpoint": xai,
            "model": "grok-4",
            "apiKeySecretRef": {"name": "xai"},
        },
        "xai-bad": {
            "provider": "xai",
            "endpoint": xai,
            "apiKeySecretRef": {"name": "xai-bad"},
        },
    }
    aws_keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
    docs = [
        secret(namespace, "aws", aws_keys),
        secret(namespace, "bedrock-key", {"apiKey": API_KEY}),
        secret(namespace, "xai", {"apiKey": XAI_KEY}),
        secret(namespace, "xai-bad", {"apiKey": BAD_XAI_KEY}),
        *(manifest(namespace, name, spec) for name, spec in connections.items()),
    ]
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
    op = OperatorProcess(cluster, tmp_path, "-n", namespace).start()
    try:
        api = Api(cluster)

        def verdict(name: str, reason: str) -> dict[str, Any]:
            return wait_for(
                f"{name}: {reason}",
                lambda: (s := api.status(namespace, name)).get("reason") == reason and s,
            )

        sigv4 = verdict("sigv4", "Validated")
        assert condition(sigv4, "Ready")["status"] == "True"
        assert sigv4["endpoint"] == aws and sigv4["details"]["region"] == "us-east-1"
        assert [s["name"] for s in sigv4["observedSecrets"]] == ["aws"]
        assert verdict("api-key", "Validated")["details"]["inferenceProfileType"]
        denied = verdict("no-invoke", "PermissionDenied")
        assert denied["code"] == "AccessDeniedException"
        assert condition(denied, "Stalled")["status"] == "True"
        assert verdict("xai", "Validated")["details"]["keyAcls"]
        assert verdict("xai-bad", "InvalidAPIKey")["httpStatus"] == 400
        signed_requests = [s for s in state.seen if "AWS4-HMAC-SHA256" in str(s.headers)]
        assert signed_requests and state.generated == 1  # sigv4's one Converse

        # A rotation of the access keys' Secret to a secret AWS does not know reaches the
        # connection through the Secret watch and fails the signature.
        rotated = {**aws_keys, "AWS_SECRET_ACCESS_KEY": ROTATED_SECRET}
        cluster.kubectl("apply", "-f", "-", input=secret(namespace, "aws", rotated))
        failed = verdict("sigv4", "InvalidAPIKey")
        assert failed["code"] == "InvalidSignatureException"
        assert "AWS_SECRET_ACCESS_KEY of Secret aws" in failed["message"]
        state.access_keys = {ACCESS_KEY_ID: (ROTATED_SECRET, None)}
        cluster.kubectl(
            "annotate",
            "llmconnection",
            "sigv4",
            "-n",
            namespace,
            "llmconn.dev/validate-requested-at=now",
        )
        verdict("sigv4", "Validated")

        everything = cluster.kubectl("get", "llmconnections,events", "-n", namespace, "-o", "json")
        text = everything.stdout + op.metrics()
    finally:
        op.stop()
    text += op.log()
    assert "DEBUG" in op.log() and "InvalidSignatureException" in text
    assert leaked(ALL, text) == []
    assert json.loads(everything.stdout)["items"]
