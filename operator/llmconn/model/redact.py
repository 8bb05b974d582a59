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

Cost: the forms of a value are made once while it is cached (`part`: least recently used
out past CACHED characters of values; about 35 us for a 48-character key), so a verdict's
redactor and the log filter's over every validation in flight are lists of parts. `text` scans
the text once per part, looking only inside runs of characters that occur in some form, and
looks each window of such a run up in the forms: by a substring search of them all when they
are short, in a sparse index of their pieces when they are long (`_Index`: linear in the
value's bytes, about 170 bytes of memory per byte of value). The operator makes the parts of
values over 1,024 characters in a worker thread (`validation/validate.py`).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote

MARKER = "[REDACTED]"
MIN_LENGTH = 4
WINDOW = 12
SEARCHED = 4096  # characters of forms searched as one string; past that, pieces are indexed
_STEP = 6  # the sparse index keeps the piece at every _STEP-th position of a form ...
_PIECE = WINDOW - _STEP + 1  # ... of this many characters: every window holds one
_ROUNDS = 3
# base64 character k holds bits [6k, 6k+6): with `offset` bytes before the value, the first
# character made only of the value's bits is ceil(8 * offset / 6).
_FIRST_OWN_CHAR = (0, 2, 3)
_URLSAFE = str.maketrans("+/", "-_")


class Redactor:
    """Redacts the forms of `secrets` from text. Each value's forms are made once per value
    (`part`, cached), so building a Redactor for values seen before costs a dictionary
    lookup each, and the log filter's redactor over every validation in flight is only the
    list of their parts."""

    def __init__(self, secrets: Iterable[str], parts: Iterable[Part] = ()) -> None:
        self._parts = [
            found for value in dict.fromkeys(secrets) if (found := part(value)) is not None
        ]
        self._parts += parts
        # No form can be found in a text shorter than this (most of a verdict's details).
        self._shortest = min((p.shortest for p in self._parts), default=0)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def text(self, text: str) -> str:
        if not self._parts or len(text) < self._shortest:
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
        for found in self._parts:
            spans += found.spans(folded)
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


class Part:
    """One secret value's forms, ready to be found in folded text."""

    def __init__(self, value: str) -> None:
        forms = {_fold(form) for form in _forms(value)}
        long = [form for form in forms if len(form) >= WINDOW]
        self._whole = [form for form in forms if MIN_LENGTH <= len(form) < WINDOW]  # matched whole
        # The shortest text a form can be found in: a whole short form, else a window.
        self.shortest = min((len(form) for form in self._whole), default=WINDOW)
        chars: set[str] = set().union(*long)
        # Every long form in one string, between characters that occur in none: a window of
        # the text (made of form characters only) is found in it only inside one form.
        between = next(char for char in map(chr, itertools.count()) if char not in chars)
        joined = between.join(long)
        # Where a window of the text is looked up: that string, or for long secrets (whose
        # forms a substring search would scan once per window) a sparse index of their pieces.
        self._forms: str = joined
        self._index: _Index | None = None
        if len(joined) > SEARCHED:
            self._forms = ""
            self._index = _Index(long)
        # Only runs of characters that occur in some form can hold a window: skipping the rest
        # (spaces, most punctuation) keeps the scan of ordinary text in C.
        self._runs = (
            re.compile("[" + "".join(map(re.escape, sorted(chars))) + f"]{{{WINDOW},}}")
            if chars
            else None
        )

    def spans(self, folded: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        if self._runs is not None and self._index is not None:
            for run in self._runs.finditer(folded):
                spans += self._index.spans(folded, run.start(), run.end())
        elif self._runs is not None:
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
        return spans


# Parts of recently used values, least recently used first out, up to CACHED raw characters.
CACHED = 256 * 1024
_CACHE: OrderedDict[str, Part] = OrderedDict()
_CACHE_SIZE = [0]
_LOCK = threading.Lock()  # log records may be redacted on other threads


def part(value: str) -> Part | None:
    """The forms of one value, made once while it is in the cache (None: too short)."""
    if len(value) < MIN_LENGTH:
        return None
    with _LOCK:
        if (found := _CACHE.get(value)) is not None:
            _CACHE.move_to_end(value)
            return found
    made = Part(value)
    with _LOCK:
        if value not in _CACHE:
            _CACHE[value] = made
            _CACHE_SIZE[0] += len(value)
            while _CACHE_SIZE[0] > CACHED and len(_CACHE) > 1:
                old, _ = _CACHE.popitem(last=False)
                _CACHE_SIZE[0] -= len(old)
    return made


def cached(value: str) -> bool:
    with _LOCK:
        return value in _CACHE


class _Index:
    """The long forms of long secrets, indexed sparsely: the piece of `_PIECE` characters at
    every `_STEP`-th position of each form (a form that is a substring of another adds
    nothing, so it is left out). Any run of `WINDOW` characters of a form holds one such
    piece (`_PIECE + _STEP - 1 == WINDOW`); a piece of the text found here is extended both
    ways along its form, and the run is kept when it is `WINDOW` characters or more. So the
    same runs are found as by looking every window up, for a `_STEP`th of the memory and of
    the time it takes to build: linear in the forms' length, which is linear in the secret
    values' bytes."""

    def __init__(self, forms: list[str]) -> None:
        forms = sorted(forms, key=len, reverse=True)
        kept: list[str] = []
        for form in forms:
            if not any(form in longer for longer in kept):
                kept.append(form)
        self.forms = kept
        self.where: dict[str, int | tuple[int, ...]] = {}
        where = self.where
        for number, form in enumerate(kept):
            base = number << 32
            for at in range(0, len(form) - _PIECE + 1, _STEP):
                piece = form[at : at + _PIECE]
                code = base | at
                before = where.get(piece)
                if before is None:
                    where[piece] = code
                elif isinstance(before, int):
                    where[piece] = (before, code)
                else:
                    where[piece] = (*before, code)

    def __bool__(self) -> bool:
        return bool(self.where)

    def spans(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """The runs of forms in text[start:end], as (start, end) pairs."""
        out: list[tuple[int, int]] = []
        where, forms = self.where, self.forms
        covered = start  # positions before it are inside a run found already
        for i in range(start, end - _PIECE + 1):
            found = where.get(text[i : i + _PIECE])
            if found is None:
                continue
            for code in (found,) if isinstance(found, int) else found:
                form, at = forms[code >> 32], code & 0xFFFFFFFF
                left = 0
                while left < min(i - start, at) and text[i - left - 1] == form[at - left - 1]:
                    left += 1
                right = _PIECE
                while (
                    i + right < end
                    and at + right < len(form)
                    and text[i + right] == form[at + right]
                ):
                    right += 1
                if left + right >= WINDOW and i + right > covered:
                    out.append((i - left, i + right))
                    covered = i + right
        return out


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
