"""spec.identity at validation time: mint the ServiceAccount's token, exchange it at the cloud,
and say what went wrong in words that name the step, the cloud's code and where to fix it.

`validate()` calls `mint` before the probe's budget starts (an API server call, as reading
Secrets is: its failures are the operator's trouble and propagate, except the answers that
are about the connection: no such ServiceAccount, or a mint the operator may not make), then
`exchange` inside the budget, on a client with the system's trust roots only (never the
connection's CA bundle or insecureSkipVerify: the token goes to the cloud). Both return a
`ProbeOutcome` instead of credentials when the connection fails there.

The minted token is read once, for its issuer and subject (claims, not the signature), so
that a refusal can name the trust the cloud looked for; it is never verified or kept here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from llmconn.model.blocks import IdentitySpec
from llmconn.model.credentials import AwsCredentials, BearerToken
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import CloudEndpoints, TokenRefused, TokenSource
from llmconn.net import clouds
from llmconn.net.clouds import ExchangeRefused, Failure, Step
from llmconn.probes.base import Findings, ProbeContext, ProbeFailure, ProbeOutcome, ProviderInfo
from llmconn.validation.classify import classify_exception

Credentials = AwsCredentials | BearerToken


@dataclass(frozen=True)
class Minted:
    """A ServiceAccount token and the claims messages name."""

    token: str
    issuer: str
    subject: str

    def __repr__(self) -> str:
        return f"Minted(subject={self.subject!r})"


async def mint(identity: IdentitySpec, tokens: TokenSource | None) -> Minted | ProbeOutcome:
    """The ServiceAccount's token for the identity's cloud, or why there is none."""
    return await mint_for(
        identity.service_account_name,
        clouds.audience(identity),
        tokens,
        "spec.identity",
        "exchanges it at the cloud",
    )


async def mint_for(
    name: str, audience: str, tokens: TokenSource | None, field: str, then: str
) -> Minted | ProbeOutcome:
    """A token of ServiceAccount `name` for `audience` (TokenRequest), or why there is none;
    `field` names the spec field, `then` what the operator does with the token."""
    if tokens is None:
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"{field} needs a cluster: the operator mints a token for ServiceAccount "
            f"{name} there (TokenRequest) and {then}.",
        )
    try:
        token = await tokens.token(name, audience)
    except TokenRefused as exc:
        return ProbeOutcome(
            Reason.IDENTITY_EXCHANGE_FAILED,
            f"The API server refused to mint a token for ServiceAccount {name} (TokenRequest, "
            f"HTTP {exc.status}: {exc.message.rstrip('.')}). The operator needs `create` on "
            "serviceaccounts/token in this namespace: install its chart with "
            "identity.enabled=true.",
            code="Forbidden" if exc.status == 403 else None,
        )
    if token is None:
        return ProbeOutcome(
            Reason.SERVICE_ACCOUNT_NOT_FOUND,
            f"ServiceAccount {name} ({field}.serviceAccountName) does not exist in the "
            "connection's namespace.",
        )
    claims = _claims(token)
    return Minted(token, str(claims.get("iss") or "?"), str(claims.get("sub") or "?"))


def oauth_minter(name: str, tokens: TokenSource | None) -> Callable[[str], Awaitable[str]]:
    """spec.oauth.serviceAccount's minter: a token for the authorization server's audience,
    asked for once discovery knows it; raises ProbeFailure when there is none."""

    async def minted(audience: str) -> str:
        got = await mint_for(
            name,
            audience,
            tokens,
            "spec.oauth.serviceAccount",
            "sends it to the authorization server as the client assertion",
        )
        if isinstance(got, ProbeOutcome):
            raise ProbeFailure(got)
        return got.token

    return minted


async def exchange(
    client: httpx2.AsyncClient,
    provider: ProviderInfo,
    identity: IdentitySpec,
    minted: Minted,
    endpoints: CloudEndpoints,
    *,
    deadline: float,
    timeout: float,
    validation_type: ValidationType,
) -> tuple[Credentials | ProbeOutcome, Findings]:
    """The cloud's credentials for the minted token (or why not), and what the exchange's
    requests found (phases, and `exchangeMs` in details), by the loop's `deadline`."""
    try:
        url = clouds.first_url(endpoints, identity)
    except ExchangeRefused as exc:
        return _refused(exc, identity, minted), Findings()
    ctx = ProbeContext(
        provider=provider,
        endpoint=url,
        validation_type=validation_type,
        http=client,
        timeout=timeout,
    )
    started = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            got: Credentials | ProbeOutcome = await _exchange(ctx, identity, minted, endpoints)
    except ExchangeRefused as exc:
        got = _refused(exc, identity, minted)
    except Exception as exc:  # network and timeouts: named by phase, as a probe's are
        got = _unreached(classify_exception(exc, ctx), url)
    spent = round((time.perf_counter() - started) * 1000)
    return got, Findings(details={"exchangeMs": str(spent)})


async def _exchange(
    ctx: ProbeContext, identity: IdentitySpec, minted: Minted, endpoints: CloudEndpoints
) -> Credentials:
    if identity.aws is not None:
        return await clouds.aws(ctx.transport, minted.token, identity.aws, endpoints)
    if identity.azure is not None:
        return await clouds.azure(ctx.transport, minted.token, identity.azure, endpoints)
    assert identity.gcp is not None
    return await clouds.gcp(ctx.transport, minted.token, identity.gcp, endpoints)


# The operator option that sets each step's endpoint, for answers that are not the cloud's.
SETTING = {
    Step.AWS: "--aws-sts-endpoint",
    Step.AZURE: "--azure-authority-host",
    Step.GCP: "--gcp-sts-endpoint",
    Step.GCP_IMPERSONATION: "--gcp-iam-credentials-endpoint",
}


def _refused(exc: ExchangeRefused, identity: IdentitySpec, minted: Minted) -> ProbeOutcome:
    answer = f" ({exc.answer})" if exc.answer else ""
    said = f": {exc.said}" if exc.said else ""

    def out(reason: Reason, message: str) -> ProbeOutcome:
        return ProbeOutcome(
            reason,
            message,
            http_status=exc.http_status,
            code=exc.code,
            retry_after=exc.retry_after if reason is Reason.RATE_LIMITED else None,
        )

    if exc.failure is Failure.REFUSED:
        hint = _trust_hint(exc.step, identity, minted)
        whose = "federated" if exc.step is Step.GCP_IMPERSONATION else "ServiceAccount's"
        return out(
            Reason.IDENTITY_EXCHANGE_FAILED,
            f"{exc.step} refused the {whose} token{answer}{said}. {hint}",
        )
    if exc.failure is Failure.UNAVAILABLE:
        return out(Reason.PROVIDER_UNAVAILABLE, f"{exc.step} is unavailable{answer}{said}.")
    if exc.failure is Failure.RATE_LIMITED:
        return out(Reason.RATE_LIMITED, f"{exc.step} is rate limited{answer}{said}.")
    if exc.failure is Failure.CONFIGURATION:
        return out(Reason.INVALID_CONFIGURATION, f"{exc.step}: {exc.said}.")
    return out(
        Reason.UNEXPECTED_RESPONSE,
        f"{exc.step}: {exc.said}. Check the operator's {SETTING[exc.step]}.",
    )


def _trust_hint(step: Step, identity: IdentitySpec, minted: Minted) -> str:
    """Where the trust is configured, with the issuer and subject the cloud was shown."""
    token = f"issuer {minted.issuer}, subject {minted.subject}"
    if step is Step.AWS and identity.aws is not None:
        return (
            f"Check that role {identity.aws.role_arn} trusts this token ({token}, audience "
            f"{clouds.AWS_AUDIENCE}): an IAM OIDC provider for the issuer, and the trust "
            "policy's conditions on sub and aud."
        )
    if step is Step.AZURE and identity.azure is not None:
        return (
            f"Check the federated identity credentials of client {identity.azure.client_id} "
            f"in tenant {identity.azure.tenant_id}: {token}, audience "
            f"{clouds.AZURE_AUDIENCE}."
        )
    if step is Step.GCP_IMPERSONATION and identity.gcp is not None:
        pool = identity.gcp.audience.removeprefix("//").split("/providers/", 1)[0]
        return (
            f"Grant principal://{pool}/subject/{minted.subject} "
            "roles/iam.workloadIdentityUser on service account "
            f"{identity.gcp.service_account_email}."
        )
    audience = identity.gcp.audience if identity.gcp is not None else ""
    return (
        f"Check that the workload identity pool provider {audience} trusts this token "
        f"({token}): its issuer, allowed audiences and attribute condition."
    )


def _unreached(outcome: ProbeOutcome, url: str) -> ProbeOutcome:
    """A network failure on the way to the cloud: the probe's wording, without its advice
    about spec.endpoint (the exchange endpoint is the operator's setting)."""
    message = re.sub(r"\s*[^.]*spec\.endpoint[^.]*\.", "", outcome.message).strip()
    return ProbeOutcome(
        outcome.reason,
        f"Exchanging the ServiceAccount's token at {url} failed: {message}",
        http_status=outcome.http_status,
        code=outcome.code,
    )


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the API server just issued it): for messages only."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
