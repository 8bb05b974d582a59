"""What every probe shares: its declaration, its inputs and findings, the outcome it returns;
and the registry that provider modules register into.

A probe is `async def probe(ctx: ProbeContext) -> ProbeOutcome`, registered with
`@registry.provider(...)`, which declares what the provider needs of a spec. This module
imports nothing above it: provider modules import it, and the `llmconn.probes` package
imports every provider module (as External Secrets' providers register into its API package).

The context is the probe's inputs, frozen. Its requests go through `ctx.request()` (native
probes) or an SDK client on `ctx.transport` (MCP); either way the HTTP layer
(`llmconn.exchange`) adds the phases, request ids and headroom headers to `ctx.found`, the
probe's findings, and refuses off-site redirects. Timeouts, total timing, redaction and the
classification of exceptions live once, in the caller (`llmconn.validate`,
`llmconn.classify`), not in probes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx2

from llmconn.credentials import AwsCredentials, BearerToken
from llmconn.exchange import USER_AGENT, ProbeTransport, Reply
from llmconn.http import Phase
from llmconn.reasons import Reason
from llmconn.spec import BLOCKS, CLOUDS, AzureSpec, McpSpec, SecretKeyRef, ValidationType
from llmconn.verdict import Lifecycle


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


@dataclass(frozen=True)
class ProviderInfo:
    """A provider's declaration: its probe, and what it needs of a spec (which the spec model
    checks, `llmconn.spec.ProviderRules`, and the CRD repeats: a test compares them)."""

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
    # The clouds (spec.identity blocks) whose exchanged credentials it takes instead of a key.
    identities: frozenset[str] = frozenset()

    @property
    def auth_header(self) -> str:
        return self.auth.header

    def base_url(self, endpoint: str | None) -> str:
        """The URL probes build on: spec.endpoint, else the default; no trailing slash. An
        endpoint that is only a host gets the API's path: both forms the SDKs take work."""
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
        identities: Iterable[str] = (),
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
                    identities=frozenset(identities),
                )
            )
            return fn

        return register

    def add(self, info: ProviderInfo) -> None:
        if info.name in self._providers:
            raise ValueError(f"provider {info.name!r} registered twice")
        if not info.blocks <= BLOCKS.keys() or not info.required_blocks <= info.blocks:
            raise ValueError(f"provider {info.name!r}: blocks must be spec blocks it accepts")
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
    goes (`llmconn.exchange.Recorder`); probes add facts worth keeping if a later step fails."""

    phase: Phase = Phase.START  # the network phase running last: it names a timeout
    phase_ms: dict[Phase, float] = field(default_factory=dict)  # time spent in each
    request_id: str | None = None  # from a header, or a body where the provider puts it
    details: dict[str, str] = field(default_factory=dict)  # headroom headers, probe facts
    step: str | None = None  # the protocol step running (MCP: initialize, tools/list)


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
    # Cloud credentials where the provider signs or takes a token instead of api_key.
    aws_credentials: AwsCredentials | None = None
    bearer_token: BearerToken | None = None
    found: Findings = field(default_factory=Findings)

    @property
    def transport(self) -> ProbeTransport:
        """The shared client for this probe: phases, request ids and headroom into `found`."""
        return ProbeTransport(self.http, self.found)

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
    ) -> Reply:
        """Send one request the provider's way (its auth header, the spec's headers) and read
        the answer; same-origin redirects are followed, others refused (llmconn.exchange)."""
        sent = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        sent.update(self.headers)
        sent.update(self.auth_headers())
        sent.update(headers or {})
        url = self.url(path)
        return await self.transport.fetch(
            method, url, headers=sent, json_body=json_body, params=params
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
