"""spec.identity through validate(), without a cluster: a loopback issuer stands in for the API
server (its discovery documents and JWKS; tokens shaped as TokenRequest mints them), and the
loopback clouds verify those tokens as the real ones do (tests/servers/aws_sts.py, entra.py,
google_sts.py). The providers are the real ones against their loopback servers, which accept
exactly what the clouds issued: bedrock (SigV4 with STS's session), azure-openai (Entra's
token), vertex-ai (Google's token). The same chain on the real control plane, with tokens the
API server mints, is tests/e2e/test_identity.py.
"""

from __future__ import annotations

import logging
from collections import ChainMap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from llmconn.model import logs
from llmconn.model.blocks import AwsIdentity
from llmconn.model.credentials import AwsCredentials
from llmconn.model.reasons import Reason, Result
from llmconn.model.redact import MARKER
from llmconn.model.verdict import CloudEndpoints, Defaults, SecretData, TokenRefused
from llmconn.net import clouds as llmconn_clouds
from llmconn.net.clouds import AWS_AUDIENCE, AZURE_AUDIENCE, AZURE_SCOPE
from llmconn.net.egress import EgressPolicy
from llmconn.net.guard import DNSLookupError
from llmconn.net.oauth import CLOUD_PLATFORM
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec, registry
from llmconn.probes.aws import signer
from llmconn.probes.base import ProbeContext, ProbeOutcome, ok
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers import aws_sts, azure_dialect, bedrock_dialect, entra, google_sts, vertex_dialect
from servers.misbehaving import RawServer, hang
from servers.oidc import Issuer, TrustedIssuer
from servers.serve import serve

NS = "agents"
SA = "agent"
SUBJECT = f"system:serviceaccount:{NS}:{SA}"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
ROLE = "arn:aws:iam::123456789012:role/agent"
POOL = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/cluster/providers/k8s"
)
PRINCIPAL = (
    "principal://iam.googleapis.com/projects/123456789/locations/global/"
    f"workloadIdentityPools/cluster/subject/{SUBJECT}"
)
GSA = "vertex-caller@my-proj.iam.gserviceaccount.com"


class NoSecrets:
    async def get(self, name: str) -> SecretData | None:
        return None


@dataclass
class Tokens:
    """A TokenSource minting as the API server does, with the loopback issuer's key."""

    issuer: Issuer
    accounts: set[str] = field(default_factory=lambda: {SA})
    refuse: TokenRefused | None = None
    minted: list[tuple[str, str, str]] = field(default_factory=list)  # (account, aud, token)

    async def token(self, service_account: str, audience: str) -> str | None:
        if self.refuse is not None:
            raise self.refuse
        if service_account not in self.accounts:
            return None
        token = self.issuer.service_account_token(NS, service_account, audience)
        self.minted.append((service_account, audience, token))
        return token


@dataclass
class World:
    issuer: Issuer
    tokens: Tokens
    sts: aws_sts.StsState
    entra: entra.EntraState
    google: google_sts.GoogleState
    azure: azure_dialect.AzureState
    azure_url: str
    bedrock: bedrock_dialect.BedrockState
    bedrock_url: str
    vertex: vertex_dialect.VertexState
    vertex_url: str
    clouds: CloudEndpoints
    pool: ClientPool

    @property
    def defaults(self) -> Defaults:
        return Defaults(clouds=self.clouds)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    issuer = Issuer()
    with serve(issuer.app()) as issuer_url:
        issuer.url = issuer_url
        trusted = TrustedIssuer(issuer_url)
        sts = aws_sts.StsState()
        sts.trust(trusted)
        sts.add_role(ROLE, issuer_url, SUBJECT)
        directory = entra.EntraState()
        directory.add_tenant(TENANT, "contoso.onmicrosoft.com")
        directory.add_app(TENANT, CLIENT, entra.FederatedCredential(issuer_url, SUBJECT))
        azure_app = azure_dialect.make_app(entra=directory, role_holders={CLIENT})
        google = google_sts.GoogleState()
        google.add_provider(google_sts.PoolProvider(POOL, trusted))
        google.impersonators[GSA] = {PRINCIPAL}
        # Bedrock knows the sessions STS issued; Vertex AI the tokens Google issued, the
        # impersonated service account's and (direct resource access) the federated ones.
        bedrock = bedrock_dialect.BedrockState(access_keys=aws_sts.SessionKeys(sts))
        vertex_app = vertex_dialect.make_app(issued=ChainMap(google.issued, google.federated))
        with (
            serve(aws_sts.make_app(sts)) as sts_url,
            serve(entra.make_app(directory)) as entra_url,
            serve(azure_app) as azure_url,
            serve(google_sts.make_app(google)) as google_url,
            serve(bedrock_dialect.make_app(bedrock)) as bedrock_url,
            serve(vertex_app) as vertex_url,
        ):
            made = World(
                issuer=issuer,
                tokens=Tokens(issuer),
                sts=sts,
                entra=directory,
                google=google,
                azure=azure_app.state.dialect,
                azure_url=azure_url,
                bedrock=bedrock,
                bedrock_url=bedrock_url,
                vertex=vertex_app.state.dialect,
                vertex_url=vertex_url,
                clouds=CloudEndpoints(
                    aws_sts=sts_url,
                    azure_authority_host=entra_url,
                    gcp_sts=google_url,
                    gcp_iam_credentials=google_url,
                ),
                pool=ClientPool(EgressPolicy(), resolver=loopback_only, proxies={}),
            )
            yield made
            await made.pool.aclose()


def azure_spec(url: str, **azure: str) -> dict[str, Any]:
    return {
        "provider": "azure-openai",
        "endpoint": url,
        "azure": {"deployment": "gpt-4o-prod"},
        "identity": {
            "serviceAccountName": SA,
            "azure": {"tenantId": TENANT, "clientId": CLIENT, **azure},
        },
    }


def aws_spec(world: World, **aws: str) -> dict[str, Any]:
    return {
        "provider": "bedrock",
        "endpoint": world.bedrock_url,
        "bedrock": {"region": "us-east-1"},
        "model": bedrock_dialect.HAIKU,
        "validation": {"type": "Inference"},  # Converse too: the runtime's signature
        "identity": {"serviceAccountName": SA, "aws": {"roleArn": ROLE, **aws}},
    }


def gcp_spec(world: World, **gcp: str) -> dict[str, Any]:
    return {
        "provider": "vertex-ai",
        "endpoint": world.vertex_url,
        "vertexAI": {"project": vertex_dialect.PROJECT, "location": "us-central1"},
        "model": "gemini-2.5-flash",
        "identity": {"serviceAccountName": SA, "gcp": {"audience": POOL, **gcp}},
    }


async def run(world: World, spec: dict[str, Any]) -> Any:
    return await validate(
        parse_spec(spec), NoSecrets(), world.pool, world.defaults, tokens=world.tokens
    )


# --- Azure: Entra ID, then the deployment with the bearer token ------------------------------


async def test_azure_openai_validates_with_an_entra_token_instead_of_a_key(world: World) -> None:
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    # One token, for Entra's exchange audience, minted for the connection's ServiceAccount.
    [(account, audience, minted)] = world.tokens.minted
    assert (account, audience) == (SA, AZURE_AUDIENCE)
    # Entra got it as a client assertion, for the Cognitive Services scope.
    [asked] = list(world.entra.seen)
    assert asked.path == f"/{TENANT}/oauth2/v2.0/token"
    assert asked.body["client_assertion"] == minted
    assert asked.body["client_assertion_type"].endswith(":jwt-bearer")
    assert asked.body["scope"] == AZURE_SCOPE
    assert asked.body["client_id"] == CLIENT
    # The deployment got Entra's access token as a bearer, and no api-key.
    calls = list(world.azure.seen)
    assert calls and all(c.headers["authorization"].startswith("Bearer ") for c in calls)
    assert all("api-key" not in c.headers for c in calls)
    bearer = calls[0].headers["authorization"][7:]
    assert bearer != minted and world.entra.access_token_claims(bearer) is not None
    # Neither token is in the verdict.
    text = repr(verdict)
    assert minted not in text and bearer not in text
    assert "exchangeMs" in verdict.details


async def test_a_tenant_domain_name_works_as_the_tenant(world: World) -> None:
    verdict = await run(world, azure_spec(world.azure_url, tenantId="contoso.onmicrosoft.com"))
    assert verdict.reason is Reason.VALIDATED, verdict.message


async def test_no_service_account(world: World) -> None:
    world.tokens.accounts = set()
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.SERVICE_ACCOUNT_NOT_FOUND
    assert f"ServiceAccount {SA}" in verdict.message
    assert not world.entra.seen and not world.azure.seen  # nothing was sent anywhere


async def test_the_operator_may_not_mint(world: World) -> None:
    world.tokens.refuse = TokenRefused(403, 'serviceaccounts "agent" is forbidden: ...')
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert verdict.code == "Forbidden"
    assert "identity.enabled=true" in verdict.message
    assert not world.entra.seen


async def test_entra_refuses_an_untrusted_subject(world: World) -> None:
    other = entra.FederatedCredential(world.issuer.url, f"system:serviceaccount:{NS}:other")
    world.entra.add_app(TENANT, CLIENT, other)
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert verdict.result is Result.FAILED
    assert verdict.code == "AADSTS700213"
    assert verdict.http_status == 401
    assert "Entra ID token request" in verdict.message
    assert SUBJECT in verdict.message and world.issuer.url in verdict.message
    assert "Trace ID" not in verdict.message  # Entra's trace block is cut
    assert not world.azure.seen


async def test_entra_refuses_a_wrong_audience(world: World) -> None:
    wrong = entra.FederatedCredential(world.issuer.url, SUBJECT, audience="api://SomethingElse")
    world.entra.add_app(TENANT, CLIENT, wrong)
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert verdict.code == "AADSTS700212"
    assert AZURE_AUDIENCE in verdict.message


async def test_entra_refuses_another_issuer(world: World) -> None:
    stranger = entra.FederatedCredential("https://oidc.example/other", SUBJECT)
    world.entra.add_app(TENANT, CLIENT, stranger)
    verdict = await run(world, azure_spec(world.azure_url))
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "AADSTS700211")


async def test_entra_refuses_a_token_signed_by_someone_else(world: World) -> None:
    impostor = Issuer(url=world.issuer.url)  # same issuer URL, another key
    world.tokens.issuer = impostor
    verdict = await run(world, azure_spec(world.azure_url))
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "AADSTS50013")


async def test_unknown_tenant_and_client(world: World) -> None:
    verdict = await run(
        world, azure_spec(world.azure_url, tenantId="00000000-0000-0000-0000-000000000000")
    )
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "AADSTS90002")
    verdict = await run(
        world, azure_spec(world.azure_url, clientId="99999999-0000-0000-0000-000000000000")
    )
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "AADSTS700016")


async def test_an_identity_without_a_role_on_the_resource(world: World) -> None:
    world.azure.role_holders.clear()
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert verdict.code == "PermissionDenied"
    assert "Cognitive Services OpenAI User" in verdict.message


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("throttled", Reason.RATE_LIMITED),
        ("unavailable", Reason.PROVIDER_UNAVAILABLE),
        ("html", Reason.UNEXPECTED_RESPONSE),
    ],
)
async def test_entra_trouble_is_not_the_connections_fault(
    world: World, behaviour: str, reason: Reason
) -> None:
    world.entra.reset(behaviour)
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is reason, verdict.message
    assert not world.azure.seen
    if reason is Reason.RATE_LIMITED:
        assert verdict.retry_after == 7


async def test_the_exchange_is_held_to_the_egress_policy(world: World) -> None:
    world.pool = ClientPool(
        EgressPolicy.from_strings(deny=["127.0.0.0/8"]), resolver=loopback_only, proxies={}
    )
    verdict = await run(world, azure_spec(world.azure_url))
    assert verdict.reason is Reason.EGRESS_DENIED
    assert "Exchanging the ServiceAccount's token at" in verdict.message
    assert not world.entra.seen  # nothing was sent


async def test_the_exchange_and_the_probe_share_the_timeout(world: World) -> None:
    """A token endpoint that never answers ends the validation at spec.validation.timeout,
    named as the exchange's Timeout (not the endpoint's), and the probe never runs."""
    async with RawServer(hang()) as stuck:
        world.clouds = CloudEndpoints(azure_authority_host=stuck.url)
        spec = azure_spec(world.azure_url)
        spec["validation"] = {"timeout": "1s"}
        verdict = await run(world, spec)
    assert verdict.reason is Reason.TIMEOUT, verdict.message
    assert verdict.message.startswith(f"Exchanging the ServiceAccount's token at {stuck.url}")
    assert "within 1s" in verdict.message
    assert not world.azure.seen


async def test_the_exchange_never_takes_the_connections_tls_settings(world: World) -> None:
    """insecureSkipVerify is the endpoint's: the exchange is made with the system's trust."""
    spec = azure_spec(world.azure_url)
    spec["tls"] = {"insecureSkipVerify": True}
    verdict = await run(world, spec)
    assert verdict.reason is Reason.VALIDATED
    assert len(world.pool) == 2  # one client for the cloud, one for the endpoint


async def test_without_a_cluster_identity_needs_one(world: World) -> None:
    verdict = await validate(
        parse_spec(azure_spec(world.azure_url)), NoSecrets(), world.pool, world.defaults
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "needs a cluster" in verdict.message
    assert not world.entra.seen


# --- AWS: STS, then Bedrock signed with the session ------------------------------------------


def signed_by(seen: Any) -> str:
    """The access key id a SigV4 Authorization header names."""
    return str(seen.headers["authorization"]).split("Credential=", 1)[1].split("/", 1)[0]


async def test_bedrock_signs_with_the_session_sts_issued(world: World) -> None:
    verdict = await run(world, aws_spec(world))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [(_, audience, minted)] = world.tokens.minted
    assert audience == AWS_AUDIENCE
    [asked] = list(world.sts.seen)
    assert asked.body["Action"] == "AssumeRoleWithWebIdentity"
    assert asked.body["RoleArn"] == ROLE
    assert asked.body["WebIdentityToken"] == minted
    assert asked.body["DurationSeconds"] == "900"
    assert "authorization" not in asked.headers  # the web identity token is the credential
    # Both planes were signed with exactly the session STS issued to this ServiceAccount for
    # this role, its session token sent along (the server verified each signature).
    calls = list(world.bedrock.seen)
    assert [c.path.rsplit("/", 1)[-1] for c in calls][-1] == "converse"
    [key_id] = {signed_by(c) for c in calls}
    issued = world.sts.issued[key_id]
    assert (issued.role, issued.subject) == (ROLE, SUBJECT)
    assert {c.headers["x-amz-security-token"] for c in calls} == {issued.session_token}
    # Nothing of it is in the verdict, and nothing is held once the validation is over.
    text = repr(verdict)
    for secret in (minted, issued.secret_access_key, issued.session_token):
        assert secret not in text
        assert logs.redact(secret) == secret
    assert "exchangeMs" in verdict.details


async def test_the_session_token_is_part_of_the_credentials(world: World) -> None:
    """What makes the loopback Bedrock accept STS's keys: the key id and secret alone, signed
    without the session token, are refused as AWS refuses them."""
    verdict = await run(world, aws_spec(world))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [key_id] = {signed_by(c) for c in world.bedrock.seen}
    issued = world.sts.issued[key_id]
    bare = AwsCredentials(key_id, issued.secret_access_key)
    sign = await signer(bare, "us-east-1", "bedrock")
    async with httpx2.AsyncClient() as client:
        request = client.build_request("GET", f"{world.bedrock_url}/foundation-models")
        sign(request)
        answer = await client.send(request)
    assert answer.status_code == 403
    assert answer.headers["x-amzn-errortype"].startswith("UnrecognizedClientException")


async def test_a_role_without_invoke_permission_is_permission_denied(world: World) -> None:
    world.bedrock.invoke_denied = frozenset({bedrock_dialect.HAIKU})
    verdict = await run(world, aws_spec(world))
    assert (verdict.reason, verdict.code) == (Reason.PERMISSION_DENIED, "AccessDeniedException")
    assert "bedrock:InvokeModel" in verdict.message


# The exchanged credentials are hidden from log records while the validation holds them: a
# probe that logs them is the only way to see that from inside, so this one provider is the
# test's own.
SEEN_REDACTED: list[str] = []


@pytest.fixture
def logging_provider() -> Iterator[str]:
    """Provider "aws-logging": takes identity.aws and logs the credentials it was handed."""

    async def probe(ctx: ProbeContext) -> ProbeOutcome:
        assert ctx.aws_credentials is not None
        SEEN_REDACTED.append(logs.redact(" ".join(ctx.aws_credentials.secrets())))
        logging.getLogger("aws-logging").warning("signing with %s", ctx.aws_credentials.secrets())
        return ok("The credentials arrived.")

    SEEN_REDACTED.clear()
    with registry.temporary() as providers:
        providers.provider(
            "aws-logging", default_endpoint="http://127.0.0.1:9", title="T", identities=("aws",)
        )(probe)
        yield "aws-logging"


async def test_sts_credentials_are_redacted_from_logs_while_held(
    world: World, logging_provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(logs.RedactingFilter())  # as logs.guard() does for the operator
    spec = {
        "provider": logging_provider,
        "identity": {"serviceAccountName": SA, "aws": {"roleArn": ROLE}},
    }
    verdict = await run(world, spec)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [issued] = world.sts.issued.values()
    assert [" ".join([MARKER] * 3)] == SEEN_REDACTED
    assert issued.secret_access_key not in caplog.text and MARKER in caplog.text
    assert logs.redact(issued.secret_access_key) == issued.secret_access_key  # released


async def test_aws_untrusted_subject_is_access_denied(world: World) -> None:
    world.sts.add_role(ROLE, world.issuer.url, f"system:serviceaccount:{NS}:someone-else")
    verdict = await run(world, aws_spec(world))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert (verdict.code, verdict.http_status) == ("AccessDenied", 403)
    assert "AWS STS AssumeRoleWithWebIdentity" in verdict.message
    assert ROLE in verdict.message and SUBJECT in verdict.message
    assert "request id" in verdict.message
    assert not world.bedrock.seen


async def test_aws_wrong_audience(world: World) -> None:
    """The IAM OIDC provider lists other client IDs than sts.amazonaws.com."""
    world.sts.trust(TrustedIssuer(world.issuer.url), {"sigstore"})
    verdict = await run(world, aws_spec(world))
    assert (verdict.reason, verdict.code) == (
        Reason.IDENTITY_EXCHANGE_FAILED,
        "InvalidIdentityToken",
    )
    assert "Incorrect token audience" in verdict.message


async def test_aws_unknown_issuer(world: World) -> None:
    world.sts.issuers.clear()
    verdict = await run(world, aws_spec(world))
    assert (verdict.reason, verdict.code) == (
        Reason.IDENTITY_EXCHANGE_FAILED,
        "InvalidIdentityToken",
    )
    assert "No OpenIDConnect provider found" in verdict.message


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("throttled", Reason.RATE_LIMITED),
        ("unavailable", Reason.PROVIDER_UNAVAILABLE),
        ("idp_unreachable", Reason.PROVIDER_UNAVAILABLE),
        ("html", Reason.UNEXPECTED_RESPONSE),
    ],
)
async def test_sts_trouble_is_not_the_connections_fault(
    world: World, behaviour: str, reason: Reason
) -> None:
    world.sts.reset(behaviour)
    verdict = await run(world, aws_spec(world))
    assert verdict.reason is reason, verdict.message
    assert not world.bedrock.seen


def test_the_sts_endpoint_follows_region_and_partition() -> None:
    def url(arn: str, clouds: CloudEndpoints | None = None, **more: str) -> str:
        identity = AwsIdentity.model_validate({"roleArn": arn, **more})
        return llmconn_clouds.aws_url(clouds or CloudEndpoints(), identity)

    assert url(ROLE) == "https://sts.amazonaws.com/"
    assert url(ROLE, stsRegion="eu-central-1") == "https://sts.eu-central-1.amazonaws.com/"
    cn = "arn:aws-cn:iam::123456789012:role/a"
    assert url(cn, stsRegion="cn-north-1") == "https://sts.cn-north-1.amazonaws.com.cn/"
    gov = "arn:aws-us-gov:iam::123456789012:role/a"
    assert url(gov, stsRegion="us-gov-west-1") == "https://sts.us-gov-west-1.amazonaws.com/"
    # The administrator's endpoint (a VPC endpoint, say) wins over the region.
    vpce = CloudEndpoints(aws_sts="https://vpce-1.sts.us-east-1.vpce.amazonaws.com")
    assert url(ROLE, vpce, stsRegion="eu-west-1") == vpce.aws_sts + "/"


GOV_AUTHORITY = "login.microsoftonline.us"  # azure-identity AzureAuthorityHosts.AZURE_GOVERNMENT


async def test_the_entra_scope_follows_the_authoritys_cloud(world: World) -> None:
    """Issue 24: Azure Government's Entra issues tokens for its own Cognitive Services
    audience (https://cognitiveservices.azure.us) and refuses the public cloud's scope."""
    directory = entra.EntraState(audience=entra.COGNITIVE_SERVICES_US_GOV)
    directory.add_tenant(TENANT)
    directory.add_app(TENANT, CLIENT, entra.FederatedCredential(world.issuer.url, SUBJECT))
    resource = azure_dialect.make_app(entra=directory, role_holders={CLIENT})

    async def gov_names(host: str, port: int) -> list[str]:
        if host in (GOV_AUTHORITY, "127.0.0.1", "localhost"):
            return ["127.0.0.1"]
        raise DNSLookupError(host, "Name or service not known")

    pool = ClientPool(EgressPolicy(), resolver=gov_names, proxies={})
    try:
        with serve(entra.make_app(directory)) as entra_url, serve(resource) as azure_url:
            port = entra_url.rsplit(":", 1)[1]
            clouds = CloudEndpoints(azure_authority_host=f"http://{GOV_AUTHORITY}:{port}")
            assert (
                llmconn_clouds.azure_scope(clouds) == "https://cognitiveservices.azure.us/.default"
            )
            verdict = await validate(
                parse_spec(azure_spec(azure_url)),
                NoSecrets(),
                pool,
                Defaults(clouds=clouds),
                tokens=world.tokens,
            )
    finally:
        await pool.aclose()
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [asked] = list(directory.seen)
    assert asked.body["scope"] == "https://cognitiveservices.azure.us/.default"
    assert llmconn_clouds.azure_scope(CloudEndpoints()) == AZURE_SCOPE
    china = CloudEndpoints(azure_authority_host="https://login.chinacloudapi.cn")
    assert llmconn_clouds.azure_scope(china) == "https://cognitiveservices.azure.cn/.default"


# --- Google: STS, then optionally IAM Credentials ---------------------------------------------


async def test_vertex_ai_gets_google_sts_federated_token(world: World) -> None:
    verdict = await run(world, gcp_spec(world))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [(_, audience, minted)] = world.tokens.minted
    assert audience == POOL  # the provider's full name: one of its default audiences
    [asked] = list(world.google.seen)
    assert asked.path == "/v1/token"
    assert asked.body["audience"] == POOL
    assert asked.body["subject_token"] == minted
    assert asked.body["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert asked.body["scope"] == CLOUD_PLATFORM
    # Without a service account to impersonate, Vertex AI got the federated token itself.
    [call] = list(world.vertex.seen)
    assert call.path.endswith(":countTokens")
    bearer = call.headers["authorization"].removeprefix("Bearer ")
    assert world.google.federated[bearer] == PRINCIPAL
    assert bearer not in repr(verdict) and minted not in repr(verdict)
    assert verdict.message.startswith("The workload identity may call")


async def test_vertex_ai_gets_the_impersonated_service_accounts_token(world: World) -> None:
    verdict = await run(world, gcp_spec(world, serviceAccountEmail=GSA))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    _, impersonation = list(world.google.seen)
    federated = impersonation.headers["authorization"].removeprefix("Bearer ")
    assert world.google.federated[federated] == PRINCIPAL
    assert impersonation.path == f"/v1/projects/-/serviceAccounts/{GSA}:generateAccessToken"
    assert impersonation.body == {"scope": [CLOUD_PLATFORM], "lifetime": "600s"}
    [call] = list(world.vertex.seen)
    bearer = call.headers["authorization"].removeprefix("Bearer ")
    assert world.google.issued[bearer] == GSA
    assert f"Service account {GSA}" in verdict.message
    assert federated not in repr(verdict) and bearer not in repr(verdict)


async def test_a_service_account_without_predict_is_permission_denied(world: World) -> None:
    world.vertex.granted.clear()
    verdict = await run(world, gcp_spec(world, serviceAccountEmail=GSA))
    assert (verdict.reason, verdict.code) == (Reason.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert f"Service account {GSA}" in verdict.message
    assert "aiplatform.endpoints.predict" in verdict.message


async def test_google_refuses_an_untrusted_subject(world: World) -> None:
    provider = google_sts.PoolProvider(
        POOL, TrustedIssuer(world.issuer.url), subjects=frozenset({"system:serviceaccount:x:y"})
    )
    world.google.add_provider(provider)
    verdict = await run(world, gcp_spec(world))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert verdict.code == "unauthorized_client"
    assert "Google STS token exchange" in verdict.message
    assert "attribute condition" in verdict.message and SUBJECT in verdict.message
    assert not world.vertex.seen


async def test_google_refuses_a_wrong_audience(world: World) -> None:
    provider = google_sts.PoolProvider(
        POOL, TrustedIssuer(world.issuer.url), allowed_audiences=frozenset({"sigstore"})
    )
    world.google.add_provider(provider)
    verdict = await run(world, gcp_spec(world))
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "invalid_grant")
    assert "audience" in verdict.message


async def test_google_refuses_an_unknown_provider(world: World) -> None:
    world.google.providers.clear()
    verdict = await run(world, gcp_spec(world))
    assert (verdict.reason, verdict.code) == (Reason.IDENTITY_EXCHANGE_FAILED, "invalid_target")


async def test_impersonation_without_the_workload_identity_user_role(world: World) -> None:
    world.google.impersonators.clear()
    verdict = await run(world, gcp_spec(world, serviceAccountEmail=GSA))
    assert verdict.reason is Reason.IDENTITY_EXCHANGE_FAILED
    assert (verdict.code, verdict.http_status) == ("PERMISSION_DENIED", 403)
    assert "IAM Credentials generateAccessToken" in verdict.message
    assert "roles/iam.workloadIdentityUser" in verdict.message and GSA in verdict.message
    assert not world.vertex.seen
