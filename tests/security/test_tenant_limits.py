"""One tenant cannot make the operator work for everyone: every input a tenant controls that
costs CPU or memory is bounded before the work (issue 23, item 1).

Each test is one attack: a key whose check would hold the interpreter's lock for a minute, a
key file nested too deep for the JSON parser, Secret values whose redaction would cost more
than the secrets, a CA bundle of a megabyte, a header set of 128 KiB. Each refusal is
InvalidConfiguration naming the field, the limit and the size, never the value; and the work
it guards (loading the key, building a TLS client, calling the endpoint) never happens.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keykit import ca_pem, rsa_pem
from llmconn.controller.memory import first_error
from llmconn.model import limits
from llmconn.model.credentials import ServiceAccountKey
from llmconn.model.reasons import Reason
from llmconn.model.verdict import Defaults, SecretData, Verdict
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import oauth_client, parse_spec
from llmconn.probes.base import ProbeFailure
from llmconn.probes.google_oauth import sign
from llmconn.validation.validate import validate
from netkit import loopback_only

CLOSED = "http://127.0.0.1:9"  # nothing listens: a probe that ran would say so


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    yield clients
    await clients.aclose()


class Secrets:
    def __init__(self, data: Mapping[str, bytes]) -> None:
        self.data = dict(data)

    async def get(self, name: str) -> SecretData | None:
        return SecretData(self.data, "1") if name == "creds" else None


def visible(verdict: Verdict) -> str:
    return json.dumps([verdict.message, verdict.code, dict(verdict.details)])


# --- RSA keys -------------------------------------------------------------------------------


def key_file(private_key: str, token_uri: str = f"{CLOSED}/token") -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": private_key,
            "client_email": "probe@p.iam.gserviceaccount.com",
            "token_uri": token_uri,
        }
    )


def account(private_key: str) -> ServiceAccountKey:
    return ServiceAccountKey(
        client_email="probe@p.iam.gserviceaccount.com",
        private_key=private_key,
        private_key_id="0123456789abcdef",
        token_uri=f"{CLOSED}/token",
    )


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every load of a private key, with its keyword arguments."""
    calls: list[dict[str, Any]] = []
    real = serialization.load_pem_private_key

    def spy(data: bytes, password: bytes | None, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(data, password, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", spy)
    return calls


def refusal(key: ServiceAccountKey) -> str:
    with pytest.raises(ProbeFailure) as info:
        sign(key, "scope", 0.0)
    assert info.value.outcome.reason is Reason.INVALID_CONFIGURATION
    return info.value.outcome.message


def test_a_16384_bit_key_is_refused_by_its_length_before_it_is_loaded(
    loads: list[dict[str, Any]],
) -> None:
    pem = rsa_pem(16384)
    assert limits.MAX_PRIVATE_KEY_PEM_BYTES < len(pem) < limits.MAX_CREDENTIAL_BYTES
    message = refusal(account(pem))
    assert f"is {len(pem)} bytes" in message
    assert f"the limit is {limits.MAX_PRIVATE_KEY_PEM_BYTES} bytes" in message
    assert '"private_key"' in message
    assert loads == []  # never handed to OpenSSL, whose check would take a minute


def test_a_key_over_4096_bits_is_refused_by_its_modulus_without_openssls_check(
    loads: list[dict[str, Any]],
) -> None:
    pem = rsa_pem(4600)
    assert len(pem) <= limits.MAX_PRIVATE_KEY_PEM_BYTES
    message = refusal(account(pem))
    assert "is 4600 bits" in message and f"the limit is {limits.MAX_RSA_BITS} bits" in message
    assert loads and all(call.get("unsafe_skip_rsa_key_validation") for call in loads)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_a_4096_bit_key_signs_and_no_key_is_checked_by_openssl(
    loads: list[dict[str, Any]],
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    assertion = sign(account(_pem(key)), "scope", 0.0)
    assert assertion.count(".") == 2
    assert loads and all(call.get("unsafe_skip_rsa_key_validation") for call in loads)


def test_a_key_whose_parts_make_no_key_is_refused_by_its_own_signature() -> None:
    """Without OpenSSL's check, the signature proves the key: one made with another key's
    private exponent does not verify with its public half."""
    one = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    mixed = rsa.RSAPrivateNumbers(
        p=one.p,
        q=one.q,
        d=other.d,
        dmp1=other.dmp1,
        dmq1=other.dmq1,
        iqmp=one.iqmp,
        public_numbers=one.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    assert "not an unencrypted RSA private key" in refusal(account(_pem(mixed)))


def vertex(**extra: Any) -> Any:
    return parse_spec(
        {
            "provider": "vertex-ai",
            "endpoint": CLOSED,
            "model": "gemini-2.5-flash",
            "apiKeySecretRef": {"name": "creds", "key": "key.json"},
            "vertexAI": {"project": "tenant-project", "location": "us-central1"},
            "validation": {"type": "Model", "timeout": "2s"},
            **extra,
        }
    )


async def test_a_vertex_key_file_with_a_16384_bit_key_is_a_verdict_naming_the_limit(
    pool: ClientPool, loads: list[dict[str, Any]]
) -> None:
    pem = rsa_pem(16384)
    verdict = await validate(
        vertex(), Secrets({"key.json": key_file(pem).encode()}), pool, Defaults()
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"the limit is {limits.MAX_PRIVATE_KEY_PEM_BYTES} bytes" in verdict.message
    body = "".join(pem.splitlines()[1:-1])
    text = visible(verdict)
    assert all(body[i : i + 12] not in text for i in range(0, len(body) - 12, 7))
    assert loads == []


# --- spec.oauth.privateKeyJWT keys: the same bounds as a service-account key's ---------------


def private_key_jwt(algorithm: str = "RS256") -> Any:
    return parse_spec(
        {
            "provider": "mcp",
            "endpoint": CLOSED + "/mcp",
            "oauth": {
                "privateKeyJWT": {
                    "clientId": "tenant",
                    "secretName": "creds",
                    "privateKeyKey": "key.pem",
                    "algorithm": algorithm,
                }
            },
            "validation": {"timeout": "2s"},
        }
    )


async def test_a_16384_bit_private_key_jwt_key_is_refused_before_discovery_or_any_load(
    pool: ClientPool, loads: list[dict[str, Any]]
) -> None:
    pem = rsa_pem(16384)
    verdict = await validate(
        private_key_jwt(), Secrets({"key.pem": pem.encode()}), pool, Defaults()
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION  # not a refused discovery
    assert "spec.oauth.privateKeyJWT" in verdict.message
    assert f"is {len(pem)} bytes" in verdict.message
    assert f"the limit is {limits.MAX_PRIVATE_KEY_PEM_BYTES} bytes" in verdict.message
    assert loads == []
    body = "".join(pem.splitlines()[1:-1])
    text = visible(verdict)
    assert all(body[i : i + 12] not in text for i in range(0, len(body) - 12, 7))


def sign_assertion(pem: str, algorithm: str = "RS256") -> str:
    spec = private_key_jwt(algorithm)
    form = spec.oauth.private_key_jwt
    return oauth_client._sign(
        SimpleNamespace(oauth=spec.oauth),  # type: ignore[arg-type]  # the key's names only
        pem,
        "tenant",
        "https://issuer.example",
        form.algorithm,
        None,
    )


def jwt_refusal(pem: str, algorithm: str = "RS256") -> str:
    with pytest.raises(ProbeFailure) as info:
        sign_assertion(pem, algorithm)
    assert info.value.outcome.reason is Reason.INVALID_CONFIGURATION
    return info.value.outcome.message


def test_a_private_key_jwt_key_over_4096_bits_is_refused_by_its_modulus_unchecked(
    loads: list[dict[str, Any]],
) -> None:
    pem = rsa_pem(4600)
    assert len(pem) <= limits.MAX_PRIVATE_KEY_PEM_BYTES
    message = jwt_refusal(pem)
    assert "is 4600 bits" in message and f"the limit is {limits.MAX_RSA_BITS} bits" in message
    assert "spec.oauth.privateKeyJWT" in message
    assert loads and all(call.get("unsafe_skip_rsa_key_validation") for call in loads)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
def test_a_private_key_jwt_key_whose_parts_make_no_key_is_refused_by_its_signature(
    algorithm: str,
) -> None:
    one = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    mixed = rsa.RSAPrivateNumbers(
        p=one.p,
        q=one.q,
        d=other.d,
        dmp1=other.dmp1,
        dmq1=other.dmq1,
        iqmp=one.iqmp,
        public_numbers=one.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    assert "is not an RSA private key" in jwt_refusal(_pem(mixed), algorithm)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
def test_a_sound_private_key_jwt_key_signs_unchecked_by_openssl(
    algorithm: str, loads: list[dict[str, Any]]
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert sign_assertion(_pem(key), algorithm).count(".") == 2
    assert loads and all(call.get("unsafe_skip_rsa_key_validation") for call in loads)


async def test_a_key_file_nested_too_deep_for_the_json_parser_is_invalid_configuration(
    pool: ClientPool,
) -> None:
    depth = 5000  # json.loads raises RecursionError past about 1,000
    deep = '{"type": "service_account", "x": ' + "[" * depth + "]" * depth + "}"
    assert len(deep) < limits.MAX_CREDENTIAL_BYTES
    verdict = await validate(vertex(), Secrets({"key.json": deep.encode()}), pool, Defaults())
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"deeper than {limits.MAX_JSON_DEPTH} levels" in verdict.message


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert limits.json_depth('{"a": "[[[[{{{{\\"[[["}') == 1
    assert limits.json_depth("[[1], [[2]]]") == 3
    assert limits.json_depth("[" * 10_000, limit=5) == 6  # stops reading past the limit


# --- what one connection's Secret values may add up to ---------------------------------------


def checker_spec(**extra: Any) -> Any:
    return parse_spec(
        {
            "provider": "openai",
            "endpoint": CLOSED,
            "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
            "validation": {"timeout": "2s"},
            **extra,
        }
    )


async def test_secret_values_that_add_up_past_the_limit_are_refused_before_redaction(
    pool: ClientPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: an API key and 16 headersFromSecret values of 16,000 bytes, each
    under the per-value cap. Building their redactor took 23 s and 298 MiB."""
    from llmconn.validation import validate as validate_module

    built: list[int] = []
    real = validate_module.Redactor

    def counting(values: Any, parts: Any = ()) -> Any:
        values, parts = list(values), list(parts)
        built.append(sum(map(len, values)) + len(parts))
        return real(values, parts=parts)

    monkeypatch.setattr(validate_module, "Redactor", counting)
    value = secrets.token_hex(8000).encode()  # 16,000 bytes
    data = {"apiKey": value, **{f"h{i}": value for i in range(16)}}
    headers = [
        {"name": f"X-H{i}", "secretKeyRef": {"name": "creds", "key": f"h{i}"}} for i in range(16)
    ]
    verdict = await validate(
        checker_spec(headersFromSecret=headers), Secrets(data), pool, Defaults()
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"is {17 * 16_000} bytes" in verdict.message
    assert f"the limit is {limits.MAX_CONNECTION_SECRET_BYTES} bytes" in verdict.message
    assert value.decode()[:12] not in visible(verdict)
    assert built == [0]  # the verdict's redactor knows no value: none was taken in


# --- CA bundles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bundle, words",
    [
        (
            lambda cert: cert * (1024 * 1024 // len(cert)),
            f"the limit is {limits.MAX_CA_BUNDLE_BYTES} bytes",
        ),
        (
            lambda cert: cert * (limits.MAX_CA_CERTIFICATES + 1),
            f"is {limits.MAX_CA_CERTIFICATES + 1} PEM blocks",
        ),
    ],
    ids=["a-mebibyte", "too-many-certificates"],
)
async def test_a_ca_bundle_past_its_limits_builds_no_tls_client(
    pool: ClientPool, bundle: Any, words: str
) -> None:
    data = {"apiKey": b"sk-0123456789abcdef", "ca.crt": bundle(ca_pem())}
    spec = checker_spec(tls={"caBundleSecretRef": {"name": "creds", "key": "ca.crt"}})
    verdict = await validate(spec, Secrets(data), pool, Defaults())
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "spec.tls.caBundleSecretRef" in verdict.message and words in verdict.message
    assert len(pool) == 0  # no client, no SSL context: the bundle was never loaded


# --- header sets ------------------------------------------------------------------------------


def test_a_header_set_past_its_limit_is_refused_naming_the_size() -> None:
    """32 headers of 4 KB each: every one within the CRD's limits, 128 KiB together."""
    headers = {f"X-H{i}": "v" * 4096 for i in range(32)}
    with pytest.raises(pydantic.ValidationError) as info:
        checker_spec(headers=headers)
    message = first_error(info.value)  # what status.message says
    size = sum(len(k) + 4096 for k in headers)
    assert f"spec.headers is {size} bytes" in message
    assert f"the limit is {limits.MAX_HEADER_BYTES} bytes" in message
    assert "vvvvvvvvvvvv" not in message
