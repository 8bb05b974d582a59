"""No key in any log, at any level: the raw HTTP loggers stay quiet and every record is
redacted before a handler formats it. (The operator run at debug level with canary keys in
every credential position is in tests/e2e/test_security.py.)"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import pytest

from llmconn.model import logs
from llmconn.model.credentials import AwsCredentials, OAuthClientSecrets

KEY = "sk-canary-4f1c9a7e2b8d6053aa"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.operator-token-canary.c2lnbmF0dXJl"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logs.guard()
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.mark.parametrize("name", logs.RAW_LOGGERS)
def test_loggers_that_see_raw_headers_never_log_below_warning(
    captured: io.StringIO, name: str
) -> None:
    logging.getLogger(name).debug("Encoding header (b'x-api-key', b'%s')", KEY)
    logging.getLogger(name + ".sub").info("header %s", KEY)
    assert captured.getvalue() == ""


def test_a_record_names_no_key_in_use_in_any_form(captured: io.StringIO) -> None:
    log = logging.getLogger("llmconn.test")
    with logs.in_use([KEY]):
        log.warning("echoed %s", KEY)
        log.warning("upper %s", KEY.upper())
        log.warning("basic %s", base64.b64encode(f"user:{KEY}".encode()).decode())
        log.warning("hex %s", KEY.encode().hex())
        try:
            raise ValueError(f"provider said {KEY}")
        except ValueError:
            log.exception("failed")
    out = captured.getvalue()
    assert out.count(logs.MARKER) >= 5
    for form in (KEY, KEY.upper(), KEY[3:20], KEY.encode().hex()[:24]):
        assert form not in out


def test_keys_no_longer_in_use_are_forgotten_but_protected_ones_are_not(
    captured: io.StringIO,
) -> None:
    logs.protect(f"Bearer {TOKEN}")
    with logs.in_use(["temporary-value-123456"]):
        pass
    logging.getLogger("llmconn.test").warning("token %s and temporary-value-123456", TOKEN)
    out = captured.getvalue()
    assert TOKEN[:12] not in out
    assert "temporary-value-123456" in out  # not a secret any more: no needless markers


@pytest.mark.parametrize(
    "line",
    [
        "sending Authorization: Bearer abc.def.ghi-unknown-token",
        "headers {'x-api-key': 'unknown-key-material-42'}",
        "(b'api-key', b'unknown-key-material-42')",
        "Cookie=session-unknown-key-material-42",
        "proxy-authorization: Basic dXNlcjpwYXNzd29yZA==",
        "{'X-Amz-Security-Token': 'unknown-key-material-42//session'}",
    ],
)
def test_credential_shaped_text_is_redacted_even_when_the_value_is_unknown(
    captured: io.StringIO, line: str
) -> None:
    logging.getLogger("kopf.test").info("%s", line)
    out = captured.getvalue()
    assert logs.MARKER in out
    for secret in ("abc.def.ghi", "unknown-key-material", "dXNlcjpwYXNzd29yZA"):
        assert secret not in out


AWS = AwsCredentials(
    access_key_id="AKIACANARY0123456789",
    secret_access_key="canary/Secret+Access/Key0123456789abcdefgh",
    session_token="IQoJb3JpZ2luX2VjCANARY//////////session-token-canary-0123",
)


def test_every_part_of_aws_credentials_in_use_is_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("llmconn.test")
    with logs.in_use(AWS.secrets()):
        log.warning("Credential=%s/20261130/us-east-1/bedrock/aws4_request", AWS.access_key_id)
        log.warning("secret %s token %s", AWS.secret_access_key, AWS.session_token)
    out = captured.getvalue()
    assert out.count(logs.MARKER) >= 3
    for value in AWS.secrets():
        assert value[:12] not in out and value[-12:] not in out
    assert "AKIACANA" not in repr(AWS) and "canary" not in repr(AWS)


def test_botocore_never_logs_its_canonical_request(captured: io.StringIO) -> None:
    # botocore.auth logs the canonical request, security token included, at debug level.
    logging.getLogger("botocore.auth").debug("CanonicalRequest:\nx-amz-security-token:%s", "t")
    assert captured.getvalue() == ""


OAUTH = OAuthClientSecrets(
    client_id="llmconn-probe",
    client_secret="cs-canary-9d2e4b7a1f3c5e8d",
    private_key=(
        "-----BEGIN PRIVATE KEY-----\n"
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCanaryKeyLine1\n"
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789canaryKeyLine2+/AbCdEfGhIjKl\n"
        "-----END PRIVATE KEY-----\n"
    ),
)


def test_spec_oauth_secrets_in_use_are_redacted_in_every_form(captured: io.StringIO) -> None:
    """The client secret (alone, in a form body, as HTTP Basic with the client id), the
    private key whole, joined and line by line; the client id is no secret."""
    log = logging.getLogger("llmconn.test")
    assert OAUTH.client_secret is not None and OAUTH.private_key is not None
    basic = base64.b64encode(f"{OAUTH.client_id}:{OAUTH.client_secret}".encode()).decode()
    with logs.in_use([*OAUTH.secrets(), basic]):
        log.warning("form grant_type=client_credentials&client_secret=%s", OAUTH.client_secret)
        log.warning("Authorization: Basic %s", basic)
        log.warning("key %s", OAUTH.private_key)
        for line in OAUTH.private_key.splitlines()[1:3]:
            log.warning("a line %s", line)
        log.warning("client %s", OAUTH.client_id)
    out = captured.getvalue()
    assert out.count(logs.MARKER) >= 5
    assert "cs-canary-9d2e" not in out and "4b7a1f3c5e8d" not in out
    assert "canaryKeyLine" not in out and basic[:16] not in out
    assert "client llmconn-probe" in out
    assert "cs-canary" not in repr(OAUTH) and "canaryKeyLine" not in repr(OAUTH)
