"""What a dialect server remembers of each request, for tests to assert on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request


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
