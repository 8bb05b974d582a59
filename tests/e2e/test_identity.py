"""spec.identity on the real control plane: the API server mints the ServiceAccount tokens
(TokenRequest) and serves the keys that sign them (/openid/v1/jwks, through its issuer
discovery document); the loopback clouds verify those tokens as AWS STS, Entra ID and Google
STS do, and the loopback providers accept exactly the credentials those clouds issued.

Through the operator process, each provider validates as its workload identity:
- azure-openai with Entra's bearer token, and each failure a user meets: no ServiceAccount
  (then created: picked up without a watch), a subject or an audience the federated
  credential does not trust, an identity without a role on the resource;
- bedrock signed (SigV4) with the session STS issued for the role, its session token along,
  and a role without invoke permission PermissionDenied;
- vertex-ai with the impersonated service account's token from IAM Credentials, and with
  Google STS's federated token itself (no impersonation: direct resource access), whose
  own project (the pool's) has the Vertex AI API off.
The refusals of STS and Google (an untrusted subject, a provider without the STS audience,
another ServiceAccount of the namespace) go through validate() in the test's process, with
tokens the API server minted.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import pytest
from opkit import Api, OperatorProcess, condition, manifest, wait_for

from controlplane.cluster import ControlPlane
from llmconn.controller.kube import Kube, ServiceAccountTokens
from llmconn.model.reasons import Reason
from llmconn.model.verdict import CloudEndpoints, Defaults, SecretData
from llmconn.net.clouds import AWS_AUDIENCE
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers import aws_sts, azure_dialect, bedrock_dialect, entra, google_sts, vertex_dialect
from servers.oidc import TrustedIssuer
from servers.serve import serve

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"  # trusts ServiceAccount agent; has a role
NO_ROLE = "22222222-3333-4444-5555-666666666666"  # trusts agent; no role on the resource
OTHER_AUDIENCE = "33333333-4444-5555-6666-777777777777"  # its credential wants another aud
ROLE = "arn:aws:iam::123456789012:role/agent"
POOL = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/cluster/providers/k8s"
)
GSA = "vertex-caller@my-proj.iam.gserviceaccount.com"
# The module's operator waits an hour for a missing ServiceAccount before Stalled, and
# validates every hour: only its poll during the grace can see a ServiceAccount that comes.
GRACE = "1h"


@pytest.fixture(scope="module")
def issuer(cluster: ControlPlane) -> TrustedIssuer:
    """The cluster's issuer as a cloud reaches it: discovery and JWKS readable without
    credentials."""
    cluster.public_issuer_discovery()
    trusted = TrustedIssuer(cluster.server, ssl.create_default_context(cafile=str(cluster.ca_file)))
    wait_for("the issuer's keys, anonymously", lambda: trusted.jwks(refresh=True).get("keys"))
    return trusted


@dataclass
class Clouds:
    sts: aws_sts.StsState
    sts_url: str
    entra: entra.EntraState
    entra_url: str
    azure: azure_dialect.AzureState
    azure_url: str
    google: google_sts.GoogleState
    google_url: str
    bedrock: bedrock_dialect.BedrockState
    bedrock_url: str
    vertex: vertex_dialect.VertexState
    vertex_url: str


@pytest.fixture(scope="module")
def clouds(cluster: ControlPlane, issuer: TrustedIssuer) -> Iterator[Clouds]:
    sts = aws_sts.StsState()
    sts.trust(issuer)
    directory = entra.EntraState(trust_store=issuer.ssl_context)
    directory.add_tenant(TENANT)
    azure_app = azure_dialect.make_app(entra=directory, role_holders={CLIENT, OTHER_AUDIENCE})
    google = google_sts.GoogleState()
    google.add_provider(google_sts.PoolProvider(POOL, issuer))
    # Bedrock accepts the sessions STS issued (with their session token); Vertex AI the
    # access tokens IAM Credentials issued.
    bedrock = bedrock_dialect.BedrockState(access_keys=aws_sts.SessionKeys(sts))
    vertex_app = vertex_dialect.make_app(issued=google.issued, federated=google.federated)
    with (
        serve(aws_sts.make_app(sts)) as sts_url,
        serve(entra.make_app(directory)) as entra_url,
        serve(azure_app) as azure_url,
        serve(google_sts.make_app(google)) as google_url,
        serve(bedrock_dialect.make_app(bedrock)) as bedrock_url,
        serve(vertex_app) as vertex_url,
    ):
        yield Clouds(
            sts,
            sts_url,
            directory,
            entra_url,
            azure_app.state.dialect,
            azure_url,
            google,
            google_url,
            bedrock,
            bedrock_url,
            vertex_app.state.dialect,
            vertex_url,
        )


def service_account(cluster: ControlPlane, namespace: str, name: str) -> None:
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace)


# --- azure-openai through the operator --------------------------------------------------------


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    name = cluster.create_namespace("identity")
    yield name
    cluster.kubectl("delete", "llmconnections", "--all", "-n", name, "--wait=false")
    cluster.delete_namespace(name)


@pytest.fixture(scope="module")
def operator(
    cluster: ControlPlane, clouds: Clouds, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    subject = f"system:serviceaccount:{ns}:agent"
    trusted = entra.FederatedCredential(cluster.server, subject)
    clouds.entra.add_app(TENANT, CLIENT, trusted)
    clouds.entra.add_app(TENANT, NO_ROLE, trusted)
    elsewhere = entra.FederatedCredential(cluster.server, subject, audience="api://Other")
    clouds.entra.add_app(TENANT, OTHER_AUDIENCE, elsewhere)
    op = OperatorProcess(
        cluster,
        tmp_path_factory.mktemp("identity-logs"),
        "-n",
        ns,
        "--default-interval",
        "1h",
        "--missing-secret-grace",
        GRACE,
        "--azure-authority-host",
        clouds.entra_url,
        "--aws-sts-endpoint",
        clouds.sts_url,
        "--gcp-sts-endpoint",
        clouds.google_url,
        "--gcp-iam-credentials-endpoint",
        clouds.google_url,
        name="identity",
    ).start()
    yield op
    assert op.stop() == 0, op.log()[-3000:]


def azure(clouds: Clouds, account: str = "agent", client: str = CLIENT) -> dict[str, Any]:
    return {
        "provider": "azure-openai",
        "endpoint": clouds.azure_url,
        "azure": {"deployment": "gpt-4o-prod"},
        "identity": {
            "serviceAccountName": account,
            "azure": {"tenantId": TENANT, "clientId": client},
        },
    }


def apply(cluster: ControlPlane, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=manifest(ns, name, spec))


def verdict(api: Api, ns: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        found = api.status(ns, name)
        return found if found.get("reason") == reason else None

    try:
        return wait_for(f"{name}: {reason}", status, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {api.status(ns, name)}") from None


def test_azure_openai_validates_as_the_workload_identity(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    service_account(cluster, ns, "agent")
    apply(cluster, ns, "keyless", azure(clouds))
    status = verdict(api, ns, "keyless", "Validated")
    assert condition(status, "Ready")["status"] == "True"
    assert "exchangeMs" in status["details"]
    # Entra verified an assertion the API server minted and signed for this ServiceAccount,
    # and the deployment was called with Entra's token, never a key.
    assertions = [s.body["client_assertion"] for s in clouds.entra.seen]
    assert assertions and clouds.entra.issued
    calls = [s for s in clouds.azure.seen if s.path.endswith("/chat/completions")]
    assert calls and all("api-key" not in c.headers for c in calls)
    assert {c.headers["authorization"][7:] for c in calls} <= set(clouds.entra.issued)
    claims = clouds.entra.issuer(cluster.server).verify(assertions[0], {entra.EXCHANGE_AUDIENCE})
    assert claims["sub"] == f"system:serviceaccount:{ns}:agent"
    assert claims["exp"] - claims["iat"] == 600  # the shortest token TokenRequest grants
    # Neither token reached the status, events or the operator's log (debug level).
    seen = operator.log() + json.dumps(api.conn(ns, "keyless")) + json.dumps(api.events(ns))
    for token in [*assertions, *clouds.entra.issued]:
        assert token not in seen and token.rsplit(".", 1)[1][:24] not in seen


def test_a_missing_service_account_is_asked_for_until_it_exists(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    """No watch tells the operator about ServiceAccounts, and its interval and grace are an
    hour: the poll during the grace (every 10 s) is what sees the new ServiceAccount."""
    api = Api(cluster)
    apply(cluster, ns, "early", azure(clouds, account="late"))
    status = verdict(api, ns, "early", "ServiceAccountNotFound")
    assert condition(status, "Ready")["status"] == "False"
    assert not condition(status, "Stalled")  # within the grace
    assert "ServiceAccount late" in status["message"]
    late = entra.FederatedCredential(cluster.server, f"system:serviceaccount:{ns}:late")
    clouds.entra.add_app(TENANT, CLIENT, *clouds.entra.apps[(TENANT, CLIENT)], late)
    service_account(cluster, ns, "late")
    verdict(api, ns, "early", "Validated", timeout=60)


def test_a_service_account_that_never_comes_stalls_after_the_grace(
    cluster: ControlPlane, clouds: Clouds, tmp_path: Path
) -> None:
    """As a missing Secret does: Stalled once --missing-secret-grace (here 3s) is over."""
    api, ns = Api(cluster), cluster.create_namespace("identity-grace")
    op = OperatorProcess(
        cluster, tmp_path, "-n", ns, "--default-interval", "1h", "--missing-secret-grace", "3s"
    ).start()
    try:
        apply(cluster, ns, "orphan", azure(clouds, account="nobody"))

        def stalled() -> dict[str, Any] | None:
            found = condition(api.status(ns, "orphan"), "Stalled")
            return found if found.get("status") == "True" else None

        assert wait_for("Stalled", stalled, timeout=60)["reason"] == "ServiceAccountNotFound"
        assert api.status(ns, "orphan")["reason"] == "ServiceAccountNotFound"
    finally:
        cluster.kubectl("delete", "llmconnections", "--all", "-n", ns, "--wait=false")
        assert op.stop() == 0, op.log()[-3000:]
        cluster.delete_namespace(ns)


def test_an_untrusted_subject_is_refused_by_entra(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    service_account(cluster, ns, "intruder")
    apply(cluster, ns, "intruder", azure(clouds, account="intruder"))
    status = verdict(api, ns, "intruder", "IdentityExchangeFailed")
    assert status["code"] == "AADSTS700213"
    assert condition(status, "Stalled")["status"] == "True"
    assert f"system:serviceaccount:{ns}:intruder" in status["message"]
    assert cluster.server in status["message"]  # the issuer the credential must name
    assert "Entra ID token request" in status["message"]


def test_a_wrong_audience_is_refused_by_entra(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    apply(cluster, ns, "audience", azure(clouds, client=OTHER_AUDIENCE))
    status = verdict(api, ns, "audience", "IdentityExchangeFailed")
    assert status["code"] == "AADSTS700212"


def test_an_identity_without_a_role_is_permission_denied(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api = Api(cluster)
    apply(cluster, ns, "no-role", azure(clouds, client=NO_ROLE))
    status = verdict(api, ns, "no-role", "PermissionDenied")
    assert status["code"] == "PermissionDenied"
    assert condition(status, "Stalled")["status"] == "True"


# --- bedrock and vertex-ai through the operator ----------------------------------------------


def bedrock(clouds: Clouds, account: str, model: str = bedrock_dialect.HAIKU) -> dict[str, Any]:
    return {
        "provider": "bedrock",
        "endpoint": clouds.bedrock_url,
        "bedrock": {"region": "us-east-1"},
        "model": model,
        "validation": {"type": "Inference"},  # the only type that proves bedrock:InvokeModel
        "identity": {"serviceAccountName": account, "aws": {"roleArn": ROLE}},
    }


def vertex(
    clouds: Clouds, account: str, email: str | None = GSA, vtype: str = "Model"
) -> dict[str, Any]:
    gcp = {"audience": POOL, **({"serviceAccountEmail": email} if email else {})}
    return {
        "provider": "vertex-ai",
        "endpoint": clouds.vertex_url,
        "vertexAI": {"project": vertex_dialect.PROJECT, "location": "us-central1"},
        "model": "gemini-2.5-flash",
        "validation": {"type": vtype},
        "identity": {"serviceAccountName": account, "gcp": gcp},
    }


def trust_for_role(clouds: Clouds, issuer: str, subject: str) -> None:
    """The role's trust policy admits this subject too (the module's tests share the role)."""
    role = clouds.sts.roles.get(ROLE)
    clouds.sts.add_role(ROLE, issuer, subject, *(role.subjects if role else ()))


def may_impersonate(clouds: Clouds, subject: str) -> None:
    """roles/iam.workloadIdentityUser on GSA for this subject's principal, besides others."""
    principal = clouds.google.providers[POOL].principal(subject)
    clouds.google.impersonators[GSA] = {*clouds.google.impersonators.get(GSA, ()), principal}


def signed_by(seen: Any) -> str:
    """The access key id a SigV4 Authorization header names."""
    return str(seen.headers["authorization"]).split("Credential=", 1)[1].split("/", 1)[0]


def nothing_leaked(operator: OperatorProcess, api: Api, ns: str, name: str, *secrets: str) -> None:
    seen = operator.log() + json.dumps(api.conn(ns, name)) + json.dumps(api.events(ns))
    for secret in secrets:
        assert secret not in seen
        if secret.count(".") == 2:  # a JWT: its signature alone is a giveaway too
            assert secret.rsplit(".", 1)[1][:24] not in seen


def test_bedrock_validates_as_the_workload_identity(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api, subject = Api(cluster), f"system:serviceaccount:{ns}:bedrock-agent"
    trust_for_role(clouds, cluster.server, subject)
    service_account(cluster, ns, "bedrock-agent")
    apply(cluster, ns, "bedrock-keyless", bedrock(clouds, "bedrock-agent"))
    status = verdict(api, ns, "bedrock-keyless", "Validated")
    assert "answered a test Converse" in status["message"]
    # STS verified a token the API server minted for this ServiceAccount, with STS's audience.
    [asked] = [s for s in clouds.sts.seen if s.body.get("RoleArn") == ROLE]
    token = asked.body["WebIdentityToken"]
    claims = clouds.sts.issuers[cluster.server].verify(token, {AWS_AUDIENCE})
    assert (claims["iss"], claims["sub"]) == (cluster.server, subject)
    # Both planes were signed with the session STS issued for it (the server verified each
    # signature with its secret, and took the session token with it), and with nothing else.
    calls = list(clouds.bedrock.seen)
    assert calls and calls[-1].path.endswith("/converse")
    [key_id] = {signed_by(c) for c in calls}
    issued = clouds.sts.issued[key_id]
    assert (issued.role, issued.subject) == (ROLE, subject)
    assert {c.headers["x-amz-security-token"] for c in calls} == {issued.session_token}
    nothing_leaked(
        operator,
        api,
        ns,
        "bedrock-keyless",
        token,
        key_id,
        issued.secret_access_key,
        issued.session_token,
    )


def test_a_role_without_invoke_permission_is_permission_denied(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api, subject = Api(cluster), f"system:serviceaccount:{ns}:bedrock-reader"
    trust_for_role(clouds, cluster.server, subject)
    clouds.bedrock.invoke_denied = frozenset({bedrock_dialect.NOVA})
    service_account(cluster, ns, "bedrock-reader")
    apply(cluster, ns, "bedrock-no-invoke", bedrock(clouds, "bedrock-reader", bedrock_dialect.NOVA))
    status = verdict(api, ns, "bedrock-no-invoke", "PermissionDenied")
    assert status["code"] == "AccessDeniedException"
    assert "bedrock:InvokeModel" in status["message"]


def test_vertex_ai_validates_as_the_impersonated_service_account(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess
) -> None:
    api, subject = Api(cluster), f"system:serviceaccount:{ns}:vertex-agent"
    provider = clouds.google.providers[POOL]
    may_impersonate(clouds, subject)
    service_account(cluster, ns, "vertex-agent")
    apply(cluster, ns, "vertex-keyless", vertex(clouds, "vertex-agent"))
    status = verdict(api, ns, "vertex-keyless", "Validated")
    assert f"Service account {GSA}" in status["message"]
    exchange, impersonation = [s for s in clouds.google.seen][-2:]
    claims = provider.issuer.verify(exchange.body["subject_token"], {POOL})
    assert (claims["iss"], claims["sub"]) == (cluster.server, subject)
    federated = impersonation.headers["authorization"].removeprefix("Bearer ")
    assert clouds.google.federated[federated] == provider.principal(subject)
    # Vertex AI was called with the impersonated service account's token, and no other.
    calls = list(clouds.vertex.seen)
    assert calls and {c.headers["authorization"][7:] for c in calls} <= set(clouds.google.issued)
    bearer = calls[-1].headers["authorization"][7:]
    assert clouds.google.issued[bearer] == GSA
    nothing_leaked(
        operator, api, ns, "vertex-keyless", exchange.body["subject_token"], federated, bearer
    )


@pytest.mark.parametrize("vtype", ["Connectivity", "Model"])
def test_vertex_ai_validates_with_the_federated_token_itself(
    cluster: ControlPlane, clouds: Clouds, ns: str, operator: OperatorProcess, vtype: str
) -> None:
    """No serviceAccountEmail: Vertex AI is called with Google STS's federated token (direct
    resource access). Its own project is the pool's, whose Vertex AI API is off: the
    project-less model list (Connectivity) names vertexAI.project to bill instead."""
    name = f"vertex-direct-{vtype.lower()}"  # a ServiceAccount and connection of its own
    api, subject = Api(cluster), f"system:serviceaccount:{ns}:{name}"
    provider = clouds.google.providers[POOL]
    service_account(cluster, ns, name)
    before = len(clouds.google.seen)
    apply(cluster, ns, name, vertex(clouds, name, email=None, vtype=vtype))
    status = verdict(api, ns, name, "Validated")
    assert "the workload identity" in status["message"].lower()
    # One STS exchange for this ServiceAccount, and no impersonation.
    asked = [s for s in list(clouds.google.seen)[before:] if s.path == "/v1/token"]
    assert asked and not [
        s for s in list(clouds.google.seen)[before:] if "generateAccessToken" in s.path
    ]
    claims = provider.issuer.verify(asked[-1].body["subject_token"], {POOL})
    assert (claims["iss"], claims["sub"]) == (cluster.server, subject)
    # Vertex AI got the federated token, issued to this ServiceAccount's principal.
    calls = [c for c in clouds.vertex.seen if c.headers.get("authorization", "")[7:]]
    bearer = calls[-1].headers["authorization"][7:]
    assert clouds.google.federated[bearer] == provider.principal(subject)
    if vtype == "Connectivity":
        assert calls[-1].headers["x-goog-user-project"] == vertex_dialect.PROJECT
    else:
        assert calls[-1].path.endswith(":countTokens")
    nothing_leaked(operator, api, ns, name, asked[-1].body["subject_token"], bearer)


# --- the clouds' refusals, with tokens the API server mints -----------------------------------


class NoSecrets:
    async def get(self, name: str) -> SecretData | None:
        return None


@pytest.fixture
async def minting(cluster: ControlPlane, namespace: str) -> AsyncIterator[ServiceAccountTokens]:
    kube = Kube(
        kopf.ConnectionInfo(
            server=cluster.server, ca_path=str(cluster.ca_file), token=cluster.token
        )
    )
    yield ServiceAccountTokens(kube, namespace)
    await kube.aclose()


async def cloud_verdict(clouds: Clouds, tokens: ServiceAccountTokens, spec: dict[str, Any]) -> Any:
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    endpoints = CloudEndpoints(
        aws_sts=clouds.sts_url, gcp_sts=clouds.google_url, gcp_iam_credentials=clouds.google_url
    )
    try:
        defaults = Defaults(clouds=endpoints)
        return await validate(parse_spec(spec), NoSecrets(), pool, defaults, tokens=tokens)
    finally:
        await pool.aclose()


async def test_aws_sts_refuses_an_untrusted_subject(
    cluster: ControlPlane, clouds: Clouds, namespace: str, minting: ServiceAccountTokens
) -> None:
    trust_for_role(clouds, cluster.server, f"system:serviceaccount:{namespace}:agent")
    service_account(cluster, namespace, "stranger")
    before = len(clouds.bedrock.seen)
    result = await cloud_verdict(clouds, minting, bedrock(clouds, "stranger"))
    assert result.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert (result.code, result.http_status) == ("AccessDenied", 403)
    assert f"system:serviceaccount:{namespace}:stranger" in result.message
    assert len(clouds.bedrock.seen) == before  # Bedrock was never called


async def test_aws_sts_refuses_a_provider_without_the_sts_audience(
    cluster: ControlPlane,
    clouds: Clouds,
    issuer: TrustedIssuer,
    namespace: str,
    minting: ServiceAccountTokens,
) -> None:
    trust_for_role(clouds, cluster.server, f"system:serviceaccount:{namespace}:agent")
    service_account(cluster, namespace, "agent")
    clouds.sts.trust(issuer, {"sigstore"})
    try:
        result = await cloud_verdict(clouds, minting, bedrock(clouds, "agent"))
    finally:
        clouds.sts.trust(issuer)
    assert (result.reason, result.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "InvalidIdentityToken")
    assert "Incorrect token audience" in result.message


async def test_no_service_account_mints_nothing(
    clouds: Clouds, minting: ServiceAccountTokens
) -> None:
    before = len(clouds.sts.seen)
    result = await cloud_verdict(
        clouds, minting, bedrock(clouds, f"absent-{pysecrets.token_hex(2)}")
    )
    assert result.reason is Reason.SERVICE_ACCOUNT_NOT_FOUND
    assert len(clouds.sts.seen) == before


async def test_another_service_account_may_not_impersonate(
    cluster: ControlPlane, clouds: Clouds, namespace: str, minting: ServiceAccountTokens
) -> None:
    """The service account trusts one ServiceAccount of the namespace; another one gets
    Google STS's federated token, and IAM Credentials refuses it the impersonation."""
    may_impersonate(clouds, f"system:serviceaccount:{namespace}:agent")
    service_account(cluster, namespace, "bystander")
    before = len(clouds.vertex.seen)
    result = await cloud_verdict(clouds, minting, vertex(clouds, "bystander"))
    assert (result.reason, result.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "PERMISSION_DENIED")
    assert "IAM Credentials generateAccessToken" in result.message
    assert len(clouds.vertex.seen) == before
