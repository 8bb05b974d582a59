"""The provider-specific blocks of the spec (azure, mcp, bedrock, vertexAI), spec.identity
(a ServiceAccount's token exchanged at a cloud) and spec.oauth (an OAuth 2.1 client of the
server's authorization server). A provider accepts only the blocks and clouds it declares
(`BLOCKS`, `CLOUDS`), and spec.oauth only if it declares `oauth` (the checks are in spec.py)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    model_validator,
)

from llmconn.model.fields import (
    AWS_REGION_PATTERN,
    GCP_LOCATION_PATTERN,
    GCP_PROJECT_PATTERN,
    SECRET_NAME_PATTERN,
    PathName,
    SecretKey,
    SecretKeyRef,
    SecretName,
    _Strict,
    http_url,
)


class McpTransport(StrEnum):
    STREAMABLE_HTTP = "streamable-http"
    SSE = "sse"


class AzureSpec(_Strict):
    deployment: PathName
    api_version: str = Field(default="2024-10-21", alias="apiVersion")


class McpSpec(_Strict):
    transport: McpTransport = McpTransport.STREAMABLE_HTTP


class BedrockSpec(_Strict):
    region: Annotated[str, StringConstraints(max_length=32, pattern=AWS_REGION_PATTERN)]


class AwsCredentialsRef(_Strict):
    """AWS access keys in one Secret. The default key names are the AWS SDKs' environment
    variables, so the Secret an agent takes with `envFrom` works here as it is."""

    name: SecretName
    access_key_id_key: SecretKey = Field(default="AWS_ACCESS_KEY_ID", alias="accessKeyIdKey")
    secret_access_key_key: SecretKey = Field(
        default="AWS_SECRET_ACCESS_KEY", alias="secretAccessKeyKey"
    )
    session_token_key: SecretKey | None = Field(default=None, alias="sessionTokenKey")

    @property
    def refs(self) -> list[SecretKeyRef]:
        """The Secret keys read: access key id, secret access key, session token if named."""
        keys = [self.access_key_id_key, self.secret_access_key_key, self.session_token_key]
        return [SecretKeyRef(name=self.name, key=key) for key in keys if key is not None]


class VertexPublisher(StrEnum):
    GOOGLE = "google"  # Gemini
    ANTHROPIC = "anthropic"  # Claude


def _gcp_project(value: str) -> str:
    if not re.fullmatch(GCP_PROJECT_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Google Cloud project: give its ID (6 to 30 lower-case "
            "letters, digits and hyphens, starting with a letter, not ending with a hyphen) "
            "or its number"
        )
    return value


def _gcp_location(value: str) -> str:
    if not re.fullmatch(GCP_LOCATION_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Vertex AI location: a region such as us-central1 or "
            "europe-west4, the multi-regions us or eu, or global"
        )
    return value


class VertexAISpec(_Strict):
    project: Annotated[str, StringConstraints(max_length=64), AfterValidator(_gcp_project)]
    location: Annotated[str, StringConstraints(max_length=63), AfterValidator(_gcp_location)]
    publisher: VertexPublisher = VertexPublisher.GOOGLE


# The provider-specific blocks of the spec, by their name in a manifest: a provider accepts
# only those it declares.
BLOCKS: dict[str, type[_Strict]] = {
    "azure": AzureSpec,
    "mcp": McpSpec,
    "bedrock": BedrockSpec,
    "vertexAI": VertexAISpec,
}

# --- spec.identity: a ServiceAccount's token exchanged at a cloud, instead of a key --------

# A role in any AWS partition (aws, aws-cn, aws-us-gov, ...), with an optional path.
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[-A-Za-z0-9_+=,.@/]+$"
# An Entra tenant: its GUID or one of its domain names (the token endpoint takes both).
TENANT_PATTERN = (
    r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# A workload identity pool provider's full canonical resource name (Google STS's audience).
GCP_AUDIENCE_PATTERN = (
    r"^//iam\.googleapis\.com/projects/[0-9]+/locations/global/"
    r"workloadIdentityPools/[-a-z0-9]+/providers/[-a-z0-9]+$"
)
GCP_SERVICE_ACCOUNT_PATTERN = r"^[a-z0-9][-a-z0-9]{0,62}@[-a-z0-9.]+\.gserviceaccount\.com$"


def _pattern(pattern: str, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{value!r} is not {what}"[:300])
        return value

    return AfterValidator(check)


class AwsIdentity(_Strict):
    """STS AssumeRoleWithWebIdentity of this role (its trust policy names the ServiceAccount)."""

    role_arn: Annotated[
        str,
        StringConstraints(max_length=2048),
        _pattern(ROLE_ARN_PATTERN, "an IAM role ARN (arn:aws:iam::123456789012:role/name)"),
    ] = Field(alias="roleArn")
    sts_region: (
        Annotated[
            str, StringConstraints(max_length=32), _pattern(AWS_REGION_PATTERN, "an AWS region")
        ]
        | None
    ) = Field(default=None, alias="stsRegion")

    @property
    def partition(self) -> str:
        return self.role_arn.split(":", 2)[1]

    @model_validator(mode="after")
    def _region_outside_aws(self) -> AwsIdentity:
        if self.partition != "aws" and self.sts_region is None:
            raise ValueError(
                f"stsRegion is required for a role in partition {self.partition} (it has no "
                "global STS endpoint)"
            )
        return self


class AzureIdentity(_Strict):
    """An Entra ID app registration or user-assigned managed identity that trusts the
    ServiceAccount (a federated identity credential)."""

    tenant_id: Annotated[
        str,
        StringConstraints(max_length=253),
        _pattern(TENANT_PATTERN, "an Entra tenant ID (a GUID or a domain name)"),
    ] = Field(alias="tenantId")
    client_id: Annotated[str, _pattern(GUID_PATTERN, "a client ID (a GUID)")] = Field(
        alias="clientId"
    )


class GcpIdentity(_Strict):
    """A workload identity pool provider that trusts the cluster's issuer; optionally a
    service account to impersonate."""

    audience: Annotated[
        str,
        StringConstraints(max_length=512),
        _pattern(
            GCP_AUDIENCE_PATTERN,
            "a workload identity pool provider (//iam.googleapis.com/projects/NUMBER/"
            "locations/global/workloadIdentityPools/POOL/providers/PROVIDER)",
        ),
    ]
    service_account_email: (
        Annotated[
            str,
            StringConstraints(max_length=254),
            _pattern(
                GCP_SERVICE_ACCOUNT_PATTERN,
                "a service account email (name@project.iam.gserviceaccount.com)",
            ),
        ]
        | None
    ) = Field(default=None, alias="serviceAccountEmail")


# The clouds an identity may be exchanged at, by block name: a provider accepts those it
# declares (`ProviderRules.identities`).
CLOUDS: dict[str, type[_Strict]] = {"aws": AwsIdentity, "azure": AzureIdentity, "gcp": GcpIdentity}


def _service_account_name(value: str) -> str:
    if not re.fullmatch(SECRET_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a ServiceAccount name: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (a ServiceAccount in the connection's "
            "own namespace)"
        )
    return value


class IdentitySpec(_Strict):
    service_account_name: Annotated[
        str, StringConstraints(max_length=253), AfterValidator(_service_account_name)
    ] = Field(alias="serviceAccountName")
    aws: AwsIdentity | None = None
    azure: AzureIdentity | None = None
    gcp: GcpIdentity | None = None

    @model_validator(mode="after")
    def _one_cloud(self) -> IdentitySpec:
        given = [name for name in CLOUDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("identity needs exactly one of aws, azure or gcp")
        return self

    @property
    def cloud(self) -> str:
        """The block given: aws, azure or gcp."""
        return next(name for name in CLOUDS if getattr(self, name) is not None)


# --- spec.oauth: an access token from the server's authorization server ------------------

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]+$"
# A client id as OAuth servers issue them: printable ASCII without spaces (RFC 6749 A.1 allows
# any VSCHAR; spaces and controls would not survive a form or a JWT claim unchanged).
CLIENT_ID_PATTERN = r"^[\x21-\x7e]+$"


def _oauth_url(value: str) -> str:
    http_url(value, f"{value[:200]!r}")
    if "#" in value:
        raise ValueError(f"{value[:200]!r} must not have a fragment (#)")
    return value


OAuthURL = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_oauth_url)]
Scope = Annotated[str, StringConstraints(max_length=256), _pattern(SCOPE_PATTERN, "an OAuth scope")]
ClientId = Annotated[
    str, StringConstraints(max_length=256), _pattern(CLIENT_ID_PATTERN, "an OAuth client id")
]


class ClientAuthMethod(StrEnum):
    """How a client secret goes to the token endpoint (RFC 6749 section 2.3.1)."""

    BASIC = "client_secret_basic"
    POST = "client_secret_post"


class SigningAlgorithm(StrEnum):
    """JWS algorithms for a private_key_jwt client assertion (RFC 7518)."""

    RS256 = "RS256"
    PS256 = "PS256"
    ES256 = "ES256"


class OAuthClientCredentials(_Strict):
    """client_id and client_secret from one Secret of the connection's namespace."""

    secret_name: SecretName = Field(alias="secretName")
    client_id_key: SecretKey = Field(default="clientId", alias="clientIdKey")
    client_secret_key: SecretKey = Field(default="clientSecret", alias="clientSecretKey")
    # None: client_secret_basic when the server's metadata allows it, else client_secret_post.
    auth_method: ClientAuthMethod | None = Field(default=None, alias="authMethod")

    @property
    def refs(self) -> list[SecretKeyRef]:
        return [
            SecretKeyRef(name=self.secret_name, key=self.client_id_key),
            SecretKeyRef(name=self.secret_name, key=self.client_secret_key),
        ]


class OAuthPrivateKeyJWT(_Strict):
    """A client assertion (RFC 7523 section 2.2) signed with a private key from a Secret."""

    client_id: ClientId = Field(alias="clientId")
    secret_name: SecretName = Field(alias="secretName")
    private_key_key: SecretKey = Field(default="privateKey", alias="privateKeyKey")
    key_id: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, alias="keyId"
    )
    algorithm: SigningAlgorithm = SigningAlgorithm.RS256

    @property
    def refs(self) -> list[SecretKeyRef]:
        return [SecretKeyRef(name=self.secret_name, key=self.private_key_key)]


class OAuthServiceAccount(_Strict):
    """The ServiceAccount's own token (TokenRequest) as the client assertion, for an
    authorization server that federates with the cluster's issuer."""

    service_account_name: Annotated[
        str, StringConstraints(max_length=253), AfterValidator(_service_account_name)
    ] = Field(alias="serviceAccountName")
    client_id: ClientId | None = Field(default=None, alias="clientId")
    # The minted token's audience; default the authorization server's issuer.
    audience: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None


# The three forms, by their name in a manifest.
OAUTH_FORMS = ("clientCredentials", "privateKeyJWT", "serviceAccount")


class OAuthSpec(_Strict):
    client_credentials: OAuthClientCredentials | None = Field(
        default=None, alias="clientCredentials"
    )
    private_key_jwt: OAuthPrivateKeyJWT | None = Field(default=None, alias="privateKeyJWT")
    service_account: OAuthServiceAccount | None = Field(default=None, alias="serviceAccount")
    scopes: list[Scope] = Field(default_factory=list, max_length=32)
    resource: OAuthURL | None = None  # RFC 8707; default the server's URL
    token_url: OAuthURL | None = Field(default=None, alias="tokenURL")
    issuer: OAuthURL | None = None

    @model_validator(mode="after")
    def _one_form(self) -> OAuthSpec:
        given = [self.client_credentials, self.private_key_jwt, self.service_account]
        if sum(form is not None for form in given) != 1:
            raise ValueError(
                "oauth needs exactly one of clientCredentials, privateKeyJWT or serviceAccount"
            )
        return self

    @property
    def form(self) -> str:
        """The form given, by its manifest name."""
        if self.client_credentials is not None:
            return "clientCredentials"
        return "privateKeyJWT" if self.private_key_jwt is not None else "serviceAccount"

    @property
    def refs(self) -> list[SecretKeyRef]:
        """The Secret keys the form reads (none for serviceAccount)."""
        if self.client_credentials is not None:
            return self.client_credentials.refs
        if self.private_key_jwt is not None:
            return self.private_key_jwt.refs
        return []
