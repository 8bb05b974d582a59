"""A ServiceAccount token exchanged for cloud credentials: AWS STS, Entra ID, Google STS.

Each exchange is one or two small documented requests, written here over the probe's own
transport (`llmconn.net.exchange`) instead of through the clouds' SDKs (botocore, azure-identity
with MSAL, google-auth): those bring HTTP stacks of their own (urllib3, requests), which
the operator's egress guard, body cap, phase tracing and redaction do not reach, and
between them dozens of megabytes of dependencies for three requests. Here every exchange
request goes through the pooled client that probes use, so the egress policy decides where
a token may go, an answer is read up to 1 MiB, and a timeout is named by its phase.

- AWS: STS `AssumeRoleWithWebIdentity`, the Query API (a form-encoded POST, unsigned: the
  web identity token is the credential), answered in XML (STS API reference; botocore's
  `sts/2011-06-15/service-2.json` for the shapes and error codes).
- Azure: the Microsoft identity platform's token endpoint, client credentials grant with a
  federated client assertion (`client_assertion_type`
  `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`), for the Cognitive Services
  scope; JSON answers and errors (`error`, `error_description`, `error_codes`).
- Google: STS token exchange (RFC 8693, as google-auth's `google/oauth2/sts.py` sends it),
  then, with a service account to impersonate, IAM Credentials `generateAccessToken` (as
  google-auth's `impersonated_credentials.py`).

Nothing here keeps a token or a credential: they are returned to the one validation that
asked, which registers them with the redacting log filter and drops them when it ends.

Its length: three clouds' exchanges, each a request and the reading of that cloud's errors,
kept side by side because they share one shape (a step, a failure kind, a message).
"""

from __future__ import annotations

import enum
import re
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlsplit

from llmconn.model.blocks import AwsIdentity, AzureIdentity, GcpIdentity, IdentitySpec
from llmconn.model.credentials import AwsCredentials, BearerToken
from llmconn.model.verdict import CloudEndpoints
from llmconn.net.exchange import USER_AGENT, ProbeTransport, Reply
from llmconn.net.oauth import CLOUD_PLATFORM, google_error, post_form, token_answer

AWS_AUDIENCE = "sts.amazonaws.com"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
# The national clouds' Entra authorities (azure-identity `AzureAuthorityHosts`) and their own
# Cognitive Services audiences (Microsoft Learn: "Azure OpenAI in Azure Government";
# Azure in China's Cognitive Services endpoints): a token for the public audience is refused
# there.
AZURE_NATIONAL_SCOPES = {
    "login.microsoftonline.us": "https://cognitiveservices.azure.us/.default",
    "login.chinacloudapi.cn": "https://cognitiveservices.azure.cn/.default",
    "login.partner.microsoftonline.cn": "https://cognitiveservices.azure.cn/.default",
}
# The shortest sessions the clouds grant: the credentials serve one validation.
AWS_SESSION_SECONDS = 900  # DurationSeconds' minimum
GCP_LIFETIME = "600s"
SESSION_NAME = "llmconn"  # RoleSessionName, as CloudTrail shows it

# Where each partition's regional STS endpoints live (botocore's partitions.json dnsSuffix).
AWS_DNS_SUFFIX = {
    "aws": "amazonaws.com",
    "aws-cn": "amazonaws.com.cn",
    "aws-us-gov": "amazonaws.com",
    "aws-eusc": "amazonaws.eu",
    "aws-iso": "c2s.ic.gov",
    "aws-iso-b": "sc2s.sgov.gov",
    "aws-iso-e": "cloud.adc-e.uk",
    "aws-iso-f": "csp.hci.ic.gov",
}

_STS_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
_JWT = "urn:ietf:params:oauth:token-type:jwt"
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_MAX_MESSAGE = 400


def audience(identity: IdentitySpec) -> str:
    """The audience of the ServiceAccount token each cloud expects: STS's own name, Entra's
    token exchange audience, or the workload identity pool provider (Google accepts its full
    name with or without https:)."""
    if identity.aws is not None:
        return AWS_AUDIENCE
    if identity.azure is not None:
        return AZURE_AUDIENCE
    assert identity.gcp is not None
    return identity.gcp.audience


def aws_url(endpoints: CloudEndpoints, aws: AwsIdentity) -> str:
    """STS's endpoint: the operator's setting, else the stsRegion's, else the global one."""
    if endpoints.aws_sts:
        return endpoints.aws_sts.rstrip("/") + "/"
    if aws.sts_region is None:
        return "https://sts.amazonaws.com/"  # the global endpoint (partition aws only)
    suffix = AWS_DNS_SUFFIX.get(aws.partition)
    if suffix is None:
        raise ExchangeRefused(
            Step.AWS,
            Failure.CONFIGURATION,
            f"partition {aws.partition} has no known STS endpoint: the operator's "
            "administrator sets one (--aws-sts-endpoint)",
        )
    return f"https://sts.{aws.sts_region}.{suffix}/"


def azure_url(endpoints: CloudEndpoints, azure: AzureIdentity) -> str:
    tenant = quote(azure.tenant_id, safe="")
    return f"{endpoints.azure_authority_host.rstrip('/')}/{tenant}/oauth2/v2.0/token"


def azure_scope(endpoints: CloudEndpoints) -> str:
    """The Cognitive Services scope of the authority's cloud (public unless it is a national
    cloud's authority)."""
    host = (urlsplit(endpoints.azure_authority_host).hostname or "").lower()
    return AZURE_NATIONAL_SCOPES.get(host, AZURE_SCOPE)


def gcp_url(endpoints: CloudEndpoints) -> str:
    return f"{endpoints.gcp_sts.rstrip('/')}/v1/token"


def gcp_impersonation_url(endpoints: CloudEndpoints, email: str) -> str:
    account = quote(email, safe="@.")
    base = endpoints.gcp_iam_credentials.rstrip("/")
    return f"{base}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"


def first_url(endpoints: CloudEndpoints, identity: IdentitySpec) -> str:
    """The exchange's first request's URL, for messages and the exchange's context."""
    if identity.aws is not None:
        return aws_url(endpoints, identity.aws)
    if identity.azure is not None:
        return azure_url(endpoints, identity.azure)
    return gcp_url(endpoints)


class Step(enum.StrEnum):
    """The request of an exchange, as messages name it."""

    AWS = "AWS STS AssumeRoleWithWebIdentity"
    AZURE = "Entra ID token request"
    GCP = "Google STS token exchange"
    GCP_IMPERSONATION = "IAM Credentials generateAccessToken"


class Failure(enum.Enum):
    REFUSED = "refused"  # the cloud said no: trust policy, audience, subject, client, ...
    UNAVAILABLE = "unavailable"  # 5xx, or the cloud could not reach the cluster's issuer
    RATE_LIMITED = "rate_limited"
    UNEXPECTED = "unexpected"  # an answer that is not the cloud's API
    CONFIGURATION = "configuration"  # nothing was sent: the operator lacks a setting


class ExchangeRefused(Exception):
    """The exchange did not yield credentials. `said` is what the cloud said (its message,
    and its request id), or what was wrong with its answer; fit for a status."""

    def __init__(
        self,
        step: Step,
        failure: Failure,
        said: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(said)
        self.step = step
        self.failure = failure
        self.said = said
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after

    @property
    def answer(self) -> str:
        """'HTTP 403 AccessDenied', as far as known."""
        parts = [f"HTTP {self.http_status}" if self.http_status else "", self.code or ""]
        return " ".join(p for p in parts if p)


# --- AWS ---------------------------------------------------------------------------------


async def aws(
    transport: ProbeTransport, token: str, identity: AwsIdentity, endpoints: CloudEndpoints
) -> AwsCredentials:
    """STS AssumeRoleWithWebIdentity -> temporary credentials for SigV4."""
    reply = await post_form(
        transport,
        aws_url(endpoints, identity),
        {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "RoleArn": identity.role_arn,
            "RoleSessionName": SESSION_NAME,
            "WebIdentityToken": token,
            "DurationSeconds": str(AWS_SESSION_SECONDS),
        },
        accept="text/xml",
    )
    root = _xml(reply)
    if reply.status != 200:
        raise _aws_error(reply, root)
    creds = root.find(".//{*}AssumeRoleWithWebIdentityResult/{*}Credentials")
    values = {
        name: (creds.findtext(f"{{*}}{name}") or "").strip() if creds is not None else ""
        for name in ("AccessKeyId", "SecretAccessKey", "SessionToken")
    }
    if not all(values.values()):
        raise _unexpected(Step.AWS, reply, "no Credentials in the AssumeRoleWithWebIdentity result")
    return AwsCredentials(
        access_key_id=values["AccessKeyId"],
        secret_access_key=values["SecretAccessKey"],
        session_token=values["SessionToken"],
    )


def _xml(reply: Reply) -> ET.Element:
    # STS answers plain XML. The XML attacks (entity expansion, external entities) all need
    # a document type declaration, which is never STS's answer: refused before parsing.
    try:
        text = reply.content.decode("utf-8")
    except UnicodeDecodeError:
        raise _unexpected(Step.AWS, reply, "not UTF-8 XML") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise _unexpected(Step.AWS, reply, "an XML document with a DTD")
    try:
        return ET.fromstring(text)  # noqa: S314  (no DTD: see above)
    except ET.ParseError:
        raise _unexpected(Step.AWS, reply, "not XML") from None


def _aws_error(reply: Reply, root: ET.Element) -> ExchangeRefused:
    error = root.find(".//{*}Error")
    if error is None:
        return _by_status(Step.AWS, reply) or _unexpected(Step.AWS, reply, "no Error in it")
    code = (error.findtext("{*}Code") or "").strip() or None
    said = _clean(error.findtext("{*}Message") or "")
    request_id = (root.findtext(".//{*}RequestId") or "").strip()
    failure = Failure.REFUSED
    if reply.status >= 500 or code == "IDPCommunicationError":  # (the cluster's issuer)
        failure = Failure.UNAVAILABLE
    elif reply.status == 429 or code in ("Throttling", "ThrottlingException"):
        failure = Failure.RATE_LIMITED
    where = f" (request id {request_id[:64]})" if request_id else ""
    return ExchangeRefused(
        Step.AWS,
        failure,
        f"{said}{where}",
        http_status=reply.status,
        code=code,
        retry_after=_retry_after(reply),
    )


# --- Azure -------------------------------------------------------------------------------


async def azure(
    transport: ProbeTransport, token: str, identity: AzureIdentity, endpoints: CloudEndpoints
) -> BearerToken:
    """Entra ID client credentials with the ServiceAccount token as the client assertion."""
    reply = await post_form(
        transport,
        azure_url(endpoints, identity),
        {
            "client_id": identity.client_id,
            "scope": azure_scope(endpoints),
            "client_assertion_type": _JWT_BEARER,
            "client_assertion": token,
            "grant_type": "client_credentials",
        },
    )
    return _oauth_token(Step.AZURE, reply)


# --- Google ------------------------------------------------------------------------------


async def gcp(
    transport: ProbeTransport, token: str, identity: GcpIdentity, endpoints: CloudEndpoints
) -> BearerToken:
    """Google STS token exchange; then, with a service account to impersonate, its access
    token from IAM Credentials."""
    reply = await post_form(
        transport,
        gcp_url(endpoints),
        {
            "grant_type": _STS_GRANT,
            "audience": identity.audience,
            "scope": CLOUD_PLATFORM,
            "requested_token_type": _ACCESS_TOKEN,
            "subject_token": token,
            "subject_token_type": _JWT,
        },
    )
    federated = _oauth_token(Step.GCP, reply)
    if identity.service_account_email is None:
        return federated
    reply = await transport.fetch(
        "POST",
        gcp_impersonation_url(endpoints, identity.service_account_email),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Authorization": f"Bearer {federated.token}",
        },
        json_body={"scope": [CLOUD_PLATFORM], "lifetime": GCP_LIFETIME},
    )
    if reply.status != 200:
        raise _google_error(reply)
    body = reply.json()
    access = body.get("accessToken") if isinstance(body, dict) else None
    if not isinstance(access, str) or not access:
        raise _unexpected(Step.GCP_IMPERSONATION, reply, "no accessToken in it")
    return BearerToken(access)


def _google_error(reply: Reply) -> ExchangeRefused:
    error = google_error(reply)
    if error is None:
        step = Step.GCP_IMPERSONATION
        return _by_status(step, reply) or _unexpected(step, reply, "no error object in it")
    code = str(error.get("status") or error.get("code") or "") or None
    said = _clean(str(error.get("message") or ""))
    return ExchangeRefused(
        Step.GCP_IMPERSONATION,
        _failure(reply.status),
        said,
        http_status=reply.status,
        code=code,
        retry_after=_retry_after(reply),
    )


# --- shared ------------------------------------------------------------------------------


def _oauth_token(step: Step, reply: Reply) -> BearerToken:
    """An OAuth token endpoint's answer (RFC 6749 5.1 and 5.2; Entra adds error_codes)."""
    answer = token_answer(reply, time.time())
    if reply.status != 200:
        if answer.error is None:
            raise _by_status(step, reply) or _unexpected(step, reply, "no OAuth error in it")
        codes = answer.body.get("error_codes")
        code = answer.error
        if isinstance(codes, list) and codes and isinstance(codes[0], int):
            code = f"AADSTS{codes[0]}"  # Entra's own code says more than invalid_client
        said = _clean(answer.description or "")
        said = said.removeprefix(f"{code}: ")  # the answer names the code already
        raise ExchangeRefused(
            step,
            _failure(reply.status),
            said,
            http_status=reply.status,
            code=code,
            retry_after=_retry_after(reply),
        )
    if answer.token is None:
        raise _unexpected(step, reply, "no access_token in it")
    return answer.token


def _failure(status: int) -> Failure:
    if status == 429:
        return Failure.RATE_LIMITED
    if status >= 500:
        return Failure.UNAVAILABLE
    return Failure.REFUSED


def _by_status(step: Step, reply: Reply) -> ExchangeRefused | None:
    """An answer without the cloud's error shape that still says what happened."""
    if reply.status == 429 or reply.status >= 500:
        return ExchangeRefused(
            step,
            _failure(reply.status),
            "",
            http_status=reply.status,
            retry_after=_retry_after(reply),
        )
    return None


def _unexpected(step: Step, reply: Reply, what: str) -> ExchangeRefused:
    host = urlsplit(reply.url).hostname
    kind = ", HTML" if reply.is_html else ""
    return ExchangeRefused(
        step,
        Failure.UNEXPECTED,
        f"the answer from {host} (HTTP {reply.status}{kind}) is not the cloud's API: {what}",
        http_status=reply.status,
    )


def _retry_after(reply: Reply) -> float | None:
    value = reply.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _clean(text: str) -> str:
    """A cloud's error text, on one line, without Entra's trailing trace block."""
    text = re.split(r"\s(?:Trace ID|Correlation ID|Timestamp):", text, maxsplit=1)[0]
    text = " ".join(text.split()).rstrip(".")
    return text[:_MAX_MESSAGE]
