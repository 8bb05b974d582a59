"""Gemini probe: the Generative Language API's model list, model lookup and one tiny generation.

The key goes in `x-goog-api-key`, never in the `?key=` query parameter, so it cannot land in
a proxy's access log. spec.model may be "gemini-2.5-flash" or the resource name
"models/gemini-2.5-flash" (or "tunedModels/..."), as the SDKs accept both.

Gemini's error dialect needs its own reading before the shared classification:
- a bad key is a 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID (or _EXPIRED);
- 400 FAILED_PRECONDITION (free tier not offered in the caller's region, billing not enabled)
  is PermissionDenied even though its message says "billing": the key works, the project
  may not use the API from there;
- every 429 RESOURCE_EXHAUSTED says "You exceeded your current quota ... check your plan and
  billing details", per-minute limits included, so those words decide nothing. It is
  RateLimited (waiting helps; the wait comes from Retry-After or the RetryInfo detail),
  unless waiting cannot help: a QuotaFailure whose limit is 0 (the model has no quota at all
  on this project's tier) or depleted prepaid credits, which are QuotaExceeded. A per-day
  limit is still RateLimited, with the quota named in the message.

Inference keeps thinking small so a probe cannot spend thousands of thinking tokens. Gemini 3
and later take `thinkingLevel` (LOW: every Gemini 3 model accepts it) and Gemini 3.5 and later
refuse `thinkingBudget` (google-genai `types.py`, ThinkingConfig), so a model named Gemini 3 or
later gets the level and never both; older models get thinking off (thinkingBudget 0). A name
without a version (an alias such as gemini-flash-latest) gets the budget first. A 400 about
thinking is answered with one more try in the other style; models that only work in thinking
mode refuse a budget of 0, and are tried with the smallest budget they accept.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.net.exchange import Reply
from llmconn.net.oauth import google_error
from llmconn.probes.base import Auth, ProbeContext, ProbeOutcome, ok, registry
from llmconn.probes.errors import Classify, classify_error, has, rate_limited, read_json

PAGE_SIZE = "1000"  # the API's largest page: one page counts every model
MAX_OUTPUT_TOKENS = 16
MIN_THINKING_BUDGET = 128  # the smallest budget thinking-only models (2.5 Pro) accept
THINKING_LEVEL = "LOW"  # the least level every Gemini 3 model accepts (MINIMAL: Flash only)
_GENERATION = re.compile(r"gemini-(\d+(?:\.\d+)?)")
PROMPT = "Reply with the single word OK."
_DELAY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")  # google.protobuf.Duration in JSON: "21.5s"
_DEPLETED_WORDS = ("prepayment", "credits are depleted", "credit balance")

Send = Callable[[dict[str, Any]], Awaitable[Reply]]  # posts one GenerateContentRequest


@registry.provider(
    "gemini",
    default_endpoint="https://generativelanguage.googleapis.com/v1beta",
    api_path="/v1beta",  # google-genai takes the host and the API version apart
    auth=Auth.GOOG,
    title="Google Gemini",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    if ctx.validation_type is ValidationType.CONNECTIVITY:
        return await _list_models(ctx)
    model = ctx.required_model()
    if ctx.validation_type is ValidationType.MODEL:
        return await _get_model(ctx, model)
    return await _generate(ctx, model)


def resource_name(model: str) -> str:
    """gemini-2.5-flash -> models/gemini-2.5-flash; names with a collection stay as given."""
    return model if "/" in model else f"models/{model}"


async def _list_models(ctx: ProbeContext) -> ProbeOutcome:
    reply = await ctx.request("GET", "/models", params={"pageSize": PAGE_SIZE})
    if reply.status == 404:
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"There is no model list at {ctx.endpoint}/models (HTTP 404). spec.endpoint "
            "includes the API version: https://generativelanguage.googleapis.com/v1beta.",
            http_status=reply.status,
        )
    body = _read(ctx, reply, "the model list", has("models", list), "a `models` list")
    count = f"{len(body['models'])}{'+' if body.get('nextPageToken') else ''}"
    return ok(
        f"The Gemini API accepted the key; {count} models are available.",
        reply,
        modelCount=count,
    )


async def _get_model(ctx: ProbeContext, model: str) -> ProbeOutcome:
    reply = await ctx.request("GET", "/" + quote(resource_name(model), safe="/"))
    _read(ctx, reply, f"model {model}", has("name", str), "a model `name`")
    return ok(f"The key is valid; model {model} is available.", reply)


async def _generate(ctx: ProbeContext, model: str) -> ProbeOutcome:
    path = "/" + quote(resource_name(model), safe="/") + ":generateContent"

    async def send(body: dict[str, Any]) -> Reply:
        return await ctx.request("POST", path, json_body=body)

    return await generate(ctx, model, send, _classify)


async def generate(ctx: ProbeContext, model: str, send: Send, classify: Classify) -> ProbeOutcome:
    """One generation of at most MAX_OUTPUT_TOKENS, thinking kept small (module doc); `send`
    posts a GenerateContentRequest where this API takes it (Vertex AI has the same one)."""
    styles: list[dict[str, Any]] = [{"thinkingBudget": 0}, {"thinkingLevel": THINKING_LEVEL}]
    if _generation_of(model) >= 3:
        styles.reverse()
    reply = await send(_generation(styles[0]))
    if reply.status == 400 and _needs_thinking(reply):
        budget: dict[str, Any] = {"thinkingBudget": MIN_THINKING_BUDGET}
        # A thinking-only model refuses budget 0; anything else refuses the style itself.
        retry = budget if "only works in thinking mode" in _error_message(reply) else styles[1]
        reply = await send(_generation(retry))
    body = read_json(
        ctx,
        reply,
        f"model {model}",
        fits=_is_generation,
        expected="`candidates`",
        classify=classify,
    )
    served = body.get("modelVersion")
    details = {"servedModel": served[:128]} if isinstance(served, str) else {}
    return ok(
        f"Model {model} answered a {MAX_OUTPUT_TOKENS}-token test generation.", reply, **details
    )


def _is_generation(body: Any) -> bool:
    # A prompt blocked by safety settings has promptFeedback and no candidates.
    return isinstance(body, dict) and (
        isinstance(body.get("candidates"), list) or isinstance(body.get("promptFeedback"), dict)
    )


def _read(
    ctx: ProbeContext, reply: Reply, what: str, fits: Callable[[Any], bool], expected: str
) -> Any:
    return read_json(ctx, reply, what, fits=fits, expected=expected, classify=_classify)


def _generation(thinking: dict[str, Any]) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": MAX_OUTPUT_TOKENS, "thinkingConfig": thinking},
    }


def _generation_of(model: str) -> float:
    """gemini-3.5-flash -> 3.5; 0 when the name says no version (aliases, tuned models)."""
    match = _GENERATION.search(model)
    return float(match.group(1)) if match else 0.0


def _error_message(reply: Reply) -> str:
    error = google_error(reply)
    return str(error.get("message") or "") if error is not None else ""


def _needs_thinking(reply: Reply) -> bool:
    """'Budget 0 is invalid. This model only works in thinking mode.'"""
    error = google_error(reply)
    return (
        error is not None
        and error.get("status") == "INVALID_ARGUMENT"
        and "thinking" in str(error.get("message") or "").lower()
    )


def _classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    error = google_error(reply)
    if error is None:
        return classify_error(ctx, reply, what)
    status = str(error.get("status") or "")
    message = str(error.get("message") or "")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = [str(d["reason"]) for d in details if isinstance(d.get("reason"), str)]
    said = f": {message.rstrip('.')}" if message else ""

    def out(reason: Reason, text: str, code: str | None = None) -> ProbeOutcome:
        return ProbeOutcome(reason, text, http_status=reply.status, code=code or status or None)

    if reply.status in (401, 403) and not _sent_credentials(ctx):
        return out(
            Reason.INVALID_API_KEY,
            f"Gemini needs an API key and none was sent (HTTP {reply.status} {status}); "
            f"{ctx.key_hint}.",
        )
    bad_key = [r for r in reasons if r in ("API_KEY_INVALID", "API_KEY_EXPIRED")]
    if bad_key:
        return out(
            Reason.INVALID_API_KEY,
            f"Gemini rejected the API key (HTTP {reply.status} {bad_key[0]}){said}; "
            f"{ctx.key_hint}.",
            bad_key[0],
        )
    if status == "FAILED_PRECONDITION":
        return out(
            Reason.PERMISSION_DENIED,
            f"Gemini refuses this project here (HTTP {reply.status} {status}){said}. Enable "
            "billing on the key's Google Cloud project, or call from a region where the "
            "free tier is offered.",
        )
    if reply.status == 429 or status == "RESOURCE_EXHAUSTED":
        return exhausted(reply, status, message, details)
    return classify_error(ctx, reply, what)


def exhausted(
    reply: Reply,
    status: str,
    message: str,
    details: list[dict[str, Any]],
    *,
    who: str = "Gemini is rate limiting this key",
    fix: str = "Enable billing or buy credits for the key's project, or pick a model its tier "
    "includes.",
) -> ProbeOutcome:
    """A 429 RESOURCE_EXHAUSTED: RateLimited unless waiting cannot help (module doc)."""
    violations = [
        v
        for d in details
        if str(d.get("@type", "")).endswith("QuotaFailure")
        for v in d.get("violations") or []
        if isinstance(v, dict)
    ]
    quotas = sorted({str(v.get("quotaId") or v.get("quotaMetric")) for v in violations} - {"None"})
    named = f" (quota {', '.join(quotas)})" if quotas else ""
    said = f": {message.rstrip('.')}" if message else ""
    no_quota = any(str(v.get("quotaValue")) == "0" for v in violations) or "limit: 0" in message
    if no_quota or any(w in message.lower() for w in _DEPLETED_WORDS):
        return ProbeOutcome(
            Reason.QUOTA_EXCEEDED,
            f"The project has no quota left for this{named} (HTTP {reply.status} {status})"
            f"{said}. {fix}",
            http_status=reply.status,
            code=status or None,
        )
    return rate_limited(
        reply.headers,
        f"{who}{named} (HTTP {reply.status} {status}){said}.",
        http_status=reply.status,
        code=status or None,
        wait=retry_delay(details),
    )


def _sent_credentials(ctx: ProbeContext) -> bool:
    """A key from apiKeySecretRef, or one the user put in headersFromSecret."""
    names = {name.lower() for name in ctx.headers}
    return bool(ctx.api_key) or not names.isdisjoint({"x-goog-api-key", "authorization"})


def retry_delay(details: list[dict[str, Any]]) -> float | None:
    """Seconds from a RetryInfo detail ("21.5s"), if there is one."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay") or ""))
            if match:
                return float(match.group(1))
    return None
