"""A loopback server speaking Ollama's native API: /api/tags, /api/show, /api/generate, /api/chat.

Ollama has no authentication; pass `token=` to play an Ollama behind a proxy that demands
`Authorization: Bearer`. Names without a tag mean `:latest`, as in Ollama. Errors have
Ollama's shape `{"error": "..."}` (a missing model is a 404 "model 'x' not found"); unknown
paths get Go's plain-text "404 page not found". `state.behaviour` selects a failure to play.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from servers.recording import DialectState

# name -> (parameter size, quantization)
MODELS = {
    "llama3.2:latest": ("3.2B", "Q4_K_M"),
    "qwen3:8b": ("8.2B", "Q4_K_M"),
    "nomic-embed-text:latest": ("137M", "F16"),
}

BEHAVIOURS = frozenset(
    {
        "ok",
        "busy",  # 503 "server busy": OLLAMA_MAX_QUEUE exceeded
        "oom",  # 500: the model does not fit in memory
        "rate_limited",  # 429 from a fronting proxy, Retry-After 30
        "html",
        "invalid_json",
        "wrong_shape",
    }
)


@dataclass
class OllamaState(DialectState):
    BEHAVIOURS = BEHAVIOURS

    token: str | None = None
    models: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(MODELS))
    retry_after: int = 30

    def find(self, name: str) -> str | None:
        full = name if ":" in name else f"{name}:latest"
        return full if full in self.models else None


def make_app(
    *,
    token: str | None = None,
    models: dict[str, tuple[str, str]] | None = None,
    behaviour: str = "ok",
) -> Starlette:
    state = OllamaState(token=token)
    if models is not None:
        state.models = dict(models)
    state.reset(behaviour)

    def fail(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def gate(request: Request) -> tuple[Any, Response | None]:
        seen = await state.record(request)
        body = seen.body
        if state.token and request.headers.get("authorization") != f"Bearer {state.token}":
            return body, fail(401, "unauthorized")
        match state.behaviour:
            case "busy":
                return body, fail(
                    503, "server busy, please try again.  maximum pending requests exceeded"
                )
            case "oom":
                return body, fail(
                    500,
                    "model requires more system memory (12.0 GiB) than is available (4.0 GiB)",
                )
            case "rate_limited":
                return body, fail(
                    429, "rate limit exceeded", {"retry-after": str(state.retry_after)}
                )
            case "html":
                return body, Response(
                    "<!DOCTYPE html><html><body>Welcome to nginx!</body></html>",
                    media_type="text/html",
                )
            case "invalid_json":
                return body, Response('{"models": [', media_type="application/json")
            case "wrong_shape":
                return body, JSONResponse({"status": "Ollama is running"})
        return body, None

    def model_of(body: Any) -> tuple[str | None, Response | None]:
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return None, fail(400, "model is required")
        return name, None

    async def tags(request: Request) -> Response:
        _, refused = await gate(request)
        if refused:
            return refused
        return JSONResponse(
            {
                "models": [
                    {
                        "name": name,
                        "model": name,
                        "modified_at": "2025-10-01T12:00:00Z",
                        "size": 2019393189,
                        "digest": "a80c4f17acd5" + "0" * 52,
                        "details": {"parameter_size": size, "quantization_level": quant},
                    }
                    for name, (size, quant) in state.models.items()
                ]
            }
        )

    async def show(request: Request) -> Response:
        body, refused = await gate(request)
        if refused:
            return refused
        name, refused = model_of(body)
        if refused or name is None:
            return refused or fail(400, "model is required")
        full = state.find(name)
        if full is None:
            return fail(404, f"model '{name}' not found")
        size, quant = state.models[full]
        return JSONResponse(
            {
                "modelfile": f"FROM {full}\n",
                "parameters": "stop <|eot_id|>",
                "template": "{{ .Prompt }}",
                "details": {
                    "format": "gguf",
                    "family": full.split(":")[0],
                    "parameter_size": size,
                    "quantization_level": quant,
                },
                "model_info": {"general.architecture": "llama"},
                "capabilities": ["embedding"] if "embed" in full else ["completion", "tools"],
            }
        )

    async def generate(request: Request) -> Response:
        body, refused = await gate(request)
        if refused:
            return refused
        name, refused = model_of(body)
        if refused or name is None:
            return refused or fail(400, "model is required")
        full = state.find(name)
        if full is None:
            return fail(404, f'model "{name}" not found, try pulling it first')
        if "embed" in full:
            return fail(400, f'"{name}" does not support generate')
        state.generated += 1
        chat = request.url.path == "/api/chat"

        def part(text: str, **last: Any) -> dict[str, Any]:
            said = {"message": {"role": "assistant", "content": text}} if chat else {}
            return {
                "model": full,
                "created_at": "2026-01-01T00:00:00Z",
                **(said or {"response": text}),
                "done": bool(last),
                **last,
            }

        done = {"done_reason": "stop", "eval_count": 2}
        if body.get("stream", True) is not False:
            # Streaming is the default: one JSON object a line, the last with done true and
            # the counts (Ollama's docs/api.md; ollama `_client.py` reads it line by line).
            lines = [part("O"), part("K"), part("", **done)]
            return Response(
                "".join(json.dumps(line) + "\n" for line in lines),
                media_type="application/x-ndjson",
            )
        return JSONResponse(part("OK", **done))

    async def not_found(request: Request) -> Response:
        await gate(request)
        return PlainTextResponse("404 page not found", status_code=404)

    app = Starlette(
        routes=[
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/show", show, methods=["POST"]),
            Route("/api/generate", generate, methods=["POST"]),
            Route("/api/chat", generate, methods=["POST"]),
            Route("/{path:path}", not_found, methods=["GET", "POST"]),
        ]
    )
    app.state.dialect = state
    return app
