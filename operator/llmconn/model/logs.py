"""Logging for `llmconn run` and `llmconn validate`, guarded in one place.

Two rules, whatever the configured level:

- Loggers that see raw HTTP traffic never go below WARNING. At debug level they print header
  values (`hpack` prints `x-api-key`, `api-key` and `x-goog-api-key` in clear, and its
  Huffman-coded header blocks decode back to `Authorization`), request lines and bodies.
- Every record that reaches a handler of the root logger passes `RedactingFilter`: the secret
  values of the validations in flight (`in_use`), the operator's own API credentials
  (`protect`), and anything shaped like a credential header or a bearer token are replaced by
  the redaction marker, in the message, its arguments and any traceback.

The filter is the last line of defence: code logs no secret on purpose, and provider text in
a verdict is redacted before anyone logs it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator

from llmconn.model.redact import MARKER, Part, Redactor, part
from llmconn.model.text import printable

# Loggers of the HTTP stacks (probes, the operator's API client, Kopf's) and of the MCP SDK.
RAW_LOGGERS = (
    "hpack",
    "h2",
    "httpcore2",
    "httpx2",
    "httpcore",
    "httpx",
    "mcp",
    "aiohttp",
    "botocore",  # logs SigV4's canonical request at debug level, security token included
)

# "Authorization: Bearer x", "'x-api-key': 'x'", "(b'api-key', b'x')", "Bearer x", "Basic x".
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|cookie"
    r"|x-amz-security-token)"
    r"""(["']?\s*[:=,]\s*(?-i:b)?["']?\s*)(?:(?:bearer|basic)\s+)?[^\s"',;)}\]]+"""
)
_TOKEN = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{6,}")


class _Live:
    """The secret values in use right now, counted (two probes may share a key), each with
    its forms made once (`redact.part`): a change of what is in use rebuilds no forms."""

    def __init__(self) -> None:
        self._values: Counter[str] = Counter()
        self._parts: dict[str, Part] = {}  # value -> its redact.part
        self._permanent: set[str] = set()
        self._redactor: Redactor | None = Redactor(())
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> list[Part]:
        """Counts these values in; returns their parts (held here while they are in use)."""
        values = [v for v in values if v]
        made = {v: part(v) for v in values if v not in self._parts}  # cached: a lookup
        with self._lock:
            self._values.update(values)
            self._parts.update((v, p) for v, p in made.items() if p is not None)
            self._redactor = None
            return [self._parts[v] for v in dict.fromkeys(values) if v in self._parts]

    def remove(self, values: Iterable[str]) -> None:
        with self._lock:
            self._values.subtract(v for v in values if v)
            self._values = +self._values  # drop the ones no longer in use
            for value in [v for v in self._parts if v not in self._values]:
                if value not in self._permanent:
                    del self._parts[value]
            self._redactor = None

    def protect(self, value: str) -> None:
        if value and value not in self._permanent:
            made = part(value)
            with self._lock:
                self._permanent.add(value)
                if made is not None:
                    self._parts[value] = made
                self._redactor = None

    @property
    def redactor(self) -> Redactor:
        redactor = self._redactor
        if redactor is None:  # a list of the parts, remade only after a change
            with self._lock:
                redactor = self._redactor = Redactor((), parts=list(self._parts.values()))
        return redactor


_LIVE = _Live()


@contextlib.contextmanager
def in_use(values: Iterable[str]) -> Iterator[list[Part]]:
    """Redact these values from every log record while the block runs; gives their parts,
    for a Redactor of the same values (`Redactor((), parts=...)`) that rebuilds none of them
    should the parts' cache have let them go meanwhile."""
    values = list(values)
    parts = _LIVE.add(values)
    try:
        yield parts
    finally:
        _LIVE.remove(values)


def protect(value: str) -> None:
    """Redact this value from every log record for the life of the process."""
    _LIVE.protect(value.removeprefix("Bearer ").strip())


def redact(text: str, *, lines: bool = False) -> str:
    """Redacted and printable: one line, unless `lines` (a traceback) keeps its line breaks."""
    text = _LIVE.redactor.text(text)
    text = _CREDENTIAL_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MARKER}", text)
    return printable(_TOKEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{MARKER}", text), lines=lines)


class RedactingFilter(logging.Filter):
    """Redacts each record once, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_llmconn_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: show the template, never the args
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(text, lines=True)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, lines=True)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, lines=True)
        record._llmconn_redacted = True
        return True


_FILTER = RedactingFilter()


def guard() -> None:
    """Apply both rules to the logging set up so far (call after handlers are installed)."""
    for name in RAW_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def setup(level: str, prefix: str) -> None:
    """Plain logging to stderr for commands that are not the operator (`llmconn validate`)."""
    logging.basicConfig(
        level=level.upper(), format=f"{prefix}: %(levelname)s %(name)s: %(message)s", force=True
    )
    guard()
