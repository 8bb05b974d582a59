"""The LLMConnection spec as pydantic models, with the same rules the CRD enforces at admission.

The CRD refuses bad manifests in a cluster; `llmconn validate` has no cluster, so the rules
that matter for a probe are checked here too, with messages that name the field.

The spec knows no provider. What a provider needs (an endpoint or its default, the blocks it
accepts or requires, the header its key goes in) is its own declaration, in the probe
registry; the rules that depend on it are checked against those declarations, handed in
from above through pydantic's validation context (`parse`; `llmconn.probes.parse_spec`
hands in the registry).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Go duration syntax restricted as Flux does; the CRD carries the same pattern.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Headers that carry credentials: never in plain `headers`, always in `headersFromSecret`.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "x-amz-security-token",
        "cookie",
        "proxy-authorization",
    }
)
# Headers the HTTP client owns (framing, routing, the connection itself): a spec that set
# them could smuggle a second request or reach another virtual host.
CONNECTION_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# An RFC 9110 token: what a header name may be.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# What the API server accepts as a Secret's name (a DNS-1123 subdomain) and as a key in its
# data. Names go into API paths: anything else ("../other-ns/secrets/x") is refused here, in
# the CRD, and again by the API client.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# An AWS Region code (us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5): it goes into a
# host name, so nothing else is let through.
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
# The longest probe a connection may ask for: one tenant's slow endpoints hold workers.
MAX_TIMEOUT = 60.0
# A model or deployment goes into URL paths: "." and ".." segments would climb them.
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")
# Google Cloud project IDs (or a project number, which the APIs take too). The location goes
# into a host name (https://{location}-aiplatform.googleapis.com): letters, digits and one
# hyphen at most, nothing that could end or change the host.
GCP_PROJECT_PATTERN = r"^([a-z][-a-z0-9]{4,28}[a-z0-9]|[0-9]{1,20})$"
GCP_LOCATION_PATTERN = r"^[a-z]+(-[a-z]+[0-9]+)?$"

Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=64)]


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "1m30s"; ValueError for anything outside the grammar."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number and unit, e.g. 30s, 5m, 1h30m")
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string in the grammar for a number of seconds (5m, 1h30m, 1.5s)."""
    if seconds <= 0:
        return "0s"
    if seconds != int(seconds):
        ms = round(seconds * 1000)
        return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"
    whole = int(seconds)
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            out += f"{whole // size}{unit}"
            whole %= size
    return out


class ValidationType(StrEnum):
    CONNECTIVITY = "Connectivity"
    MODEL = "Model"
    INFERENCE = "Inference"


class McpTransport(StrEnum):
    STREAMABLE_HTTP = "streamable-http"
    SSE = "sse"


class ProviderRules(Protocol):
    """What the spec checks of a provider's declaration (`llmconn.probes.base.ProviderInfo`)."""

    @property
    def default_endpoint(self) -> str | None:
        """None: spec.endpoint is required."""
        ...

    @property
    def blocks(self) -> frozenset[str]:
        """The provider-specific blocks (BLOCKS) it accepts."""
        ...

    @property
    def required_blocks(self) -> frozenset[str]:
        """The blocks it cannot do without (a subset of `blocks`)."""
        ...

    @property
    def auth_header(self) -> str:
        """The request header apiKeySecretRef fills, lower case."""
        ...

    @property
    def aws_sigv4(self) -> bool:
        """Whether it signs with AWS credentials (awsCredentialsSecretRef)."""
        ...

    @property
    def identities(self) -> frozenset[str]:
        """The identity clouds (CLOUDS) whose credentials it takes."""
        ...


_PROVIDERS = "providers"  # the validation context's key for the declarations


def _declared(info: ValidationInfo) -> Mapping[str, ProviderRules]:
    context = info.context
    if not isinstance(context, dict) or _PROVIDERS not in context:
        # A programming error, not a bad spec: TypeError is not turned into a ValidationError.
        raise TypeError("the spec needs the providers' declarations: use llmconn.probes.parse_spec")
    providers: Mapping[str, ProviderRules] = context[_PROVIDERS]
    return providers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _secret_name(value: str) -> str:
    if not re.fullmatch(SECRET_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Secret name: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (a Secret in the connection's "
            "own namespace)"
        )
    return value


def _secret_key(value: str) -> str:
    if not re.fullmatch(SECRET_KEY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Secret key: letters, digits, '-', '_' and '.'")
    return value


def _path_segments(value: str) -> str:
    if _DOT_SEGMENT.search(value):
        raise ValueError(f"{value!r} has a '.' or '..' path segment")
    return value


def _header_name(value: str) -> str:
    if not re.fullmatch(HEADER_NAME_PATTERN, value):
        raise ValueError(f"{value!r} is not a header name")
    lower = value.lower()
    if lower in CONNECTION_HEADERS or (
        lower.startswith("proxy-") and lower != "proxy-authorization"
    ):
        raise ValueError(f"header {value!r} is set by the HTTP client and cannot be given")
    return value


SecretName = Annotated[str, StringConstraints(max_length=253), AfterValidator(_secret_name)]
SecretKey = Annotated[str, StringConstraints(max_length=253), AfterValidator(_secret_key)]
HeaderName = Annotated[str, StringConstraints(max_length=256), AfterValidator(_header_name)]
PathName = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_path_segments)
]


class SecretKeyRef(_Strict):
    name: SecretName
    key: SecretKey = "apiKey"


class SecretHeader(_Strict):
    name: HeaderName
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


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


class ValidationSpec(_Strict):
    type: ValidationType | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    failure_threshold: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, alias="failureThreshold"
    )

    @field_validator("timeout")
    @classmethod
    def _timeout_bounded(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("timeout must be more than 0")
        if value is not None and parse_duration(value) > MAX_TIMEOUT:
            raise ValueError(f"timeout must be at most {format_duration(MAX_TIMEOUT)}")
        return value

    @field_validator("interval")
    @classmethod
    def _interval_off_or_1s(cls, value: str | None) -> str | None:
        if value is not None and 0 < parse_duration(value) < 1:
            raise ValueError('interval must be "0s" (off) or at least 1s')
        return value


class CABundleRef(SecretKeyRef):
    key: SecretKey = "ca.crt"


class TLSSpec(_Strict):
    ca_bundle_secret_ref: CABundleRef | None = Field(default=None, alias="caBundleSecretRef")
    insecure_skip_verify: bool = Field(default=False, alias="insecureSkipVerify")


class LLMConnectionSpec(_Strict):
    provider: str
    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    model: PathName | None = None
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="apiKeySecretRef")
    aws_credentials_secret_ref: AwsCredentialsRef | None = Field(
        default=None, alias="awsCredentialsSecretRef"
    )
    identity: IdentitySpec | None = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    headers_from_secret: list[SecretHeader] = Field(
        default_factory=list, alias="headersFromSecret", max_length=16
    )
    azure: AzureSpec | None = None
    mcp: McpSpec | None = None
    bedrock: BedrockSpec | None = None
    vertex_ai: VertexAISpec | None = Field(default=None, alias="vertexAI")
    suspend: bool = False
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    tls: TLSSpec = Field(default_factory=TLSSpec)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str, info: ValidationInfo) -> str:
        names = sorted(_declared(info))
        if value not in names:
            raise ValueError(f"unknown provider {value!r}; one of: {', '.join(names)}")
        return value

    @field_validator("endpoint")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint must be an absolute http or https URL with a host")
        if "?" in value or "#" in value:
            raise ValueError("endpoint must not have a query (?) or fragment (#)")
        try:
            parts.port  # noqa: B018  (raises for a port that is not a number in range)
        except ValueError:
            raise ValueError("endpoint has an invalid port") from None
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in CREDENTIAL_HEADERS:
                raise ValueError(
                    f"header {name!r} carries credentials: put it in headersFromSecret instead"
                )
            if name.lower().startswith("proxy-"):
                raise ValueError(f"header {name!r} is set by the HTTP client and cannot be given")
            _header_name(name)
        return value

    @model_validator(mode="after")
    def _provider_blocks(self, info: ValidationInfo) -> LLMConnectionSpec:
        providers = _declared(info)
        rules = providers[self.provider]
        for block in BLOCKS:
            given = self.block(block) is not None
            if block in rules.required_blocks and not given:
                raise ValueError(f"{_block_needs(block)} required for provider {self.provider}")
            if given and block not in rules.blocks:
                allowed = " or ".join(sorted(n for n, r in providers.items() if block in r.blocks))
                raise ValueError(f"the {block} block is only allowed with provider {allowed}")
        if rules.default_endpoint is None and self.endpoint is None:
            raise ValueError(f"endpoint is required for provider {self.provider}")
        seen: set[str] = set()
        for name in [*self.headers, *(h.name for h in self.headers_from_secret)]:
            if name.lower() in seen:
                raise ValueError(f"header {name!r} is given twice (names ignore case)")
            seen.add(name.lower())
        aws = self.aws_credentials_secret_ref
        if aws is not None and not rules.aws_sigv4:
            allowed = " or ".join(sorted(n for n, r in providers.items() if r.aws_sigv4))
            raise ValueError(f"awsCredentialsSecretRef is only allowed with provider {allowed}")
        if aws is not None and self.api_key_secret_ref is not None:
            raise ValueError("apiKeySecretRef and awsCredentialsSecretRef: use one of the two")
        filled = "apiKeySecretRef" if aws is None else "awsCredentialsSecretRef"
        if (self.api_key_secret_ref or aws) is not None and rules.auth_header in seen:
            raise ValueError(
                f"headersFromSecret sets {rules.auth_header!r}, the header {filled} "
                f"fills for provider {self.provider}: use one of the two"
            )
        if self.identity is not None:
            self._identity_rules(providers, seen)
        return self

    def _identity_rules(self, providers: Mapping[str, ProviderRules], headers: set[str]) -> None:
        assert self.identity is not None
        if self.api_key_secret_ref is not None:
            raise ValueError("identity and apiKeySecretRef are mutually exclusive: use one")
        if self.aws_credentials_secret_ref is not None:
            raise ValueError("identity and awsCredentialsSecretRef are mutually exclusive: use one")
        cloud = self.identity.cloud
        if cloud not in providers[self.provider].identities:
            allowed = sorted(n for n, r in providers.items() if cloud in r.identities)
            raise ValueError(
                f"identity.{cloud} is only allowed with provider {' or '.join(allowed)}"
                if allowed
                else f"no provider takes identity.{cloud} in this version"
            )
        if "authorization" in headers:
            raise ValueError(
                "headersFromSecret sets 'authorization', which the identity's credentials "
                "fill: use one of the two"
            )

    def block(self, name: str) -> _Strict | None:
        """A provider-specific block by its name in the manifest (a key of BLOCKS)."""
        field = next(n for n, f in type(self).model_fields.items() if (f.alias or n) == name)
        value: _Strict | None = getattr(self, field)
        return value

    # Derived facts, in one place.
    @property
    def default_validation_type(self) -> ValidationType:
        if self.model or self.azure is not None:
            return ValidationType.MODEL
        return ValidationType.CONNECTIVITY

    @property
    def secret_refs(self) -> list[SecretKeyRef]:
        """Every Secret key the probe reads, API key first."""
        refs = [self.api_key_secret_ref] if self.api_key_secret_ref else []
        if self.aws_credentials_secret_ref:
            refs += self.aws_credentials_secret_ref.refs
        refs += [h.secret_key_ref for h in self.headers_from_secret]
        if self.tls.ca_bundle_secret_ref:
            refs.append(self.tls.ca_bundle_secret_ref)
        return refs


def _block_needs(block: str) -> str:
    """What a required block must hold, for messages: "azure.deployment is"."""
    fields = BLOCKS[block].model_fields
    required = [f"{block}.{f.alias or n}" for n, f in fields.items() if f.is_required()]
    if not required:
        return f"the {block} block is"
    return " and ".join(required) + (" are" if len(required) > 1 else " is")


def parse(raw: Mapping[str, Any], providers: Mapping[str, ProviderRules]) -> LLMConnectionSpec:
    """Parse a manifest's spec against the providers' declarations; raises
    pydantic.ValidationError naming the field."""
    return LLMConnectionSpec.model_validate(raw, context={_PROVIDERS: providers})
