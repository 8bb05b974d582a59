"""What every dialect server keeps between requests, for its answers and for tests to assert on."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import Request

MAX_SEEN = 1000  # requests kept: the benchmark sends millions


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None


async def seen(request: Request) -> Seen:
    """Read a request into a Seen (its JSON body, if it has one)."""
    try:
        body = await request.json() if request.method in ("POST", "PUT", "PATCH") else None
    except ValueError:
        body = None
    return Seen(
        request.method,
        request.url.path,
        request.url.query,
        {k.lower(): v for k, v in request.headers.items()},
        body,
    )


@dataclass(kw_only=True)
class DialectState:
    """The state every dialect server shares: the behaviour it plays ("ok", or one of the
    failures its BEHAVIOURS name), the latest requests it received, and how many answers it
    generated (the calls that would spend tokens). A dialect adds what it serves."""

    BEHAVIOURS: ClassVar[frozenset[str]] = frozenset({"ok"})

    behaviour: str = "ok"
    seen: deque[Seen] = field(default_factory=lambda: deque(maxlen=MAX_SEEN))
    generated: int = 0

    def __post_init__(self) -> None:
        self._known(self.behaviour)

    def reset(self, behaviour: str = "ok") -> None:
        """Play `behaviour` from now on, with no memory of earlier requests."""
        self._known(behaviour)
        self.behaviour = behaviour
        self.seen.clear()
        self.generated = 0

    async def record(self, request: Request) -> Seen:
        """Keep the request; returns it (with its JSON body) for the handler."""
        self.seen.append(found := await seen(request))
        return found

    def _known(self, behaviour: str) -> None:
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {sorted(self.BEHAVIOURS)}")
