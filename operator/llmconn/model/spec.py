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

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Protocol

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmconn.model.blocks import (
    BLOCKS,
    AwsCredentialsRef,
    AzureSpec,
    BedrockSpec,
    IdentitySpec,
    McpSpec,
    OAuthSpec,
    VertexAISpec,
)
from llmconn.model.fields import (
    CREDENTIAL_HEADERS,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_TIMEOUT,
    Duration,
    ModelName,
    SecretHeader,
    SecretKey,
    SecretKeyRef,
    _header_name,
    _Strict,
    format_duration,
    http_url,
    parse_duration,
)
from llmconn.model.limits import MAX_HEADER_BYTES, too_large


class ValidationType(StrEnum):
    CONNECTIVITY = "Connectivity"
    MODEL = "Model"
    INFERENCE = "Inference"


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

    @property
    def oauth(self) -> bool:
        """Whether it takes an OAuth access token (spec.oauth) as its bearer token."""
        ...


_PROVIDERS = "providers"  # the validation context's key for the declarations


def _declared(info: ValidationInfo) -> Mapping[str, ProviderRules]:
    context = info.context
    if not isinstance(context, dict) or _PROVIDERS not in context:
        # A programming error, not a bad spec: TypeError is not turned into a ValidationError.
        raise TypeError("the spec needs the providers' declarations: use llmconn.probes.parse_spec")
    providers: Mapping[str, ProviderRules] = context[_PROVIDERS]
    return providers


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
    model: ModelName | None = None
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="apiKeySecretRef")
    aws_credentials_secret_ref: AwsCredentialsRef | None = Field(
        default=None, alias="awsCredentialsSecretRef"
    )
    identity: IdentitySpec | None = None
    oauth: OAuthSpec | None = None
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
        http_url(value, "endpoint")
        if "?" in value or "#" in value:
            raise ValueError("endpoint must not have a query (?) or fragment (#)")
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(name.encode()) + len(text.encode()) for name, text in value.items())
        if size > MAX_HEADER_BYTES:
            raise ValueError(
                too_large("spec.headers", size, MAX_HEADER_BYTES, why=", names and values together")
            )
        for name, text in value.items():
            if len(name) > MAX_HEADER_NAME:  # as the CRD bounds each name and value
                raise ValueError(
                    f"header {name[:40]!r}... is longer than {MAX_HEADER_NAME} characters"
                )
            if len(text) > MAX_HEADER_VALUE:
                raise ValueError(f"header {name!r} is longer than {MAX_HEADER_VALUE} characters")
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
        if self.oauth is not None:
            self._oauth_rules(providers, seen)
        return self

    def _oauth_rules(self, providers: Mapping[str, ProviderRules], headers: set[str]) -> None:
        if not providers[self.provider].oauth:
            allowed = " or ".join(sorted(n for n, r in providers.items() if r.oauth))
            raise ValueError(f"oauth is only allowed with provider {allowed}")
        for other, given in (
            ("apiKeySecretRef", self.api_key_secret_ref),
            ("awsCredentialsSecretRef", self.aws_credentials_secret_ref),
            ("identity", self.identity),
        ):
            if given is not None:
                raise ValueError(f"oauth and {other} are mutually exclusive: use one")
        if "authorization" in headers:
            raise ValueError(
                "headersFromSecret sets 'authorization', which the OAuth access token fills: "
                "use one of the two"
            )

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
        if self.oauth is not None:
            refs += self.oauth.refs
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
