"""Redaction: no secret value, in any listed encoding or letter case, survives in stored text,
nor does any run of 12 or more characters of one; text without such a run is left alone."""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from llmconn.model.redact import MARKER, Redactor, _fold, _forms

MIN_LENGTH = 4  # shorter values are never redacted
WINDOW = 12  # any run this long of a form is redacted
KEY = "sk-proj-4fG7hJ9kL2mN5pQ8rS1tU3vW6xY0zA"
# Its base64 holds "+" and "/" at every alignment, so the two alphabets differ.
AWS_LIKE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY?>~EXAMPLEKEY"

secrets = st.text(min_size=MIN_LENGTH, max_size=80)
texts = st.text(max_size=200)
# Alphabets keys are really made of: OpenAI/Anthropic style, hex tokens, base64 secrets,
# passwords.
key_alphabets = st.sampled_from(
    [
        string.ascii_letters + string.digits + "-_",
        string.hexdigits[:16],
        string.ascii_letters + string.digits + "+/=",
        string.printable.strip(),
    ]
)


@st.composite
def long_keys(draw: st.DrawFn) -> str:
    return draw(st.text(alphabet=draw(key_alphabets), min_size=WINDOW, max_size=100))


# --- Reference encodings, derived independently of the module under test -------------------


def b64(data: bytes, urlsafe: bool = False) -> str:
    encoded = base64.b64encode(data).decode()
    return encoded.translate(str.maketrans("+/", "-_")) if urlsafe else encoded


def own_span(data: bytes, before: int, after: int, urlsafe: bool = False) -> tuple[int, int]:
    """Where, in base64(<before bytes> + data + <after bytes>), the characters made of the bits
    of `data` alone are: those that agree whatever the neighbouring bytes are."""
    variants = [
        b64(bytes([fill]) * before + data + bytes([other]) * after, urlsafe)
        for fill in (0, 255)
        for other in (0, 255)
    ]
    same = [len({v[i] for v in variants}) == 1 for i in range(len(variants[0]))]
    start = same.index(True)
    end = same.index(False, start) if False in same[start:] else len(same)
    return start, end


def own_base64(data: bytes, offset: int, urlsafe: bool = False, stream_ends: bool = False) -> str:
    """The characters of base64(<offset bytes> + data + ...) made of the bits of `data` alone
    (with the last one and the padding when the stream ends with `data`)."""
    start, end = own_span(data, offset, 0 if stream_ends else 3, urlsafe)
    return b64(bytes(offset) + data, urlsafe)[start:end]


def all_forms(secret: str) -> list[str]:
    data = secret.encode()
    forms = [
        secret,
        quote(secret, safe=""),
        "".join(f"%{b:02X}" for b in data),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        data.hex(),
    ]
    for offset in range(3):
        for urlsafe in (False, True):
            padded = own_base64(data, offset, urlsafe, stream_ends=True)
            forms += [padded, padded.rstrip("="), own_base64(data, offset, urlsafe)]
    return forms


def runs(form: str) -> set[str]:
    form = form.casefold()
    return {form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1)}


def survivors(form: str, out: str) -> set[str]:
    """Pieces of `form` that are still there (12-character runs, or the whole short form)."""
    out = out.casefold()
    if len(form) < WINDOW:
        return {form} if form.casefold() in out else set()
    return {run for run in runs(form) if run in out}


def lower_percent(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


# --- Properties ------------------------------------------------------------------------------


@given(before=texts, after=texts, secret=secrets)
def test_a_planted_secret_never_survives(before: str, after: str, secret: str) -> None:
    assume(secret not in MARKER)  # a "secret" that is part of the marker cannot be hidden
    out = Redactor([secret]).text(before + secret + after)
    assert secret not in out
    assert secret[:WINDOW] not in out


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
    secret=st.text(min_size=WINDOW + 1, max_size=80),
    cut=st.integers(0, 80),
)
def test_a_truncated_echo_of_a_long_secret_never_survives(
    before: str, after: str, secret: str, cut: int
) -> None:
    prefix = secret[: max(WINDOW, len(secret) - cut)]
    assume(prefix not in MARKER)
    out = Redactor([secret]).text(before + prefix + "..." + after)
    assert secret[:WINDOW] not in out


# "Without the secret" means no run of 12 characters of any form, in any letter case, and no
# whole short form: the value, its prefix and two encodings are no longer all that counts.
@given(text=texts, secret=secrets)
def test_text_without_the_secret_is_left_alone(text: str, secret: str) -> None:
    assume(not any(survivors(form, text) for form in all_forms(secret)))
    assert Redactor([secret]).text(text) == text


ENCODINGS = [
    "raw",
    "upper",
    "lower",
    "swapcase",
    "quote",
    "quote-lower",
    "percent",
    "percent-lower",
    "json",
    "hex",
    "hex-upper",
    "base64",
    "base64-unpadded",
    "base64url",
    "base64url-unpadded",
]


def encode(key: str, how: str, prefix: bytes, suffix: bytes) -> tuple[str, int, int]:
    """The text to plant, and where in it the part made of the key alone starts and ends."""
    data = key.encode()
    if how.startswith("base64"):
        urlsafe = how.startswith("base64url")
        blob = b64(prefix + data + suffix, urlsafe)
        start, end = own_span(data, len(prefix), len(suffix), urlsafe)
        if how.endswith("unpadded"):
            blob = blob.rstrip("=")
        return blob, start, min(end, len(blob))
    plain = {
        "raw": key,
        "upper": key.upper(),
        "lower": key.lower(),
        "swapcase": key.swapcase(),
        "quote": quote(key, safe=""),
        "quote-lower": lower_percent(quote(key, safe="")),
        "percent": "".join(f"%{b:02X}" for b in data),
        "percent-lower": "".join(f"%{b:02x}" for b in data),
        "json": json.dumps(key)[1:-1],
        "hex": data.hex(),
        "hex-upper": data.hex().upper(),
    }[how]
    return plain, 0, len(plain)


@given(
    key=long_keys(),
    prefix=st.binary(max_size=12),
    suffix=st.binary(max_size=12),
    before=texts,
    after=texts,
)
def test_every_listed_encoding_of_a_key_never_survives(
    key: str, prefix: bytes, suffix: bytes, before: str, after: str
) -> None:
    redact = Redactor([key])
    for how in ENCODINGS:
        planted, start, end = encode(key, how, prefix, suffix)
        assert not survivors(planted[start:end], redact.text(before + planted + after)), how
        # Alone, the planted text loses all of the key's part (and perhaps neighbours that
        # happen to match), under one marker: not even one character of it is left.
        out = redact.text(planted)
        head, marker, tail = out.partition(MARKER)
        assert marker and MARKER not in tail, how
        assert planted.startswith(head) and len(head) <= start, how
        assert planted.endswith(tail) and len(planted) - len(tail) >= end, how


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[str, str]:
    """A key, and text stitched from pieces of its forms shorter than a window."""
    key = draw(long_keys())
    forms = all_forms(key)
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        form = draw(st.sampled_from(forms))
        start = draw(st.integers(0, len(form) - 1))
        size = draw(st.integers(1, WINDOW - 1))
        pieces += [draw(st.text(min_size=1, max_size=3)), form[start : start + size]]
    return key, "".join(pieces)


@given(case=near_misses())
def test_text_with_no_run_of_any_form_is_returned_unchanged(case: tuple[str, str]) -> None:
    key, text = case
    assume(not any(survivors(form, text) for form in all_forms(key)))
    assert Redactor([key]).text(text) == text


# --- One test per form -----------------------------------------------------------------------


def test_the_obvious_forms_of_a_key_are_redacted() -> None:
    redact = Redactor([KEY])
    assert redact.text(f"Authorization: Bearer {KEY}") == f"Authorization: Bearer {MARKER}"
    assert redact.text(f"Incorrect API key provided: {KEY[:16]}...") == (
        f"Incorrect API key provided: {MARKER}..."
    )
    assert redact.text(f"url?key={KEY}&x=1") == f"url?key={MARKER}&x=1"
    # A provider showing the last four characters on purpose is left as it is.
    assert redact.text("key ending in ...x0zA") == "key ending in ...x0zA"


@pytest.mark.parametrize("change", [str.upper, str.lower, str.swapcase, str.title])
def test_letter_case_is_ignored(change: Callable[[str], str]) -> None:
    echoed = change(KEY)
    assert echoed != KEY
    assert Redactor([KEY]).text(f"key {echoed}.") == f"key {MARKER}."


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_base64_of_the_key_is_redacted_at_every_alignment(
    offset: int, padded: bool, urlsafe: bool
) -> None:
    blob = b64(b"x" * offset + AWS_LIKE.encode(), urlsafe)
    assert blob != b64(b"x" * offset + AWS_LIKE.encode(), not urlsafe)
    if not padded:
        blob = blob.rstrip("=")
    # The first characters mix the key's bits with the byte(s) before it: they stay.
    mixed = (0, 2, 3)[offset]
    assert Redactor([AWS_LIKE]).text(f"token={blob};") == f"token={blob[:mixed]}{MARKER};"


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_base64_of_the_key_inside_a_longer_blob_is_redacted(offset: int, urlsafe: bool) -> None:
    data = b'{"u":"' + b"x" * offset + AWS_LIKE.encode() + b'","n":1}'
    blob = b64(data, urlsafe)
    out = Redactor([AWS_LIKE]).text(blob)
    assert MARKER in out
    assert not survivors(own_base64(AWS_LIKE.encode(), (6 + offset) % 3, urlsafe), out)


@pytest.mark.parametrize(("scheme", "prefix"), [("Bearer", "Bearer "), ("Basic", "user:")])
def test_base64_of_bearer_and_basic_credentials_is_redacted(scheme: str, prefix: str) -> None:
    blob = b64((prefix + KEY).encode())
    out = Redactor([KEY]).text(f"Authorization: {scheme} {blob}")
    # "Bearer " is 7 bytes (two groups and one byte: 8 + 2 mixed characters); "user:" is 5
    # (one group and two bytes: 4 + 3).
    kept = {"Bearer": 10, "Basic": 7}[scheme]
    assert out == f"Authorization: {scheme} {blob[:kept]}{MARKER}"


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_hex_is_redacted_in_either_case(case: Callable[[str], str]) -> None:
    redact = Redactor([KEY])
    assert redact.text(f"dump {case(KEY.encode().hex())} end") == f"dump {MARKER} end"
    inside = case((b"Bearer " + KEY.encode()).hex())
    assert redact.text(inside) == inside[:14] + MARKER


def test_percent_encoding_is_redacted_in_either_case() -> None:
    secret = 'p@ss/word+"quoted" ~ü'
    redact = Redactor([secret])
    quoted = quote(secret, safe="")
    full = "".join(f"%{b:02X}" for b in secret.encode())
    for form in (quoted, lower_percent(quoted), full, full.lower()):
        assert redact.text(f"/login?pw={form}&next=/") == f"/login?pw={MARKER}&next=/"


def test_json_escaped_forms_are_redacted() -> None:
    secret = 'p@ss\\word"quoted"ü€'
    redact = Redactor([secret])
    for form in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        assert redact.text(f'{{"password": "{form}"}}') == f'{{"password": "{MARKER}"}}'


def test_encoded_forms_are_redacted() -> None:
    secret = 'p@ss/word+"quoted"'
    redact = Redactor([secret])
    assert quote(secret, safe="") not in redact.text(f"/login?pw={quote(secret, safe='')}")
    escaped = json.dumps(secret)[1:-1]
    assert escaped not in redact.text(f'{{"password": "{escaped}"}}')


def test_a_key_split_at_character_11_loses_its_long_part() -> None:
    # The 11-character head is shorter than a window and stays; the other 27 characters go.
    out = Redactor([KEY]).text(f"{KEY[:11]} {KEY[11:]}")
    assert out == f"{KEY[:11]} {MARKER}"


@pytest.mark.parametrize("size", range(21, 28))
def test_tails_of_21_to_27_characters_are_redacted(size: int) -> None:
    assert Redactor([KEY]).text(f"key ...{KEY[-size:]}") == f"key ...{MARKER}"


def test_every_middle_run_of_12_or_more_is_redacted() -> None:
    redact = Redactor([KEY])
    for size in (WINDOW, WINDOW + 5):
        for start in range(len(KEY) - size + 1):
            assert redact.text(f"<{KEY[start : start + size]}>") == f"<{MARKER}>"


def test_runs_shorter_than_12_of_a_long_key_are_kept() -> None:
    redact = Redactor([KEY])
    for start in range(len(KEY) - WINDOW + 2):
        piece = KEY[start : start + WINDOW - 1]
        assert redact.text(f"<{piece}>") == f"<{piece}>"


def test_values_of_4_to_11_characters_are_redacted_when_whole() -> None:
    password = "hunter2!"
    redact = Redactor([password])
    assert redact.text(f"pw={password}") == f"pw={MARKER}"
    assert redact.text("pw=HUNTER2!") == f"pw={MARKER}"
    assert redact.text("pw=hunter2") == "pw=hunter2"  # a piece of a short value stays
    basic = b64(b"admin:" + password.encode())
    assert redact.text(f"Basic {basic}") == f"Basic {basic[:8]}{MARKER}"
    assert redact.text(f"Basic {basic.rstrip('=')}") == f"Basic {basic[:8]}{MARKER}"
    inside = b64(b"admin:" + password.encode() + b"|realm=x")
    assert redact.text(inside) == f"{inside[:8]}{MARKER}{inside[18:]}"
    assert redact.text(password.encode().hex()) == MARKER


def test_a_text_too_short_for_any_form_is_left_as_it_is_and_a_short_value_still_found() -> None:
    """The shortcut for short texts (most of a verdict's details): a text shorter than every
    form is returned untouched, and a whole short value in a short text is still found,
    together with a long key's redactor."""
    redact = Redactor([KEY, "hunter2!"])
    assert redact.text("200") == "200"
    assert redact.text("hunter2!") == MARKER
    assert redact.text("HUNTER2!") == MARKER
    only_long = Redactor([KEY])
    assert only_long.text(KEY[: WINDOW - 1]) == KEY[: WINDOW - 1]
    assert only_long.text(KEY[:WINDOW]) == MARKER


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


def test_a_marker_that_forms_a_secret_with_its_neighbours_is_redacted_again() -> None:
    first, second = "qwertyuiopasdf", f"{MARKER}abcdefgh"
    out = Redactor([first, second]).text(f"left {first}abcdefgh right")
    assert out == f"left {MARKER} right"
    # A secret inside the marker itself cannot be hidden: the whole text goes.
    assert Redactor(["redacted"]).text("a redacted b") == MARKER


def test_a_window_across_two_forms_is_no_secret() -> None:
    # The forms are searched as one string: what spans the end of one form and the start of
    # another is in no form, and stays (the third value holds the lowest characters, which
    # the forms' separator must avoid).
    secrets = ["abcdefghijklmnop", "QRSTUVWXYZ012345", "\x00\x01" + "k" * 14]
    forms = {_fold(form) for value in secrets for form in _forms(value) if len(form) >= WINDOW}
    redact = Redactor(secrets)
    for first in forms:
        for second in forms:
            straddle = first[-6:] + second[:6]
            if not any(straddle in form for form in forms):
                assert redact.text(straddle) == straddle


def test_a_long_secret_is_redacted_as_a_short_one_is() -> None:
    # Forms longer than the redactor searches as one string are indexed by window instead.
    value = "".join(string.ascii_letters[(i * 7) % 52] for i in range(2000))
    redact = Redactor([value])
    piece = value[900:930]
    assert redact.text(f"echo {piece} end") == f"echo {MARKER} end"
    assert redact.text(f"b64 {base64.b64encode(value.encode()).decode()[60:90]} end") == (
        f"b64 {MARKER} end"
    )
    assert redact.text("nothing secret here at all") == "nothing secret here at all"
