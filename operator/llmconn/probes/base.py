"""What every probe shares: its declaration, the context it runs in, the reply it reads, the
outcome it returns; and the registry that provider modules register into.

A probe is `async def probe(ctx: ProbeContext) -> ProbeOutcome`, registered with
`@registry.provider(...)`, which declares what the provider needs of a spec. This module
imports nothing above it: provider modules import it, and the `llmconn.probes` package
imports every provider module (as External Secrets' providers register into its API package).
 It makes its requests with
`ctx.request()`, which adds the provider's auth header, refuses off-site redirects, reads
the body (which the client's transport decodes and bounds: `llmconn.http`), and records
request ids, headroom headers and phase timings. Timeouts, total timing, redaction and the
classification of network failures live once, in the caller (`llmconn.validate`), not in
probes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx2

from llmconn.http import ResponseTooLarge
from llmconn.reasons import Reason
from llmconn.spec import BLOCKS, AzureSpec, McpSpec, SecretKeyRef, ValidationType

MAX_REDIRECTS = 3
USER_AGENT = "llmconn/0.1"

# Response headers worth keeping, by provider dialect: request ids first hit wins.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "apim-request-id", "x-dashscope-request-id")
HEADROOM_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
EXTRA_DETAIL_HEADERS = {"x-ms-region": "region"}


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
    auth: Auth = Auth.BEARER
    inference: bool = True  # whether Inference validation is possible
    blocks: frozenset[str] = frozenset()  # provider-specific spec blocks it accepts
    required_blocks: frozenset[str] = frozenset()  # ... and those it requires

    @property
    def auth_header(self) -> str:
        return self.auth.header

    def base_url(self, endpoint: str | None) -> str:
        """The URL probes build on: spec.endpoint, else the default; no trailing slash."""
        return (endpoint or self.default_endpoint or "").rstrip("/")


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
        auth: Auth = Auth.BEARER,
        inference: bool = True,
        accepts: Iterable[str] = (),
        requires: Iterable[str] = (),
    ) -> Callable[[ProbeFn], ProbeFn]:
        """Register the decorated probe under `name`, with what the provider needs: spec
        blocks it `accepts`, and those it `requires` (which it accepts too)."""

        def register(fn: ProbeFn) -> ProbeFn:
            self.add(
                ProviderInfo(
                    name=name,
                    probe=fn,
                    title=title,
                    default_endpoint=default_endpoint,
                    auth=auth,
                    inference=inference,
                    blocks=frozenset(accepts) | frozenset(requires),
                    required_blocks=frozenset(requires),
                )
            )
            return fn

        return register

    def add(self, info: ProviderInfo) -> None:
        if info.name in self._providers:
            raise ValueError(f"provider {info.name!r} registered twice")
        if not info.blocks <= BLOCKS.keys() or not info.required_blocks <= info.blocks:
            raise ValueError(f"provider {info.name!r}: blocks must be spec blocks it accepts")
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


class ProbeFailure(Exception):
    """Raised anywhere inside a probe to end it with this outcome."""

    def __init__(self, outcome: ProbeOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass
class Reply:
    status: int
    headers: httpx2.Headers
    content: bytes
    url: str

    def json(self) -> Any:
        """The parsed body, or None when it is not JSON."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError, RecursionError):  # "[[[[..." nests too deep
            return None

    @property
    def is_html(self) -> bool:
        ctype = self.headers.get("content-type", "")
        head = self.content[:256].lstrip().lower()
        return "html" in ctype or head.startswith((b"<!doctype", b"<html"))

    def text(self, limit: int = 300) -> str:
        return self.content[:limit].decode("utf-8", "replace")


def camel(header: str) -> str:
    """x-ratelimit-remaining-requests -> rateLimitRemainingRequests (status.details keys)."""
    header = header.removeprefix("x-")
    parts = header.replace("ratelimit", "rate-limit").split("-")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


@dataclass
class ProbeContext:
    provider: ProviderInfo
    endpoint: str  # resolved base URL, no trailing slash
    validation_type: ValidationType
    http: httpx2.AsyncClient
    timeout: float  # the whole probe's budget, seconds (enforced by the caller)
    model: str | None = None
    api_key: str | None = None
    api_key_ref: SecretKeyRef | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # plain + from Secrets
    azure: AzureSpec | None = None
    mcp: McpSpec | None = None
    # Filled while the probe runs; read by the caller.
    request_id: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    phase: str = "start"  # dns, connect, tls, request, response: what was running last
    phase_ms: dict[str, float] = field(default_factory=dict)

    # --- requests -------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        match self.provider.auth:
            case Auth.BEARER:
                return {"Authorization": f"Bearer {self.api_key}"}
            case Auth.X_API_KEY:
                return {"x-api-key": self.api_key}
            case Auth.GOOG:
                return {"x-goog-api-key": self.api_key}
            case Auth.AZURE:
                return {"api-key": self.api_key}

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
        """Send one request the provider's way. Same-origin redirects are followed (bounded);
        a redirect to another origin ends the probe as UnexpectedResponse, so credentials
        never travel to another host."""
        url = self.url(path)
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        all_headers.update(self.headers)
        all_headers.update(self.auth_headers())
        all_headers.update(headers or {})
        origin = _origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            reply = await self._send(method, url, all_headers, json_body, params)
            if reply.status not in (301, 302, 303, 307, 308):
                return reply
            location = reply.headers.get("location")
            if not location:
                return reply
            try:
                target = urljoin(url, location)
                target_origin = _origin(target)  # .port raises for a port out of range
            except ValueError:
                raise ProbeFailure(
                    ProbeOutcome(
                        Reason.UNEXPECTED_RESPONSE,
                        f"The endpoint redirected (HTTP {reply.status}) to a URL that cannot "
                        "be parsed. Set spec.endpoint to the provider's real API base URL.",
                        http_status=reply.status,
                    )
                ) from None
            if target_origin != origin:
                raise ProbeFailure(
                    ProbeOutcome(
                        Reason.UNEXPECTED_RESPONSE,
                        f"The endpoint redirected (HTTP {reply.status}) to another host "
                        f"({urlsplit(target).hostname}); credentials are never sent there. "
                        "Set spec.endpoint to the provider's real API base URL.",
                        http_status=reply.status,
                    )
                )
            url, params = target, None
            if reply.status == 303:
                method, json_body = "GET", None
        raise ProbeFailure(
            ProbeOutcome(
                Reason.UNEXPECTED_RESPONSE,
                f"The endpoint redirected more than {MAX_REDIRECTS} times.",
                http_status=reply.status,
            )
        )

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json_body: Any,
        params: Mapping[str, str] | None,
    ) -> Reply:
        request = self.http.build_request(
            method,
            url,
            headers=headers,
            json=json_body,
            params=params,
            extensions={"trace": self._trace},
        )
        self.phase = "request"
        started = time.perf_counter()
        response = await self.http.send(request, stream=True, follow_redirects=False)
        try:
            self.phase = "response"
            # Decoded and bounded below us, by the client's transport (llmconn.http).
            body = await response.aread()
        except httpx2.DecodingError as exc:
            what = exc.what if isinstance(exc, ResponseTooLarge) else f"not readable: {exc}"
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.UNEXPECTED_RESPONSE,
                    f"The answer to {method} {urlsplit(url).path} was {what}; that is not "
                    "the provider's API.",
                    http_status=response.status_code,
                )
            ) from None
        finally:
            await response.aclose()
        self.phase_ms["total"] = (
            self.phase_ms.get("total", 0.0) + (time.perf_counter() - started) * 1000
        )
        self._record(response)
        self.phase = "done"
        return Reply(response.status_code, response.headers, body, url)

    async def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        # httpcore trace events: "connection.connect_tcp.started", "connection.start_tls...",
        # "http11.send_request_headers.started", "http11.receive_response_headers...".
        now = time.perf_counter()
        name, _, stage = event.rpartition(".")
        phase = {
            "connection.connect_tcp": "connect",
            "connection.start_tls": "tls",
            "http11.send_request_headers": "request",
            "http11.send_request_body": "request",
            "http11.receive_response_headers": "response",
            "http2.send_request_headers": "request",
            "http2.receive_response_headers": "response",
        }.get(name)
        if phase is None:
            return
        if stage == "started":
            self.phase = phase
            self.phase_ms[f"_{phase}_start"] = now
        elif stage in ("complete", "failed"):
            start = self.phase_ms.pop(f"_{phase}_start", None)
            if start is not None:
                self.phase_ms[phase] = self.phase_ms.get(phase, 0.0) + (now - start) * 1000

    def _record(self, response: httpx2.Response) -> None:
        for name in REQUEST_ID_HEADERS:
            if value := response.headers.get(name):
                self.request_id = value[:128]
                break
        for name, value in response.headers.items():
            lname = name.lower()
            if lname.startswith(HEADROOM_PREFIXES):
                self.details[camel(lname)] = value[:64]
            elif lname in EXTRA_DETAIL_HEADERS:
                self.details[EXTRA_DETAIL_HEADERS[lname]] = value[:64]

    # --- helpers for probes ---------------------------------------------------------
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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def ok(message: str, reply: Reply | None = None, **details: str) -> ProbeOutcome:
    return ProbeOutcome(
        Reason.VALIDATED,
        message,
        http_status=reply.status if reply is not None else None,
        details=details,
    )
