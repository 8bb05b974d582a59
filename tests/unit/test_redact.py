"""Redaction: no secret value, or a long prefix of one, survives in stored text."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import assume, given
from hypothesis import strategies as st

from llmconn.redact import MARKER, MIN_LENGTH, PREFIX_LENGTH, Redactor

KEY = "sk-proj-4fG7hJ9kL2mN5pQ8rS1tU3vW6xY0zA"

secrets = st.text(min_size=MIN_LENGTH, max_size=80)
texts = st.text(max_size=200)


@given(before=texts, after=texts, secret=secrets)
def test_a_planted_secret_never_survives(before: str, after: str, secret: str) -> None:
    assume(secret not in MARKER)  # a "secret" that is part of the marker cannot be hidden
    out = Redactor([secret]).text(before + secret + after)
    assert secret not in out
    assert secret[:PREFIX_LENGTH] not in out


@given(
    parts=st.lists(texts, min_size=2, max_size=5), chosen=st.lists(secrets, min_size=1, max_size=3)
)
def test_several_secrets_planted_several_times_never_survive(
    parts: list[str], chosen: list[str]
) -> None:
    assume(all(s not in MARKER for s in chosen))
    text = ""
    for i, part in enumerate(parts):
        text += part + chosen[i % len(chosen)]
    out = Redactor(chosen).text(text)
    assert not any(s in out for s in chosen)


@given(
    before=texts,
    after=texts,
    secret=st.text(min_size=PREFIX_LENGTH + 1, max_size=80),
    cut=st.integers(0, 80),
)
def test_a_truncated_echo_of_a_long_secret_never_survives(
    before: str, after: str, secret: str, cut: int
) -> None:
    prefix = secret[: max(PREFIX_LENGTH, len(secret) - cut)]
    assume(prefix not in MARKER)
    out = Redactor([secret]).text(before + prefix + "..." + after)
    assert secret[:PREFIX_LENGTH] not in out


@given(text=texts, secret=secrets)
def test_text_without_the_secret_is_left_alone(text: str, secret: str) -> None:
    assume(secret[:PREFIX_LENGTH] not in text and secret not in text)
    variants = (quote(secret, safe=""), json.dumps(secret)[1:-1])
    assume(not any(v[:PREFIX_LENGTH] in text or v in text for v in variants))
    assert Redactor([secret]).text(text) == text


def test_the_obvious_forms_of_a_key_are_redacted() -> None:
    redact = Redactor([KEY])
    assert redact.text(f"Authorization: Bearer {KEY}") == f"Authorization: Bearer {MARKER}"
    assert redact.text(f"Incorrect API key provided: {KEY[:16]}...") == (
        f"Incorrect API key provided: {MARKER}..."
    )
    assert redact.text(f"url?key={KEY}&x=1") == f"url?key={MARKER}&x=1"
    # A provider showing the last four characters on purpose is left as it is.
    assert redact.text("key ending in ...x0zA") == "key ending in ...x0zA"


def test_encoded_forms_are_redacted() -> None:
    secret = 'p@ss/word+"quoted"'
    redact = Redactor([secret])
    assert quote(secret, safe="") not in redact.text(f"/login?pw={quote(secret, safe='')}")
    escaped = json.dumps(secret)[1:-1]
    assert escaped not in redact.text(f'{{"password": "{escaped}"}}')


def test_short_values_are_not_treated_as_secrets() -> None:
    assert Redactor(["abc", ""]).text("abc abc") == "abc abc"
    assert not Redactor(["abc"])
    assert Redactor([KEY])


def test_adjacent_secrets_become_one_marker_and_mappings_are_redacted() -> None:
    other = "gw-token-aaaaaaaaaaaaaaaa"
    redact = Redactor([KEY, other])
    assert redact.text(KEY + other) == MARKER
    assert redact.mapping({"a": f"x{KEY}", "b": "fine"}) == {"a": f"x{MARKER}", "b": "fine"}
    assert redact.optional(None) is None
