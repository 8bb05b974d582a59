"""validate(): Secrets, the time budget, failure classification by phase, TLS, egress, redaction.

Every provider here is a real loopback server on a raw socket (tests/servers/misbehaving.py)
or the OpenAI-dialect app. Transport-level behaviour is probed with a small provider
registered for the test (`checker`, GET {endpoint}/check); answers that are not the API
are probed with the real openai-compatible provider.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from llmconn.model import redact
from llmconn.model.limits import MAX_CREDENTIAL_BYTES
from llmconn.model.reasons import Reason, Result
from llmconn.model.status import LATEST_PROBE_KEYS, rfc3339, status_fields
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.guard import DNSLookupError, EgressDenied
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec, registry
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok
from llmconn.probes.errors import classify_error
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.misbehaving import (
    Huge,
    RawServer,
    TLSFiles,
    answer,
    by_path,
    hang,
    make_tls,
    redirect,
    trickle,
)

KEY = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
OK_BODY = '{"ok": true}'


class Secrets:
    """A SecretSource over a dict: name -> {key: value}."""

    def __init__(self, secrets: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        self.secrets = {
            name: SecretData(dict(data), resource_version=str(i))
            for i, (name, data) in enumerate((secrets or {}).items(), start=100)
        }
        self.asked: list[str] = []

    async def get(self, name: str) -> SecretData | None:
        self.asked.append(name)
        return self.secrets.get(name)


WITH_KEY = Secrets({"creds": {"apiKey": KEY.encode()}})

# --- a provider for transport-level tests --------------------------------------------------

RAISE: list[BaseException] = []  # an exception the checker raises instead of probing


async def _check(ctx: ProbeContext) -> ProbeOutcome:
    if RAISE:
        raise RAISE.pop()
    reply = await ctx.request("GET", "/check")
    if reply.status != 200:
        return classify_error(ctx, reply, "the check")
    return ok("The check passed.", reply)


@pytest.fixture(autouse=True)
def checker() -> Iterator[str]:
    """Provider "checker" (x-api-key auth, which httpx would forward on a redirect)."""
    with registry.temporary() as providers:
        providers.provider("checker", default_endpoint=None, auth=Auth.X_API_KEY, title="Test")(
            _check
        )
        providers.provider(
            "checker-no-inference", default_endpoint=None, title="Test", inference=False
        )(_check)
        RAISE.clear()
        yield "checker"


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    yield clients
    await clients.aclose()


def spec_for(endpoint: str, **extra: Any) -> Any:
    raw: dict[str, Any] = {
        "provider": "checker",
        "endpoint": endpoint,
        "apiKeySecretRef": {"name": "creds"},
        # Generous, so that no test that expects an answer fails on a loaded machine; tests of
        # the time budget give a short one themselves (SHORT).
        "validation": {"timeout": "30s"},
    }
    raw.update(extra)
    return parse_spec(raw)


DEFAULTS = Defaults()
SHORT = {"timeout": "500ms"}  # for tests that wait out the budget
NOW = dt.datetime(2026, 11, 22, 10, 30, 0, 123456, tzinfo=dt.UTC)


async def check(
    endpoint: str,
    pool: ClientPool,
    secrets: Secrets = WITH_KEY,
    defaults: Defaults = DEFAULTS,
    **extra: Any,
) -> Any:
    return await validate(spec_for(endpoint, **extra), secrets, pool, defaults, now=lambda: NOW)


# --- success and status ------------------------------------------------------------------


async def test_a_good_answer_validates_with_latency_phases_and_observed_secrets(
    pool: ClientPool,
) -> None:
    async with RawServer(answer(200, OK_BODY, headers={"x-request-id": "req-1"})) as server:
        verdict = await check(server.url, pool)
    assert verdict.reason is Reason.VALIDATED
    assert verdict.result is Result.SUCCESS
    assert isinstance(verdict.latency_ms, int)
    assert verdict.request_id == "req-1"
    assert verdict.endpoint == server.url
    assert "connectMs" in verdict.details and "responseMs" in verdict.details
    assert [s.name for s in verdict.observed_secrets] == ["creds"]
    assert server.requests[0].headers["x-api-key"] == KEY

    status = status_fields(verdict)
    assert status["result"] == "success"
    assert status["latencyMs"] == verdict.latency_ms
    assert status["lastValidationTime"] == "2026-11-22T10:30:00.123Z"
    assert status["observedSecrets"] == [{"name": "creds", "resourceVersion": "100"}]
    assert status["validation"] == {
        "type": "Connectivity",
        "interval": "5m",
        "timeout": "30s",
        "failureThreshold": 3,
    }
    assert "code" not in status and "model" not in status  # None stays out
    assert set(status) <= set(LATEST_PROBE_KEYS)


def test_rfc3339_is_utc_with_milliseconds() -> None:
    east = dt.timezone(dt.timedelta(hours=2))
    assert rfc3339(dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=east)) == (
        "2026-01-02T01:04:05.006Z"
    )


async def test_the_secret_value_is_stripped_of_a_trailing_newline(pool: ClientPool) -> None:
    secrets = Secrets({"creds": {"apiKey": KEY.encode() + b"\n"}})
    async with RawServer(answer(200, OK_BODY)) as server:
        verdict = await check(server.url, pool, secrets)
    assert verdict.reason is Reason.VALIDATED
    assert server.requests[0].headers["x-api-key"] == KEY


async def test_headers_from_secrets_are_sent_and_redacted(pool: ClientPool) -> None:
    token = "gw-token-0123456789abcdef"
    secrets = Secrets({"creds": {"apiKey": KEY.encode()}, "gw": {"token": token.encode()}})
    echo = json.dumps({"error": {"message": f"token {token} expired", "type": "auth"}})
    async with RawServer(answer(403, echo, headers={"x-request-id": token})) as server:
        verdict = await check(
            server.url,
            pool,
            secrets,
            headers={"X-Team": "agents"},
            headersFromSecret=[
                {"name": "X-Gateway-Token", "secretKeyRef": {"name": "gw", "key": "token"}}
            ],
        )
    sent = server.requests[0].headers
    assert sent["x-gateway-token"] == token and sent["x-team"] == "agents"
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert token not in json.dumps(status_fields(verdict))
    assert "[REDACTED]" in verdict.message and verdict.request_id == "[REDACTED]"
    assert [s.name for s in verdict.observed_secrets] == ["creds", "gw"]


async def test_a_key_echoed_by_the_provider_is_redacted_everywhere(pool: ClientPool) -> None:
    body = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {KEY}", "code": KEY[:20] + "..."}}
    )
    async with RawServer(answer(401, body, headers={"x-ratelimit-remaining-requests": KEY})) as s:
        verdict = await check(s.url, pool)
    assert verdict.reason is Reason.INVALID_API_KEY
    stored = json.dumps(status_fields(verdict))
    assert KEY not in stored
    assert KEY[:12] not in stored
    assert "Incorrect API key provided: [REDACTED]" in verdict.message
    assert verdict.details["rateLimitRemainingRequests"] == "[REDACTED]"


async def test_the_verdict_redacts_with_the_forms_made_when_the_key_was_read(
    pool: ClientPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many large values in flight the cache of forms lets a key's go while its probe
    runs: the verdict is redacted with the forms held since the key was read, none made again
    on the event loop."""
    monkeypatch.setattr(redact, "CACHED", 0)  # the cache keeps only its latest value
    made: list[str] = []
    real = redact.Part

    class Counted(real):  # type: ignore[misc,valid-type]
        def __init__(self, value: str) -> None:
            made.append(value)
            super().__init__(value)

    monkeypatch.setattr(redact, "Part", Counted)
    redact.part("a value that leaves only itself cached")  # earlier tests' KEY goes
    made.clear()

    async def evicting(ctx: ProbeContext) -> ProbeOutcome:
        redact.part("another tenant's value, read meanwhile")  # KEY's forms leave the cache
        assert not redact.cached(KEY)
        return await _check(ctx)

    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})
    with registry.temporary() as providers:
        providers.provider("evicting", default_endpoint=None, auth=Auth.X_API_KEY, title="T")(
            evicting
        )
        async with RawServer(answer(401, body)) as s:
            verdict = await check(s.url, pool, provider="evicting")
    assert "Incorrect API key provided: [REDACTED]" in verdict.message
    assert made.count(KEY) == 1


# --- Secrets -------------------------------------------------------------------------------


async def test_a_missing_secret_is_a_verdict_without_a_probe(pool: ClientPool) -> None:
    async with RawServer(answer(200, OK_BODY)) as server:
        verdict = await check(server.url, pool, Secrets())
    assert verdict.reason is Reason.SECRET_NOT_FOUND
    assert "Secret creds" in verdict.message and "spec.apiKeySecretRef" in verdict.message
    assert verdict.latency_ms is None
    assert server.connections == 0
    assert "latencyMs" not in status_fields(verdict)


async def test_a_missing_key_names_the_secret_the_key_and_the_keys_there(
    pool: ClientPool,
) -> None:
    secrets = Secrets({"creds": {"api-key": b"x" * 20, "other": b"y"}})
    async with RawServer(answer(200, OK_BODY)) as server:
        verdict = await check(server.url, pool, secrets)
    assert verdict.reason is Reason.SECRET_KEY_NOT_FOUND
    assert verdict.message == (
        "Secret creds has no key apiKey (spec.apiKeySecretRef); its keys: api-key, other."
    )
    assert server.connections == 0
    assert [s.name for s in verdict.observed_secrets] == ["creds"]


async def test_a_missing_header_secret_names_the_header_field(pool: ClientPool) -> None:
    verdict = await check(
        "http://127.0.0.1:9",
        pool,
        headersFromSecret=[{"name": "X-Token", "secretKeyRef": {"name": "gw", "key": "t"}}],
    )
    assert verdict.reason is Reason.SECRET_NOT_FOUND
    assert "spec.headersFromSecret[0]" in verdict.message


async def test_each_secret_is_read_once(pool: ClientPool) -> None:
    secrets = Secrets({"creds": {"apiKey": KEY.encode(), "token": b"tok-0123456789"}})
    async with RawServer(answer(200, OK_BODY)) as server:
        await check(
            server.url,
            pool,
            secrets,
            headersFromSecret=[{"name": "X-T", "secretKeyRef": {"name": "creds", "key": "token"}}],
        )
    assert secrets.asked == ["creds"]


async def test_a_secret_value_that_cannot_be_a_header_is_invalid_configuration(
    pool: ClientPool,
) -> None:
    for bad in (b"sk-abc\r\nX-Injected: 1", b"   ", "clé".encode()):
        verdict = await check("http://127.0.0.1:9", pool, Secrets({"creds": {"apiKey": bad}}))
        assert verdict.reason is Reason.INVALID_CONFIGURATION
        assert "Key apiKey of Secret creds" in verdict.message


async def test_a_secret_value_too_long_for_a_credential_is_refused_before_any_call(
    pool: ClientPool,
) -> None:
    huge = Secrets({"creds": {"apiKey": b"k" * (16 * 1024 + 1)}})
    verdict = await check("http://127.0.0.1:9", pool, huge)
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert (
        "Key apiKey of Secret creds" in verdict.message
        and "the limit is 16384 bytes" in verdict.message
    )
    assert "kkkk" not in verdict.message


@pytest.mark.parametrize("where", ["apiKeySecretRef", "headersFromSecret"])
async def test_the_credential_cap_is_16_kib_exactly_for_keys_and_secret_headers(
    pool: ClientPool, where: str
) -> None:
    # The documented cap (docs/security.md): 16,384 bytes pass, one more is refused before
    # any request, for a key and for a header value from a Secret alike.
    extra: dict[str, Any] = {}
    if where == "headersFromSecret":
        extra["headersFromSecret"] = [
            {"name": "X-Gateway-Token", "secretKeyRef": {"name": "gw", "key": "token"}}
        ]
    for size, refused in ((MAX_CREDENTIAL_BYTES, False), (MAX_CREDENTIAL_BYTES + 1, True)):
        value = b"k" * size
        data = {"creds": {"apiKey": b"sk-small" if where == "headersFromSecret" else value}}
        if where == "headersFromSecret":
            data["gw"] = {"token": value}
        async with RawServer(answer(200, OK_BODY)) as server:
            verdict = await check(server.url, pool, Secrets(data), **extra)
        if refused:
            assert verdict.reason is Reason.INVALID_CONFIGURATION, verdict.message
            assert "the limit is 16384 bytes" in verdict.message
            assert server.connections == 0
        else:
            assert "16384 bytes" not in verdict.message, verdict.message
            assert server.connections == 1


# --- configuration refused before any call ---------------------------------------------------


async def test_inference_disabled_by_the_operator_is_refused(pool: ClientPool) -> None:
    async with RawServer(answer(200, OK_BODY)) as server:
        verdict = await check(
            server.url,
            pool,
            defaults=Defaults(inference_min_interval=None),
            model="m",
            validation={"type": "Inference"},
        )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "Inference validation is disabled by the operator" in verdict.message
    assert server.connections == 0 and verdict.latency_ms is None


async def test_inference_on_a_provider_without_it_is_refused(pool: ClientPool) -> None:
    verdict = await check(
        "http://127.0.0.1:9",
        pool,
        provider="checker-no-inference",
        model="m",
        validation={"type": "Inference"},
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "does not support Inference" in verdict.message


# --- time budget, by phase ---------------------------------------------------------------------


async def test_a_server_that_never_answers_is_a_timeout(pool: ClientPool) -> None:
    async with RawServer(hang()) as server:
        verdict = await check(server.url, pool, validation=SHORT)
    assert verdict.reason is Reason.TIMEOUT
    assert "within 500ms" in verdict.message
    assert isinstance(verdict.latency_ms, int)


async def test_a_trickling_answer_is_a_timeout(pool: ClientPool) -> None:
    async with RawServer(trickle(every=0.05)) as server:
        verdict = await check(server.url, pool, validation=SHORT)
    assert verdict.reason is Reason.TIMEOUT
    assert (
        verdict.message
        == "No complete answer from 127.0.0.1 within 500ms (spec.validation.timeout)."
    )


async def test_a_tls_handshake_that_never_completes_is_a_tls_error(pool: ClientPool) -> None:
    async with RawServer(hang()) as server:  # plain TCP: the ClientHello is never answered
        verdict = await check(server.url.replace("http://", "https://"), pool, validation=SHORT)
    assert verdict.reason is Reason.TLS_ERROR
    assert "handshake" in verdict.message and "within 500ms" in verdict.message


async def test_a_lookup_that_never_answers_is_a_dns_failure() -> None:
    async def never(host: str, port: int) -> Sequence[str]:
        await asyncio.Event().wait()
        return []

    pool = ClientPool(EgressPolicy(), resolver=never, proxies={})
    verdict = await check("http://api.slow-dns.test", pool, validation=SHORT)
    await pool.aclose()
    assert verdict.reason is Reason.DNS_FAILURE
    assert verdict.message == "The lookup of api.slow-dns.test did not answer within 500ms."


async def test_a_name_that_does_not_exist_is_a_dns_failure(pool: ClientPool) -> None:
    verdict = await check("http://no-such-provider.invalid/v1", pool)
    assert verdict.reason is Reason.DNS_FAILURE
    assert "no-such-provider.invalid" in verdict.message


async def test_a_refused_port_is_connection_failed(pool: ClientPool) -> None:
    async with RawServer(answer()) as server:
        port = server.port
    verdict = await check(f"http://127.0.0.1:{port}", pool)
    assert verdict.reason is Reason.CONNECTION_FAILED
    assert verdict.message == f"Could not connect to 127.0.0.1:{port} (connection refused)."


async def test_a_server_that_closes_without_answering_is_connection_failed(
    pool: ClientPool,
) -> None:
    async def close(head: Any, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with RawServer(close) as server:
        verdict = await check(server.url, pool)
    assert verdict.reason is Reason.CONNECTION_FAILED
    assert "broke" in verdict.message


async def test_a_server_that_does_not_speak_http_is_unexpected(pool: ClientPool) -> None:
    async def ssh(head: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    async with RawServer(ssh) as server:
        verdict = await check(server.url, pool)
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert "did not answer in HTTP" in verdict.message


# --- answers that are not the API (real openai-compatible provider) --------------------------


async def compatible(url: str, pool: ClientPool) -> Any:
    spec = parse_spec(
        {
            "provider": "openai-compatible",
            "endpoint": url + "/v1",
            "apiKeySecretRef": {"name": "creds"},
            "validation": {"timeout": "2s"},
        }
    )
    return await validate(spec, WITH_KEY, pool, Defaults())


async def test_an_html_page_with_200_is_unexpected(pool: ClientPool) -> None:
    page = "<!doctype html><html><body>Sign in</body></html>"
    async with RawServer(answer(200, page, "text/html")) as server:
        verdict = await compatible(server.url, pool)
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert verdict.http_status == 200


async def test_invalid_json_with_200_is_unexpected(pool: ClientPool) -> None:
    async with RawServer(answer(200, '{"object": "list", "data": [')) as server:
        verdict = await compatible(server.url, pool)
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE


async def test_an_error_body_sent_with_200_is_classified_as_that_error(pool: ClientPool) -> None:
    flat = {"object": "error", "message": "Invalid API key", "type": "Unauthorized", "code": 401}
    async with RawServer(answer(200, json.dumps(flat))) as server:
        verdict = await compatible(server.url, pool)
    assert verdict.reason is Reason.INVALID_API_KEY


async def test_a_huge_body_is_refused_without_reading_it_all(pool: ClientPool) -> None:
    huge = Huge()
    async with RawServer(huge) as server:
        verdict = await check(server.url, pool, validation={"timeout": "5s"})
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert "larger than" in verdict.message
    assert not huge.finished
    assert huge.sent < huge.total


# --- redirects -------------------------------------------------------------------------------


async def test_an_off_site_redirect_is_not_followed_and_the_key_stays_home(
    pool: ClientPool,
) -> None:
    async with RawServer(answer(200, OK_BODY)) as elsewhere:
        target = f"http://localhost:{elsewhere.port}/check"
        async with RawServer(redirect(target, 307)) as server:
            verdict = await check(server.url, pool)
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert "redirected" in verdict.message and "localhost" in verdict.message
    assert server.requests[0].headers["x-api-key"] == KEY
    assert elsewhere.requests == []  # not even a request without the key
    assert elsewhere.connections == 0


async def test_a_same_origin_redirect_is_followed(pool: ClientPool) -> None:
    behaviour = by_path({"/check": redirect("/moved/check", 301), "/moved/check": answer(200)})
    async with RawServer(behaviour) as server:
        verdict = await check(server.url, pool)
    assert verdict.reason is Reason.VALIDATED
    assert [r.target for r in server.requests] == ["/check", "/moved/check"]
    assert all(r.headers["x-api-key"] == KEY for r in server.requests)


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


async def test_a_private_ca_is_a_tls_error_that_names_the_fix(
    pool: ClientPool, tls: TLSFiles
) -> None:
    async with RawServer(answer(200, OK_BODY), tls=tls.server_context()) as server:
        verdict = await check(server.url, pool)
    assert verdict.reason is Reason.TLS_ERROR
    assert "spec.tls.caBundleSecretRef" in verdict.message
    assert "unable to get local issuer certificate" in verdict.message
    assert server.requests == []


async def test_the_ca_bundle_from_a_secret_is_trusted(pool: ClientPool, tls: TLSFiles) -> None:
    secrets = Secrets({"creds": {"apiKey": KEY.encode()}, "corp-ca": {"ca.crt": tls.ca_pem}})
    async with RawServer(answer(200, OK_BODY), tls=tls.server_context()) as server:
        verdict = await check(
            server.url,
            pool,
            secrets,
            tls={"caBundleSecretRef": {"name": "corp-ca", "key": "ca.crt"}},
        )
    assert verdict.reason is Reason.VALIDATED
    assert "tlsMs" in verdict.details
    assert [s.name for s in verdict.observed_secrets] == ["creds", "corp-ca"]


async def test_insecure_skip_verify_accepts_any_certificate(
    pool: ClientPool, tls: TLSFiles
) -> None:
    async with RawServer(answer(200, OK_BODY), tls=tls.server_context()) as server:
        verdict = await check(server.url, pool, tls={"insecureSkipVerify": True})
    assert verdict.reason is Reason.VALIDATED


async def test_an_unusable_ca_bundle_is_invalid_configuration(pool: ClientPool) -> None:
    secrets = Secrets({"creds": {"apiKey": KEY.encode()}, "ca": {"ca.crt": b"not a cert"}})
    verdict = await check(
        "https://127.0.0.1:9",
        pool,
        secrets,
        tls={"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}},
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "key ca.crt of Secret ca is not a PEM certificate bundle" in verdict.message


async def test_the_certificate_is_checked_against_the_name_not_the_dialled_address(
    tmp_path: Path,
) -> None:
    named = make_tls(tmp_path, hosts=["api.corp.test"])

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    pool = ClientPool(EgressPolicy(), resolver=resolve, proxies={})
    secrets = Secrets({"creds": {"apiKey": KEY.encode()}, "ca": {"ca.crt": named.ca_pem}})
    ca = {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}
    async with RawServer(answer(200, OK_BODY), tls=named.server_context()) as server:
        good = await check(f"https://api.corp.test:{server.port}", pool, secrets, tls=ca)
        wrong = await check(f"https://other.corp.test:{server.port}", pool, secrets, tls=ca)
    await pool.aclose()
    assert good.reason is Reason.VALIDATED  # dialled 127.0.0.1, verified api.corp.test
    assert wrong.reason is Reason.TLS_ERROR
    assert "other.corp.test" in wrong.message


# --- egress ----------------------------------------------------------------------------------


async def test_the_metadata_address_is_egress_denied(pool: ClientPool) -> None:
    for endpoint in ("http://169.254.169.254/latest", "http://[::ffff:169.254.169.254]/"):
        verdict = await check(endpoint, pool)
        assert verdict.reason is Reason.EGRESS_DENIED
        assert "Nothing was sent" in verdict.message


async def test_a_name_mapped_to_the_metadata_address_is_egress_denied() -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["169.254.169.254"]

    pool = ClientPool(EgressPolicy(), resolver=resolve, proxies={})
    verdict = await check("http://metadata.corp.test", pool)
    await pool.aclose()
    assert verdict.reason is Reason.EGRESS_DENIED
    assert "metadata.corp.test (169.254.169.254) is in 169.254.0.0/16" in verdict.message


async def test_custom_deny_and_allow_rules_apply() -> None:
    async with RawServer(answer(200, OK_BODY)) as server:
        for policy, expected in (
            (EgressPolicy.from_strings(deny=["127.0.0.0/8"]), Reason.EGRESS_DENIED),
            (EgressPolicy.from_strings(allow=["10.0.0.0/8"]), Reason.EGRESS_DENIED),
            (EgressPolicy.from_strings(allow=["127.0.0.1"]), Reason.VALIDATED),
        ):
            pool = ClientPool(policy, resolver=loopback_only, proxies={})
            verdict = await check(server.url, pool)
            await pool.aclose()
            assert verdict.reason is expected, policy
    assert server.connections == 1  # only the allowed run reached it


# --- exceptions --------------------------------------------------------------------------------


async def test_an_unexpected_exception_is_a_verdict_naming_only_its_type(
    pool: ClientPool,
) -> None:
    RAISE.append(RuntimeError(f"boom with {KEY}"))
    verdict = await check("http://127.0.0.1:9", pool)
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE
    assert "RuntimeError" in verdict.message
    assert "boom" not in verdict.message
    assert isinstance(verdict.latency_ms, int)


async def test_exception_groups_are_unwrapped(pool: ClientPool) -> None:
    inner = ProbeFailure(ProbeOutcome(Reason.PROTOCOL_ERROR, "bad handshake"))
    RAISE.append(ExceptionGroup("task group", [ValueError("noise"), inner]))
    assert (await check("http://127.0.0.1:9", pool)).reason is Reason.PROTOCOL_ERROR
    RAISE.append(ExceptionGroup("g", [ExceptionGroup("h", [EgressDenied("h", None, "no")])]))
    assert (await check("http://127.0.0.1:9", pool)).reason is Reason.EGRESS_DENIED
    RAISE.append(ExceptionGroup("g", [DNSLookupError("h.test", "nope")]))
    assert (await check("http://127.0.0.1:9", pool)).reason is Reason.DNS_FAILURE


async def test_the_endpoint_is_stored_without_credentials(pool: ClientPool) -> None:
    async with RawServer(answer(200, OK_BODY)) as server:
        url = server.url.replace("http://", "http://user:pa55w0rd@")
        verdict = await check(url, pool)
    assert verdict.endpoint == server.url
    assert "pa55w0rd" not in json.dumps(status_fields(verdict))
