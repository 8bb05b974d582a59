"""Provider probes: one module per provider, each registered under its name in one registry.

The registry (`llmconn.probes.base.registry`) is the only list of providers: the spec model
is checked against its declarations (`parse_spec`), and the CRD's enum and rules, the CLI and
the docs are checked against it by tests. This package imports every provider module, so
whoever imports it finds the registry complete; provider modules import only `base` and the
shared parts, never this package. A new provider module is added to the list below (a test
names any module left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmconn.model.spec import LLMConnectionSpec, parse
from llmconn.probes import (  # noqa: F401  (each registers itself on import)
    anthropic,
    azure_openai,
    bedrock,
    dashscope,
    deepseek,
    gemini,
    groq,
    mcp,
    mistral,
    ollama,
    openai,
    openai_compatible,
    openrouter,
    together,
    vertex_ai,
    xai,
)
from llmconn.probes.base import registry

__all__ = ["parse_spec", "registry"]


def parse_spec(raw: Mapping[str, Any]) -> LLMConnectionSpec:
    """Parse a manifest's spec against the registered providers; raises
    pydantic.ValidationError naming the field."""
    return parse(raw, registry.providers)
