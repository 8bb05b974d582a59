"""Properties of `classify_error`: any answer at all gets a reason, and never the caller's key:
not from classification itself when the provider did not echo it, and not after the redaction
the caller applies when it did."""

from __future__ import annotations

import base64
import json
import math
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason
from llmconn.model.redact import Redactor
from llmconn.model.spec import ValidationType
from llmconn.net.exchange import Reply
from llmconn.probes import registry
from llmconn.probes.base import ProbeContext
from llmconn.probes.errors import classify_error, retry_after

HEADER_NAMES = st.sampled_from(
    [
        b"retry-after",
        b"retry-after-ms",
        b"content-type",
        b"x-request-id",
        b"x-ratelimit-remaining-requests",
        b"www-authenticate",
    ]
) | st.text(string.ascii_letters + string.digits, min_size=1, max_size=20).map(str.encode)
HEADER_VALUES = (
    # Any bytes but those that would end a header line (deleted, not filtered: Hypothesis
    # gives up on a strategy that rejects too many of its draws).
    st.binary(max_size=40).map(lambda b: b.translate(None, b"\r\n\x00"))
    | st.sampled_from([b"20", b"0.5", b"1e9", b"9" * 400, b"\xb2", b"-3", b"text/html"])
    | st.sampled_from([b"Wed, 21 Oct 2015 07:28:00 GMT", b"Mon, 01 Jan 0001 00:00:00 GMT"])
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELD = (
    st.none()
    | st.integers(0, 600)
    | st.text(max_size=30)
    | st.sampled_from(
        ["invalid_api_key", "insufficient_quota", "model_not_found", "Arrearage", "overloaded"]
    )
)
# Shapes the dialects really use, with any values in their fields.
ERROR_SHAPED = st.one_of(
    st.fixed_dictionaries(
        {
            "error": st.fixed_dictionaries(
                {"message": FIELD, "type": FIELD, "code": FIELD},
                optional={"details": JSON, "status": FIELD},
            )
        }
    ),
    st.fixed_dictionaries({"error": FIELD}),
    st.fixed_dictionaries(
        {"object": st.just("error"), "message": FIELD, "code": FIELD, "type": FIELD}
    ),
    st.fixed_dictionaries({"code": FIELD, "message": FIELD}, optional={"request_id": FIELD}),
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
    ERROR_SHAPED.map(lambda value: json.dumps(value).encode()),
)
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=16, max_size=40).map(
    lambda tail: f"sk-{tail}"
)


def forms(key: str) -> list[str]:
    """The key as providers echo it: as it is, upper-cased, with its header's prefix, and in
    the encodings redaction knows (percent, hex, base64 inside a longer value)."""
    raw = key.encode()
    return [
        key,
        key.upper(),
        f"Bearer {key}",
        urllib.parse.quote(key, safe=""),
        "".join(f"%{b:02x}" for b in raw),
        raw.hex(),
        base64.b64encode(b"Bearer " + raw).decode(),
        base64.urlsafe_b64encode(b"user:" + raw).decode().rstrip("="),
    ]


def echoes(key: str) -> st.SearchStrategy[bytes]:
    """Answers that carry the key back ("Incorrect API key provided: sk-..."), in one of its
    forms, in the error's message or code, or in a body that is not JSON."""
    text = st.text(max_size=20)
    return st.one_of(
        st.builds(
            lambda form, before, after, field: json.dumps(
                {"error": {field: f"{before}{form}{after}", "type": "invalid_request_error"}}
            ).encode(),
            st.sampled_from(forms(key)),
            text,
            text,
            st.sampled_from(["message", "code"]),
        ),
        st.builds(lambda form, before: (before + form).encode(), st.sampled_from(forms(key)), text),
    )


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.AsyncClient]:
    # classify_error never sends anything; ProbeContext only needs a client to hold.
    yield httpx2.AsyncClient()


def _context(http: httpx2.AsyncClient, key: str) -> ProbeContext:
    return ProbeContext(
        provider=registry.get("openai"),
        endpoint="https://api.example.test/v1",
        validation_type=ValidationType.MODEL,
        http=http,
        timeout=10.0,
        model="gpt-4o",
        api_key=key,
        api_key_ref=SecretKeyRef(name="llm-credentials"),
    )


# deadline=None: no timed assertions; speed is measured elsewhere.
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(status=st.integers(100, 599), headers=HEADERS, key=KEYS, data=st.data())
@example(status=401, headers=[], key="sk-" + "c" * 20, data=None)  # the usual echo, below
def test_any_answer_gets_a_reason_and_never_the_key(
    http: httpx2.AsyncClient,
    status: int,
    headers: list[tuple[bytes, bytes]],
    key: str,
    data: st.DataObject | None,
) -> None:
    if data is None:
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}."}}).encode()
    else:
        # Half of the answers echo the key, so the echo is not a rare case.
        body = data.draw(st.one_of(BODIES, echoes(key)), label="body")
    reply = Reply(status, httpx2.Headers(headers), body, "https://api.example.test/v1/models")
    ctx = _context(http, key)
    authorization = ctx.auth_headers()["Authorization"]

    outcome = classify_error(ctx, reply, "the model list")

    assert isinstance(outcome.reason, Reason)
    assert outcome.reason is not Reason.VALIDATED
    assert outcome.http_status == status
    assert outcome.message
    if key.encode() not in body:
        assert key not in outcome.message
        assert authorization not in outcome.message
        assert key not in (outcome.code or "")
    # What validate() stores: classification, then the redaction of the values the probe used.
    redact = Redactor([key])
    stored = [redact.text(outcome.message), redact.optional(outcome.code) or ""]
    for text in stored:
        for form in forms(key):
            assert form.casefold() not in text.casefold(), form
    if outcome.retry_after is not None:
        assert outcome.reason is Reason.RATE_LIMITED
        assert math.isfinite(outcome.retry_after) and outcome.retry_after >= 0


ECHOED_KEY = "sk-proj4ab7Zq9" + "x1y2" * 5  # letters and digits: every form differs


@pytest.mark.parametrize("form", forms(ECHOED_KEY), ids=range(len(forms(ECHOED_KEY))))
@pytest.mark.parametrize("field", ["message", "code"])
def test_every_echoed_form_of_the_key_is_redacted(
    http: httpx2.AsyncClient, form: str, field: str
) -> None:
    # The property above draws keys that hypothesis shrinks towards "sk-000...", whose
    # upper-cased form is itself: here each form is sure to be tried.
    body = json.dumps({"error": {field: f"Incorrect API key provided: {form}."}}).encode()
    reply = Reply(401, httpx2.Headers(), body, "https://api.example.test/v1/models")
    outcome = classify_error(_context(http, ECHOED_KEY), reply, "the model list")

    redact = Redactor([ECHOED_KEY])
    stored = f"{redact.text(outcome.message)} {redact.optional(outcome.code) or ''}"
    assert form.casefold() in f"{outcome.message} {outcome.code}".casefold()  # it was echoed
    for each in forms(ECHOED_KEY):
        assert each.casefold() not in stored.casefold(), each


@example(status=200, headers=[], body=b"[" * 5000, key="sk-" + "a" * 20)  # deep nesting
@example(status=429, headers=[(b"retry-after", b"\xb2")], body=b"{}", key="sk-" + "b" * 20)
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.integers(100, 599), headers=HEADERS, body=BODIES, key=KEYS)
def test_odd_answers_get_a_reason(
    http: httpx2.AsyncClient, status: int, headers: list[tuple[bytes, bytes]], body: bytes, key: str
) -> None:
    outcome = classify_error(
        _context(http, key),
        Reply(status, httpx2.Headers(headers), body, "https://api.example.test/v1/models"),
        "the model list",
    )
    assert isinstance(outcome.reason, Reason) and outcome.reason is not Reason.VALIDATED
    assert outcome.message


@settings(deadline=None)
@given(headers=HEADERS)
@example(headers=[(b"retry-after", b"\xb2")])
@example(headers=[(b"retry-after-ms", b"\xb2")])
@example(headers=[(b"retry-after", b"9" * 400)])
@example(headers=[(b"retry-after", b"Mon, 01 Jan 0001 00:00:00 -0000")])
def test_retry_after_is_a_finite_wait_or_none(headers: list[tuple[bytes, bytes]]) -> None:
    wait = retry_after(httpx2.Headers(headers))

    assert wait is None or (math.isfinite(wait) and wait >= 0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("20", 20.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)],
)
def test_retry_after_reads_seconds_and_dates(value: str, seconds: float | None) -> None:
    assert retry_after(httpx2.Headers({"retry-after": value})) == seconds


def test_provider_text_is_echoed_for_the_caller_to_redact(http: httpx2.AsyncClient) -> None:
    # classify_error repeats the provider's message (it is often the most useful part); a
    # key the provider echoes back is redacted by the caller, not here.
    key = "sk-" + "e" * 24
    body: dict[str, Any] = {
        "error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key"}
    }
    reply = Reply(401, httpx2.Headers(), json.dumps(body).encode(), "https://x.test/v1/models")

    outcome = classify_error(_context(http, key), reply, "the model list")

    assert outcome.reason is Reason.INVALID_API_KEY
    assert key in outcome.message
