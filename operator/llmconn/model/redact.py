"""Remove secret values from text before it is stored, logged or printed.

Each secret value of at least `MIN_LENGTH` characters is turned into these forms:

- the value itself;
- percent-encoded, as `quote(value, safe="")` and as `%XX` for every UTF-8 byte;
- JSON-escaped (`\\uXXXX` escapes or not);
- hex of its UTF-8 bytes;
- base64 of its UTF-8 bytes, standard and URL-safe alphabets, at each of the three byte
  alignments it can have inside a longer stream (so also inside base64 of "Bearer <value>" or
  of "user:<value>"): the characters made only of the value's bits, plus, where the stream
  ends with the value, the last character and its padding (padded or not).

Matching ignores letter case (one character at a time, as `str.casefold` maps it when it maps
a character to one character), so an upper-cased echo or lower-case percent or hex digits are
caught. What is replaced by `MARKER`:

- any run of `WINDOW` (12) or more consecutive characters of any form, anywhere in the text:
  a prefix, a tail, a middle piece, a value split in two;
- a form shorter than `WINDOW` characters (the forms of short values) where it appears whole.

Overlapping or touching runs become one marker. If the marker forms a secret with its
neighbours (only possible for secrets that contain marker-like text), the text is redacted
again, and if that does not end it, the whole text is replaced by the marker.

Not redacted: runs shorter than `WINDOW` characters of a longer form (such as the last four
characters of a key, which providers show on purpose, or the few base64 characters that mix a
key's bits with its neighbours'); values shorter than `MIN_LENGTH`, which would turn ordinary
words into markers; any encoding not listed above (base64 of an upper-cased key, other
escapes, encryption, a value spread over line breaks in pieces under `WINDOW` characters).

Cost: a `Redactor` makes the forms once (about 35 us for a 48-character key: one is built per
validation); `text` then scans the text once, looking only inside runs of characters that
occur in some form, and looks each window of such a run up in the forms: by a substring search
of them all when they are short, in an index of their windows when they are long (so a long
secret costs memory once, not a scan of its forms for every window of a text).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote

MARKER = "[REDACTED]"
MIN_LENGTH = 4
WINDOW = 12
SEARCHED = 4096  # characters of forms searched as one string; past that, windows are indexed
_ROUNDS = 3
# base64 character k holds bits [6k, 6k+6): with `offset` bytes before the value, the first
# character made only of the value's bits is ceil(8 * offset / 6).
_FIRST_OWN_CHAR = (0, 2, 3)
_URLSAFE = str.maketrans("+/", "-_")


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in secrets:
            if len(value) >= MIN_LENGTH:
                forms.update(_fold(form) for form in _forms(value))
        long = [form for form in forms if len(form) >= WINDOW]
        self._whole = [form for form in forms if MIN_LENGTH <= len(form) < WINDOW]  # matched whole
        chars: set[str] = set().union(*long)
        # Every long form in one string, between characters that occur in none: a window of
        # the text (made of form characters only) is found in it only inside one form.
        between = next(char for char in map(chr, itertools.count()) if char not in chars)
        joined = between.join(long)
        # Where a window of the text is looked up: that string, or for long secrets (whose
        # forms a substring search would scan once per window) the set of their windows.
        self._forms: str | set[str] = joined
        if len(joined) > SEARCHED:
            self._forms = {f[i : i + WINDOW] for f in long for i in range(len(f) - WINDOW + 1)}
        # Only runs of characters that occur in some form can hold a window: skipping the rest
        # (spaces, most punctuation) keeps the scan of ordinary text in C.
        self._runs = (
            re.compile("[" + "".join(map(re.escape, sorted(chars))) + f"]{{{WINDOW},}}")
            if chars
            else None
        )

    def __bool__(self) -> bool:
        return bool(self._forms or self._whole)

    def text(self, text: str) -> str:
        if not self:
            return text
        for _ in range(_ROUNDS):
            spans = self._spans(text)
            if not spans:
                return text
            text = _replace(text, spans)
        return text if not self._spans(text) else MARKER

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {key: self.text(value) for key, value in values.items()}

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Where forms occur, as sorted, merged (start, end) pairs of `text`."""
        folded = _fold(text)  # same length as text, so positions carry over
        spans: list[tuple[int, int]] = []
        if self._runs is not None:
            forms = self._forms
            for run in self._runs.finditer(folded):
                for i in range(run.start(), run.end() - WINDOW + 1):
                    if folded[i : i + WINDOW] in forms:
                        spans.append((i, i + WINDOW))
        for form in self._whole:
            start = folded.find(form)
            while start != -1:
                spans.append((start, start + len(form)))
                start = folded.find(form, start + 1)
        if not spans:
            return spans
        spans.sort()
        merged = [spans[0]]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:  # overlapping or touching: one marker
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


def _forms(value: str) -> Iterator[str]:
    data = value.encode("utf-8", "surrogatepass")
    yield value
    yield quote(data, safe="")
    yield "%" + data.hex("%")  # every byte as %XX (folded anyway: lower-case digits do)
    yield json.dumps(value)[1:-1]
    yield json.dumps(value, ensure_ascii=False)[1:-1]
    yield data.hex()
    for offset, first in enumerate(_FIRST_OWN_CHAR):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        own_end = 8 * (offset + len(data)) // 6  # past the last character of the value's bits
        # Inside a longer stream the character after `own_end` mixes in the next bytes; at the
        # end of the stream it is the value's bits padded with zeros, then "=" padding.
        for form in (encoded[first:], encoded[first:].rstrip("="), encoded[first:own_end]):
            yield form
            yield form.translate(_URLSAFE)


def _fold(text: str) -> str:
    """Case-fold `text` without changing its length (positions must carry over)."""
    folded = text.casefold()
    if len(folded) == len(text):  # casefold never shortens: every character mapped to one
        return folded
    return "".join(map(_fold_char, text))


def _fold_char(char: str) -> str:
    for mapped in (char.casefold(), char.lower()):
        if len(mapped) == 1:
            return mapped
    return char


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    out: list[str] = []
    cursor = 0
    for start, end in spans:
        out += (text[cursor:start], MARKER)
        cursor = end
    out.append(text[cursor:])
    return "".join(out)
