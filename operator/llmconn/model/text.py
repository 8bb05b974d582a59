"""Printable text only: what a tenant or a provider wrote, made safe to store and show.

Provider error text and tenant strings (a model name, an annotation value) reach the status,
Events, logs and terminals. A terminal obeys what it is sent: ESC and CSI start sequences that
clear the screen, set the window title, write the clipboard (OSC 52) or hide text, and bidi
controls reorder what is shown. So before any of those, C0 and C1 control characters, DEL,
and the invisible format characters (bidi embeddings, overrides and isolates, zero-width
characters, the byte-order mark) are replaced: line breaks and tabs by a space (one line stays
one line; `lines=True` keeps `\\n` for tracebacks), everything else by U+FFFD, so it shows that
something was there. Cost: one regular-expression pass, in C.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# Line breaks and tabs: C0's \t \n \v \f \r, C1's NEL, Unicode's line and paragraph separators.
_BREAKS = "\t\n\x0b\x0c\r\x85\u2028\u2029"
_CONTROLS = (
    "\x00-\x1f\x7f-\x9f"  # C0, DEL, C1 (ESC, CSI, OSC, ...)
    "\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"  # bidi, zero-width
)
_BREAK = re.compile(f"[{_BREAKS}]")
_CONTROL = re.compile(f"[{_CONTROLS}]")
_ANY = re.compile(f"[{_BREAKS}{_CONTROLS}]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with no control or invisible format character (see the module docstring)."""
    if not _ANY.search(text):
        return text
    if lines:
        text = "\n".join(_BREAK.sub(" ", line) for line in text.split("\n"))
    else:
        text = _BREAK.sub(" ", text)
    return _CONTROL.sub(lambda m: "\n" if m.group() == "\n" else REPLACEMENT, text)


def optional(text: str | None) -> str | None:
    return None if text is None else printable(text)
