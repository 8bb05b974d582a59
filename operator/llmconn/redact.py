"""Remove secret values from text before it is stored, logged or printed.

What is redacted, for every secret value of at least `MIN_LENGTH` characters:

- the value itself, wherever it appears (so also inside "Bearer <value>", URLs, JSON);
- its URL-encoded and JSON-escaped forms, when they differ;
- any run of the value's first `PREFIX_LENGTH` or more characters: providers echo truncated
  keys ("sk-proj-abc123def456..."), and a long prefix of a key is still most of the key.

Not redacted: short pieces from the middle or the end of a value (providers show the last
four characters of a key on purpose), and values shorter than `MIN_LENGTH`, which would turn
ordinary words into markers and are no credentials. If the marker itself ends up forming a
secret with its neighbours (only possible for secrets that contain marker text), the whole
text is replaced by the marker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

MARKER = "[REDACTED]"
MIN_LENGTH = 4
PREFIX_LENGTH = 12
_ROUNDS = 3


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in secrets:
            if len(value) < MIN_LENGTH:
                continue
            forms.update((value, quote(value, safe=""), json.dumps(value)[1:-1]))
        # Longest first, so that a prefix rule never cuts a longer exact match short.
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, text: str) -> str:
        if not self._forms:
            return text
        for _ in range(_ROUNDS):
            if not self._leaks(text):
                return text
            text = self._one_pass(text)
        return text if not self._leaks(text) else MARKER

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {key: self.text(value) for key, value in values.items()}

    def _leaks(self, text: str) -> bool:
        return any(_needle(form) in text for form in self._forms)

    def _one_pass(self, text: str) -> str:
        spans: list[tuple[int, int]] = []
        for form in self._forms:
            needle = _needle(form)
            start = text.find(needle)
            while start != -1:
                end = start + len(needle)
                # Extend a prefix match as far as the text keeps following the value.
                while (
                    end < len(text) and end - start < len(form) and text[end] == form[end - start]
                ):
                    end += 1
                spans.append((start, end))
                start = text.find(needle, start + 1)
        if not spans:
            return text
        spans.sort()
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:  # overlapping or touching: one marker
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        cursor = 0
        for start, end in merged:
            out += (text[cursor:start], MARKER)
            cursor = end
        out.append(text[cursor:])
        return "".join(out)


def _needle(form: str) -> str:
    """What to search for: the whole value, or the prefix that starts a redacted run."""
    return form[:PREFIX_LENGTH] if len(form) > PREFIX_LENGTH else form
