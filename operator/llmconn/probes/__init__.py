"""Provider probes: one module per provider, registered under its name in one registry.

The registry is the only list of providers: the CRD's enum, the CLI and the docs are checked
against it by tests. Importing this package imports every provider module, which registers
itself with `@registry.provider(...)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmconn.probes.base import ProbeContext, ProbeOutcome

ProbeFn = Callable[["ProbeContext"], Awaitable["ProbeOutcome"]]


class Auth(StrEnum):
    """How the API key goes out: the header each provider's SDK uses."""

    BEARER = "bearer"  # Authorization: Bearer <key>
    X_API_KEY = "x-api-key"  # Anthropic
    GOOG = "x-goog-api-key"  # Gemini
    AZURE = "api-key"  # Azure OpenAI

    @property
    def header(self) -> str:
        """The request header the key goes in, lower case."""
        return "authorization" if self is Auth.BEARER else self.value


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    probe: ProbeFn
    default_endpoint: str | None  # None: spec.endpoint is required
    auth: Auth
    title: str  # for docs and CLI help
    inference: bool = True  # whether Inference validation is possible


class Registry:
    def __init__(self) -> None:
        self._providers: dict[str, ProviderInfo] = {}

    def provider(
        self,
        name: str,
        *,
        default_endpoint: str | None,
        auth: Auth = Auth.BEARER,
        title: str,
        inference: bool = True,
    ) -> Callable[[ProbeFn], ProbeFn]:
        def register(fn: ProbeFn) -> ProbeFn:
            if name in self._providers:
                raise ValueError(f"provider {name!r} registered twice")
            self._providers[name] = ProviderInfo(
                name=name,
                probe=fn,
                default_endpoint=default_endpoint,
                auth=auth,
                title=title,
                inference=inference,
            )
            return fn

        return register

    def get(self, name: str) -> ProviderInfo:
        _load()
        return self._providers[name]

    def names(self) -> list[str]:
        _load()
        return sorted(self._providers)


registry = Registry()

_SHARED = frozenset({"base", "errors", "openai_style"})
_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        # Every module in this package but the shared ones is a provider.
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_") and module.name not in _SHARED:
                importlib.import_module(f"{__name__}.{module.name}")
