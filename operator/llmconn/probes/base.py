"""What every probe shares: its declaration, its inputs and findings, the outcome it returns;
and the registry that provider modules register into.

A probe is `async def probe(ctx: ProbeContext) -> ProbeOutcome`, registered with
`@registry.provider(...)`, which declares what the provider needs of a spec. This module
imports nothing above it: provider modules import it, and the `llmconn.probes` package
imports every provider module (as External Secrets' providers register into its API package).

The context is the probe's inputs, frozen. Its requests go through `ctx.request()` (native
probes) or an SDK client on `ctx.transport` (MCP); either way the HTTP layer
(`llmconn.net.exchange`) adds the phases, request ids and headroom headers to `ctx.found`, the
probe's findings, and refuses off-site redirects. Timeouts, total timing, redaction and the
classification of exceptions live once, in the caller (`llmconn.validation.validate`,
`llmconn.validation.classify`), not in probes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx2

from llmconn.model import logs
from llmconn.model.blocks import (
    BLOCKS,
    CLOUDS,
    AwsCredentialsRef,
    AzureSpec,
    BedrockSpec,
    IdentitySpec,
    McpSpec,
    OAuthSpec,
    VertexAISpec,
)
from llmconn.model.credentials import AwsCredentials, BearerToken, OAuthClientSecrets
from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import USER_AGENT, ProbeTransport, Reply, Signer
from llmconn.net.guard import Phase


class Auth(StrEnum):
    """How the API key goes out: the header each provider's SDK uses."""

    BEARER = "bearer"  # Authorization: Bearer <key>
    X_API_KEY = "x-api-key"  # Anthropic
    GOOG = "x-goog-api-key"  # Gemini
    AZURE = "api-key"  # Azure OpenAI

    @property
    def header(self) -> str:
        """The request header the key goes in, lower case."""
        return "authorization" if self is Auth.BEARER else self.value


ProbeFn = Callable[["ProbeContext"], Awaitable["ProbeOutcome"]]
# The default endpoint of a provider whose host depends on the spec (bedrock: the region's).
EndpointFor = Callable[[LLMConnectionSpec], str]


@dataclass(frozen=True)
class ProviderInfo:
    """A provider's declaration: its probe, and what it needs of a spec (which the spec model
    checks, `llmconn.model.spec.ProviderRules`, and the CRD repeats: a test compares them)."""

    name: str
    probe: ProbeFn
    title: str  # for docs and CLI help
    default_endpoint: str | None  # None: spec.endpoint is required
    # The API's path under its host, added to an endpoint given without a path, as the
    # provider's SDK adds it to the host it takes (groq: https://api.groq.com -> /openai/v1).
    api_path: str = ""
    auth: Auth = Auth.BEARER
    inference: bool = True  # whether Inference validation is possible
    blocks: frozenset[str] = frozenset()  # provider-specific spec blocks it accepts
    required_blocks: frozenset[str] = frozenset()  # ... and those it requires
    aws_sigv4: bool = False  # signs with AWS credentials (awsCredentialsSecretRef) instead
    # The default endpoint computed from the spec; `default_endpoint` then shows its form.
    endpoint_for: EndpointFor | None = None
    # When set, apiKeySecretRef may hold a credentials file (a service-account JSON key,
    # several lines), handed to the probe as text, and this names its secret parts (what
    # is redacted: not the whole file, whose account name and URLs messages may show).
    # Else the key must be a value fit for a header, and is secret whole.
    key_secrets: Callable[[str], Sequence[str]] | None = None
    # The clouds (spec.identity blocks) whose exchanged credentials it takes instead of a key.
    identities: frozenset[str] = frozenset()
    # Whether it takes an OAuth access token (spec.oauth) as `Authorization: Bearer`.
    oauth: bool = False

    @property
    def auth_header(self) -> str:
        return self.auth.header

    def base_url(self, endpoint: str | None, spec: LLMConnectionSpec | None = None) -> str:
        """The URL probes build on: spec.endpoint, else the default; no trailing slash. An
        endpoint that is only a host gets the API's path: both forms the SDKs take work."""
        if not endpoint and self.endpoint_for is not None and spec is not None:
            return self.endpoint_for(spec).rstrip("/")
        url = (endpoint or self.default_endpoint or "").rstrip("/")
        if endpoint and self.api_path and not urlsplit(url).path:
            url += self.api_path
        return url


class Registry:
    """The only list of providers: name -> ProviderInfo, refusing duplicates."""

    def __init__(self) -> None:
        self._providers: dict[str, ProviderInfo] = {}

    def provider(
        self,
        name: str,
        *,
        title: str,
        default_endpoint: str | None,
        api_path: str = "",
        auth: Auth = Auth.BEARER,
        inference: bool = True,
        accepts: Iterable[str] = (),
        requires: Iterable[str] = (),
        aws_sigv4: bool = False,
        endpoint_for: EndpointFor | None = None,
        key_secrets: Callable[[str], Sequence[str]] | None = None,
        identities: Iterable[str] = (),
        oauth: bool = False,
    ) -> Callable[[ProbeFn], ProbeFn]:
        """Register the decorated probe under `name`, with what the provider needs: spec
        blocks it `accepts`, and those it `requires` (which it accepts too); the clouds of
        `spec.identity` whose credentials it takes (`identities`)."""

        def register(fn: ProbeFn) -> ProbeFn:
            self.add(
                ProviderInfo(
                    name=name,
                    probe=fn,
                    title=title,
                    default_endpoint=default_endpoint,
                    api_path=api_path,
                    auth=auth,
                    inference=inference,
                    blocks=frozenset(accepts) | frozenset(requires),
                    required_blocks=frozenset(requires),
                    aws_sigv4=aws_sigv4,
                    endpoint_for=endpoint_for,
                    key_secrets=key_secrets,
                    identities=frozenset(identities),
                    oauth=oauth,
                )
            )
            return fn

        return register

    def add(self, info: ProviderInfo) -> None:
        if info.name in self._providers:
            raise ValueError(f"provider {info.name!r} registered twice")
        if not info.blocks <= BLOCKS.keys() or not info.required_blocks <= info.blocks:
            raise ValueError(f"provider {info.name!r}: blocks must be spec blocks it accepts")
        if info.oauth and info.auth is not Auth.BEARER:
            raise ValueError(f"provider {info.name!r}: an OAuth token goes in Authorization")
        if not info.identities <= CLOUDS.keys():
            raise ValueError(f"provider {info.name!r}: identities must be spec.identity clouds")
        self._providers[info.name] = info

    def get(self, name: str) -> ProviderInfo:
        return self._providers[name]

    def names(self) -> list[str]:
        return sorted(self._providers)

    @property
    def providers(self) -> Mapping[str, ProviderInfo]:
        """Every declaration, read-only (what the spec model is checked against)."""
        return MappingProxyType(self._providers)

    @contextlib.contextmanager
    def temporary(self) -> Iterator[Registry]:
        """For tests: providers registered inside the block are gone after it."""
        before = dict(self._providers)
        try:
            yield self
        finally:
            self._providers = before


# Provider modules register here; `llmconn.probes` imports them all before anyone asks.
registry = Registry()


@dataclass(frozen=True)
class ProbeOutcome:
    """What a probe found. Validated, or a reason with a message a user can act on."""

    reason: Reason
    message: str
    http_status: int | None = None
    code: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None  # seconds, from Retry-After on RateLimited
    lifecycle: Lifecycle | None = None  # the model's, where the provider says it for free


class ProbeFailure(Exception):
    """Raised anywhere inside a probe to end it with this outcome."""

    def __init__(self, outcome: ProbeOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass
class Findings:
    """What a probe collects besides its outcome. The HTTP layer writes the network part as it
    goes (`llmconn.net.exchange.Recorder`); probes add facts worth keeping if a later step fails."""

    phase: Phase = Phase.START  # the network phase running last: it names a timeout
    phase_ms: dict[Phase, float] = field(default_factory=dict)  # time spent in each
    request_id: str | None = None  # from a header, or a body where the provider puts it
    details: dict[str, str] = field(default_factory=dict)  # headroom headers, probe facts
    step: str | None = None  # the protocol step running (MCP: initialize, tools/list)
    # The URL of the request running when it is not to the endpoint (a token service), so
    # that a network failure names that host.
    elsewhere: str | None = None
    # Secrets the probe made or unpacked (an access token it minted): redacted from the
    # verdict, and from log records while the probe holds them (`ProbeContext.holding`).
    secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProbeContext:
    """A probe's inputs. `found` is where what it collects goes."""

    provider: ProviderInfo
    endpoint: str  # resolved base URL, no trailing slash
    validation_type: ValidationType
    http: httpx2.AsyncClient  # shared between probes: send through `transport`
    timeout: float  # the whole probe's budget, seconds (enforced by the caller)
    model: str | None = None
    api_key: str | None = None
    api_key_ref: SecretKeyRef | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # plain + from Secrets
    azure: AzureSpec | None = None
    mcp: McpSpec | None = None
    bedrock: BedrockSpec | None = None
    vertex_ai: VertexAISpec | None = None
    # Cloud credentials where the provider signs or takes a token instead of api_key.
    aws_credentials: AwsCredentials | None = None
    aws_credentials_ref: AwsCredentialsRef | None = None  # where they came from, if a Secret
    bearer_token: BearerToken | None = None
    # The workload identity the credentials above were exchanged for (spec.identity).
    identity: IdentitySpec | None = None
    # spec.oauth, what its Secret holds, and (serviceAccount) a ServiceAccount token minted
    # for an audience: raises ProbeFailure when there is none. The access token, once
    # granted, is `bearer_token` (`llmconn.probes.oauth_client`).
    oauth: OAuthSpec | None = None
    oauth_secrets: OAuthClientSecrets | None = None
    mint: Callable[[str], Awaitable[str]] | None = None
    found: Findings = field(default_factory=Findings)

    @property
    def transport(self) -> ProbeTransport:
        """The shared client for this probe: phases, request ids and headroom into `found`."""
        return ProbeTransport(self.http, self.found)

    @contextlib.contextmanager
    def holding(self, *values: str) -> Iterator[None]:
        """Secrets the probe made (a minted token, a signed assertion) or unpacked from a
        Secret: no log record shows them while the block runs, and the verdict never does."""
        self.found.secrets.extend(v for v in values if v)
        with logs.in_use(values):
            yield

    def auth_headers(self) -> dict[str, str]:
        if self.bearer_token is not None:  # from spec.identity: in place of the key's header
            return {"Authorization": f"Bearer {self.bearer_token.token}"}
        if not self.api_key:
            return {}
        if self.provider.auth is Auth.BEARER:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {self.provider.auth.header: self.api_key}

    def url(self, path: str) -> str:
        """Join a path onto the endpoint: '/models' under https://host/v1 is https://host/v1/models."""
        if path.startswith(("http://", "https://")):
            return path
        return self.endpoint + "/" + path.lstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        sign: Signer | None = None,
    ) -> Reply:
        """Send one request the provider's way (its auth header, the spec's headers) and read
        the answer; same-origin redirects are followed, others refused (llmconn.net.exchange).
        `content` is a body sent as given; `sign` signs each request as it goes out."""
        sent = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        sent.update(self.headers)
        sent.update(self.auth_headers())
        sent.update(headers or {})
        url = self.url(path)
        return await self.transport.fetch(
            method,
            url,
            headers=sent,
            json_body=json_body,
            params=params,
            content=content,
            sign=sign,
        )

    def required_model(self) -> str:
        """spec.model, which Model and Inference validations need; else InvalidConfiguration."""
        if not self.model:
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION,
                    f"Validation type {self.validation_type.value} needs spec.model; set it or "
                    "use type Connectivity.",
                )
            )
        return self.model

    @property
    def key_hint(self) -> str:
        """Where the user fixes a rejected key: 'key apiKey of Secret x'."""
        if self.oauth is not None:
            issuer = self.found.details.get("oauthIssuer") or "its authorization server"
            return (
                f"the access token was fresh from {issuer}: check that the server takes that "
                "issuer's tokens for this resource (spec.oauth.resource) and scopes "
                "(spec.oauth.scopes)"
            )
        if self.identity is not None or self.bearer_token is not None:
            return "check the connection's identity and its token exchange"
        if (aws := self.aws_credentials_ref) is not None:
            keys = f"{aws.access_key_id_key} and {aws.secret_access_key_key}"
            if aws.session_token_key:
                keys = f"{aws.access_key_id_key}, {aws.secret_access_key_key} and "
                keys += aws.session_token_key
            return f"update keys {keys} of Secret {aws.name}"
        if self.api_key_ref is None:
            return "set spec.apiKeySecretRef to a Secret holding a valid key"
        return f"update key {self.api_key_ref.key} of Secret {self.api_key_ref.name}"


def ok(message: str, reply: Reply | None = None, **details: str) -> ProbeOutcome:
    return ProbeOutcome(
        Reason.VALIDATED,
        message,
        http_status=reply.status if reply is not None else None,
        details=details,
    )
