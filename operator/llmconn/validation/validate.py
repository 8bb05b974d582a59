"""The validation core: spec + Secrets -> one probe -> a redacted `Verdict`.

No Kubernetes here: the operator and the one-shot CLI both call `validate()`. Everything
probes share lives here, once: reading Secrets, the Inference guard, the time budget, the
latency, the classification of network failures by the phase that failed, and redaction.

Decisions worth knowing:
- Exceptions out of a probe are classified in one place (`llmconn.validation.classify`): by the
  phase that failed, so a lookup that never answers is DNSFailure, not a generic Timeout.
- Secret values are stripped of surrounding whitespace (`echo key | base64` adds a newline);
  a value with control characters cannot go in a header and is InvalidConfiguration.
- Errors while reading Secrets propagate: they are the operator's trouble (API down), not
  the connection's, and must not be written into its status. So do errors while minting a
  spec.identity token, except the answers about the connection (`llmconn.validation.identity`).
- Every secret a validation holds (a Secret's value, the token minted for spec.identity, the
  credentials a cloud exchanged it for) is registered once (`_Held`): kept by this call
  only, redacted from logs while it runs and from the verdict. The exchange and the probe
  share the timeout.

Its length: it is the one place where a probe's budget, secrets and failures are handled for
every provider, as blackbox_exporter's prober handler is; each step is a short function.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from llmconn.model import logs, redact
from llmconn.model.credentials import AwsCredentials, BearerToken, OAuthClientSecrets
from llmconn.model.fields import SecretKeyRef
from llmconn.model.limits import (
    MAX_CA_BUNDLE_BYTES,
    MAX_CA_CERTIFICATES,
    MAX_CONNECTION_SECRET_BYTES,
    MAX_CREDENTIAL_BYTES,
    MAX_PRIVATE_KEY_PEM_BYTES,
    MAX_RSA_BITS,
    too_large,
)
from llmconn.model.reasons import Reason
from llmconn.model.redact import Redactor
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.model.text import printable
from llmconn.model.verdict import (
    Defaults,
    Effective,
    ObservedSecret,
    SecretData,
    SecretSource,
    TokenSource,
    Verdict,
    effective,
)
from llmconn.net.guard import Phase
from llmconn.net.pool import ClientPool, InvalidCABundle, TLSOptions
from llmconn.probes import oauth_client, registry
from llmconn.probes.base import Findings, ProbeContext, ProbeOutcome
from llmconn.validation import identity
from llmconn.validation.classify import classify_exception

log = logging.getLogger(__name__)

# Phases whose time is reported in status.details, as <phase>Ms.
TIMED_PHASES = (Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.RESPONSE)
# Provider text (messages, codes, details) is cut to this before redaction, so that a
# megabyte error body costs neither redaction time nor log volume; status.py cuts further.
MAX_TEXT = 4096


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def validate(
    spec: LLMConnectionSpec,
    secrets: SecretSource,
    pool: ClientPool,
    defaults: Defaults,
    *,
    tokens: TokenSource | None = None,
    now: Callable[[], dt.datetime] = _utcnow,
) -> Verdict:
    """Validate one connection. Never raises for anything the connection or its provider
    does; see the module docstring for what propagates. `tokens` mints the ServiceAccount
    tokens of spec.identity (the operator's; None where there is no cluster)."""
    settings = effective(spec, defaults)
    info = registry.get(spec.provider)
    endpoint = info.base_url(spec.endpoint, spec)
    # Every secret value this validation holds: redacted from the verdict, and from log
    # records until it ends (the probe adds what it makes to ctx.found.secrets).
    held = _Held()

    def finish(
        outcome: ProbeOutcome,
        used: _UsedSecrets | None = None,
        ctx: ProbeContext | None = None,
        latency_ms: int | None = None,
        found: Findings | None = None,
    ) -> Verdict:
        # The held values' forms as made when they were added (the cache of forms may have
        # let them go since, with many large values in flight: none is made again here).
        redactor = Redactor(ctx.found.secrets if ctx is not None else (), parts=held.parts)
        details = dict(outcome.details)
        found = ctx.found if ctx is not None else found
        if found is not None:
            # The probe's own facts first: status keeps only the first entries.
            merged = {**_phase_details(found.phase_ms), **found.details, **details}
            details = {k: merged[k] for k in dict.fromkeys([*details, *merged])}

        def shown(text: str) -> str:  # redacted, then printable (text.py)
            return printable(redactor.text(text[:MAX_TEXT]))

        return Verdict(
            reason=outcome.reason,
            message=shown(outcome.message),
            provider=spec.provider,
            endpoint=_without_credentials(endpoint),
            model=spec.model or (spec.azure.deployment if spec.azure else None),
            validation=settings,
            finished_at=now(),
            http_status=outcome.http_status,
            code=shown(outcome.code) if outcome.code is not None else None,
            latency_ms=latency_ms,
            request_id=shown(found.request_id)
            if found is not None and found.request_id is not None
            else None,
            details={shown(k): shown(v) for k, v in details.items()},
            retry_after=outcome.retry_after,
            observed_secrets=used.observed if used is not None else (),
            lifecycle=outcome.lifecycle,
        )

    if (refused := _refuse_config(spec, settings, defaults, info.inference)) is not None:
        return finish(refused)

    with held:
        used = await _read_secrets(spec, secrets, key_secrets=info.key_secrets)
        await _prepare_redaction(used.credentials)
        held.add(used.credentials)
        if used.failure is not None:
            return finish(used.failure, used)

        found, creds, deadline = Findings(), None, None
        if spec.identity is not None:
            minted = await identity.mint(spec.identity, tokens)
            if isinstance(minted, ProbeOutcome):
                return finish(minted, used)
            held.add([minted.token])
            # One budget for the token exchange and the probe.
            deadline = asyncio.get_running_loop().time() + settings.timeout
            async with pool.lease() as plain:  # the system's trust roots: the cloud's
                got, found = await identity.exchange(
                    plain,
                    info,
                    spec.identity,
                    minted,
                    defaults.clouds,
                    deadline=deadline,
                    timeout=settings.timeout,
                    validation_type=settings.type,
                )
            if isinstance(got, ProbeOutcome):
                return finish(got, used, found=found)
            creds = got
            held.add(creds.secrets())
        aws = creds if isinstance(creds, AwsCredentials) else used.aws_credentials

        tls = TLSOptions(
            ca_bundle=used.ca_bundle, insecure_skip_verify=spec.tls.insecure_skip_verify
        )
        try:
            async with pool.lease(tls) as client:
                ctx = ProbeContext(
                    provider=info,
                    endpoint=endpoint,
                    validation_type=settings.type,
                    http=client,
                    timeout=settings.timeout,
                    model=spec.model,
                    api_key=used.api_key,
                    api_key_ref=spec.api_key_secret_ref,
                    headers={**spec.headers, **used.headers},
                    azure=spec.azure,
                    mcp=spec.mcp,
                    bedrock=spec.bedrock,
                    aws_credentials=aws,
                    aws_credentials_ref=spec.aws_credentials_secret_ref,
                    vertex_ai=spec.vertex_ai,
                    bearer_token=creds if isinstance(creds, BearerToken) else None,
                    identity=spec.identity,
                    oauth=spec.oauth,
                    oauth_secrets=used.oauth_secrets,
                    mint=(
                        identity.oauth_minter(
                            spec.oauth.service_account.service_account_name, tokens
                        )
                        if spec.oauth is not None and spec.oauth.service_account is not None
                        else None
                    ),
                    found=Findings(details=dict(found.details)),
                )
                outcome, latency_ms = await _run(ctx, deadline)
        except InvalidCABundle as exc:  # raised only while making the client: no probe ran
            ref = spec.tls.ca_bundle_secret_ref
            where = f"key {ref.key} of Secret {ref.name}" if ref else "the CA bundle"
            return finish(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION, f"spec.tls.caBundleSecretRef: {where} is {exc}."
                ),
                used,
            )
        return finish(outcome, used, ctx, latency_ms)


# --- before the probe ------------------------------------------------------------------


def _refuse_config(
    spec: LLMConnectionSpec, settings: Effective, defaults: Defaults, supports_inference: bool
) -> ProbeOutcome | None:
    if settings.type is not ValidationType.INFERENCE:
        return None
    if defaults.inference_min_interval is None:
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            "Inference validation is disabled by the operator; "
            "use spec.validation.type Model or Connectivity.",
        )
    if not supports_inference:
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"Provider {spec.provider} does not support Inference validation; "
            "use spec.validation.type Model or Connectivity.",
        )
    return None


# Values longer than this have their redaction forms made in a worker thread (once per value:
# redact.part caches them), not on the event loop.
OFF_LOOP_CHARS = 1024


async def _prepare_redaction(values: Iterable[str]) -> None:
    large = [v for v in values if len(v) > OFF_LOOP_CHARS and not redact.cached(v)]
    if large:
        await asyncio.to_thread(lambda: [redact.part(v) for v in large])


class _Held:
    """The secret values one validation holds, whatever gave them: its Secrets, the token
    minted for spec.identity, the credentials the cloud exchanged it for. Each is hidden from
    every log record from when it is added until the validation ends (`with`), and the
    verdict is redacted of all of them: one registration for every source."""

    def __init__(self) -> None:
        self.parts: list[redact.Part] = []  # the values' forms, held while the validation runs
        self._stack = contextlib.ExitStack()

    def add(self, values: Iterable[str]) -> None:
        self.parts += self._stack.enter_context(logs.in_use([v for v in values if v]))

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()


@dataclass
class _UsedSecrets:
    observed: tuple[ObservedSecret, ...] = ()
    failure: ProbeOutcome | None = None
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ca_bundle: bytes | None = None
    aws: dict[str, str] = field(default_factory=dict)  # the AwsCredentials field -> value
    key_secrets: tuple[str, ...] | None = None  # the secret parts of a credentials file
    oauth: dict[str, str] = field(default_factory=dict)  # OAuthClientSecrets field -> value

    @property
    def oauth_secrets(self) -> OAuthClientSecrets | None:
        return OAuthClientSecrets(**self.oauth) if self.oauth else None

    @property
    def aws_credentials(self) -> AwsCredentials | None:
        return AwsCredentials(**self.aws) if self.aws else None

    @property
    def credentials(self) -> list[str]:
        """The values to redact: the CA bundle is public trust material, not a credential;
        every part of AWS credentials is (the access key id included); of a credentials file
        only its secret parts are."""
        key = self.key_secrets if self.key_secrets is not None else (self.api_key,)
        oauth = self.oauth_secrets.secrets() if self.oauth_secrets is not None else ()
        return [v for v in (*key, *self.headers.values(), *self.aws.values(), *oauth) if v]


@dataclass(frozen=True)
class _Ref:
    where: str  # the spec field, for messages
    ref: SecretKeyRef
    header: str | None = None  # the request header it fills, for headersFromSecret
    ca_bundle: bool = False
    aws: str | None = None  # the AwsCredentials field it fills, for awsCredentialsSecretRef
    oauth: str | None = None  # the OAuthClientSecrets field it fills, for spec.oauth


def _refs(spec: LLMConnectionSpec) -> Iterator[_Ref]:
    """Every Secret key the probe reads, with the spec field that names it."""
    if spec.api_key_secret_ref:
        yield _Ref("spec.apiKeySecretRef", spec.api_key_secret_ref)
    if (aws := spec.aws_credentials_secret_ref) is not None:
        fields = ("access_key_id", "secret_access_key", "session_token")
        for ref, name in zip(aws.refs, fields, strict=False):
            yield _Ref("spec.awsCredentialsSecretRef", ref, aws=name)
    if spec.oauth is not None and (cc := spec.oauth.client_credentials) is not None:
        where = "spec.oauth.clientCredentials"
        id_ref, secret_ref = cc.refs
        yield _Ref(where, id_ref, oauth="client_id")
        yield _Ref(where, secret_ref, oauth="client_secret")
    if spec.oauth is not None and (pk := spec.oauth.private_key_jwt) is not None:
        yield _Ref("spec.oauth.privateKeyJWT", pk.refs[0], oauth="private_key")
    for i, header in enumerate(spec.headers_from_secret):
        yield _Ref(f"spec.headersFromSecret[{i}]", header.secret_key_ref, header=header.name)
    if spec.tls.ca_bundle_secret_ref:
        yield _Ref("spec.tls.caBundleSecretRef", spec.tls.ca_bundle_secret_ref, ca_bundle=True)


async def _read_secrets(
    spec: LLMConnectionSpec,
    source: SecretSource,
    *,
    key_secrets: Callable[[str], Sequence[str]] | None = None,
) -> _UsedSecrets:
    found: dict[str, SecretData | None] = {}
    observed: list[ObservedSecret] = []
    values: list[tuple[_Ref, bytes]] = []
    failure: ProbeOutcome | None = None
    for use in _refs(spec):
        name, key = use.ref.name, use.ref.key
        if name not in found:
            found[name] = data = await source.get(name)
            if data is not None:
                observed.append(ObservedSecret(name, data.resource_version))
        data = found[name]
        value = data.data.get(key) if data is not None else None
        if failure is not None:
            continue
        if data is None:
            failure = ProbeOutcome(
                Reason.SECRET_NOT_FOUND,
                f"Secret {name} ({use.where}) does not exist in the connection's namespace.",
            )
        elif value is None:
            keys = ", ".join(sorted(data.data)[:10]) or "none"
            failure = ProbeOutcome(
                Reason.SECRET_KEY_NOT_FOUND,
                f"Secret {name} has no key {key} ({use.where}); its keys: {keys}.",
            )
        else:
            values.append((use, value))
    used = _UsedSecrets(observed=tuple(observed), failure=failure)
    if failure is not None:
        return used
    # Sizes first, before any value is decoded, parsed or handed to the redactor.
    total = 0
    for use, value in values:
        field = f"Key {use.ref.key} of Secret {use.ref.name} ({use.where})"
        if use.ca_bundle:
            certificates = value.count(b"-----BEGIN ")
            if len(value) > MAX_CA_BUNDLE_BYTES:
                used.failure = _too_large(field, len(value), MAX_CA_BUNDLE_BYTES)
            elif certificates > MAX_CA_CERTIFICATES:
                used.failure = _too_large(
                    field, certificates, MAX_CA_CERTIFICATES, "PEM blocks", " in a CA bundle"
                )
        elif use.oauth == "private_key" and len(value) > MAX_PRIVATE_KEY_PEM_BYTES:
            # As a service-account key's: before any discovery, load or check of it.
            used.failure = _too_large(
                field,
                len(value),
                MAX_PRIVATE_KEY_PEM_BYTES,
                why=f" of PEM (an RSA key of {MAX_RSA_BITS} bits or fewer, or an EC P-256 key)",
            )
        elif len(value) > MAX_CREDENTIAL_BYTES:
            used.failure = _too_large(
                field,
                len(value),
                MAX_CREDENTIAL_BYTES,
                why=" for a key, header value or credentials file",
            )
        else:
            total += len(value)
        if used.failure is not None:
            return used
    if total > MAX_CONNECTION_SECRET_BYTES:
        used.failure = _too_large(
            "The Secret values this connection uses",
            total,
            MAX_CONNECTION_SECRET_BYTES,
            why=" for all of them together",
        )
        return used
    for use, value in values:
        if use.ca_bundle:
            used.ca_bundle = value
            continue
        plain = use.header is None and use.aws is None and use.oauth is None
        key_file = (key_secrets is not None and plain) or use.oauth == "private_key"
        text = _file_text(value) if key_file else _header_text(value)
        if text is None:
            cannot = (
                "is empty or not UTF-8 text"
                if key_file
                else "is empty or holds characters that cannot go in an HTTP header (control "
                "characters, non-ASCII)"
            )
            used.failure = ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"Key {use.ref.key} of Secret {use.ref.name} ({use.where}) {cannot}.",
            )
            return used
        if use.oauth is not None:
            used.oauth[use.oauth] = text
        elif use.aws is not None:
            used.aws[use.aws] = text
        elif use.header is None:
            used.api_key = text
            if key_secrets is not None:
                used.key_secrets = tuple(key_secrets(text))
        else:
            used.headers[use.header] = text
    return used


def _too_large(
    field: str, size: int, limit: int, unit: str = "bytes", why: str = ""
) -> ProbeOutcome:
    return ProbeOutcome(Reason.INVALID_CONFIGURATION, too_large(field, size, limit, unit, why))


def _file_text(value: bytes) -> str | None:
    """A credentials file (JSON, several lines) or a plain key: UTF-8 text, no NUL."""
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text if text and "\x00" not in text else None


def _header_text(value: bytes) -> str | None:
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if not text or _NOT_IN_HEADER.search(text):
        return None
    return text


_NOT_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab (RFC 9110 5.5)


# --- the probe -------------------------------------------------------------------------


async def _run(ctx: ProbeContext, deadline: float | None) -> tuple[ProbeOutcome, int]:
    """The probe, by `deadline` (the loop's time), else within ctx.timeout from now."""
    started = time.perf_counter()
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + ctx.timeout
    try:
        async with asyncio.timeout_at(deadline):
            if ctx.oauth is not None:  # the access token first, then the probe with it
                outcome = await oauth_client.probe(ctx)
            else:
                outcome = await ctx.provider.probe(ctx)
    except Exception as exc:  # classified here, once, for every probe
        outcome = classify_exception(exc, ctx)
    latency_ms = round((time.perf_counter() - started) * 1000)
    if ctx.oauth is None and outcome.reason is Reason.INVALID_API_KEY:
        # An OAuth challenge: which spec.oauth form would work (in what is left of the time).
        outcome = await oauth_client.advise(ctx, outcome, deadline)
    return outcome, latency_ms


def _phase_details(phase_ms: Mapping[Phase, float]) -> dict[str, str]:
    timings = {p: phase_ms[p] for p in TIMED_PHASES if p in phase_ms}
    if Phase.CONNECT in timings and Phase.DNS in timings:
        # The connect trace spans the lookup: the backend resolves inside connect_tcp.
        timings[Phase.CONNECT] = max(0.0, timings[Phase.CONNECT] - timings[Phase.DNS])
    return {f"{p.value}Ms": str(round(ms)) for p, ms in timings.items()}


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
