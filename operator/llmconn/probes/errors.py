"""Reading a provider's answer: its JSON when the call succeeded, else a classified error.

`read_json` is the one path of every native probe: status -> classified error, JSON -> the
expected shape -> the body. Errors are classified on status code AND body: providers disagree
on codes (Gemini's bad key is a 400, Anthropic's empty balance a 400, DeepSeek's a 402,
DashScope's unpaid account a 403, some gateways send errors with HTTP 200), so the body's own
code, type and message are read first, the HTTP status second. A provider with its own error
dialect passes its reading as `classify`, falling back to `classify_error`.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmconn.model.reasons import Reason
from llmconn.net.exchange import REQUEST_ID_HEADERS, Reply
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome

Classify = Callable[[ProbeContext, Reply, str], ProbeOutcome]


@dataclass(frozen=True)
class ErrorBody:
    """The error fields every dialect has some of."""

    code: str | None = None  # provider's own code: invalid_api_key, API_KEY_INVALID, ...
    type: str | None = None  # OpenAI type / Anthropic error.type / Gemini status
    message: str = ""
    numeric: int | None = None  # an HTTP-like code inside the body (vLLM, OpenRouter)

    @property
    def words(self) -> str:
        return " ".join(filter(None, (self.code, self.type, self.message))).lower()


def parse_error(body: Any) -> ErrorBody | None:
    """Read the error shapes of OpenAI, Anthropic, Gemini, vLLM, DashScope, Azure, Ollama."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, str):  # Ollama: {"error": "model 'x' not found"}
        return ErrorBody(message=err)
    if isinstance(err, dict):
        code = err.get("code")
        numeric = _http_code(code)
        details = err.get("details")
        reasons = [
            d.get("reason")
            for d in (details if isinstance(details, list) else [])
            if isinstance(d, dict) and isinstance(d.get("reason"), str)
        ]
        text_code = reasons[0] if reasons else (code if isinstance(code, str) else None)
        etype = err.get("type") or err.get("status")
        return ErrorBody(
            code=text_code,
            type=etype if isinstance(etype, str) else None,
            message=str(err.get("message") or ""),
            numeric=numeric,
        )
    if body.get("object") == "error" or ("code" in body and "message" in body):
        # vLLM flat error, DashScope native error.
        code = body.get("code")
        return ErrorBody(
            code=code if isinstance(code, str) else None,
            type=body.get("type") if isinstance(body.get("type"), str) else None,
            message=str(body.get("message") or ""),
            numeric=_http_code(code),
        )
    return None


def _http_code(code: Any) -> int | None:
    """An HTTP status carried in a body's "code" (vLLM, OpenRouter); not a bool, in range."""
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
        return code
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None when
    absent or unreadable. Never raises, never infinite or negative."""
    value = headers.get("retry-after")
    if not value:
        ms = _seconds(headers.get("retry-after-ms"))
        return ms / 1000 if ms is not None else None
    if (seconds := _seconds(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        # A date without a zone is naive: timestamp() then goes through the local clock,
        # which refuses years it cannot represent.
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _seconds(value: str | None) -> float | None:
    # isdigit() admits "²" and "٣", which float() may refuse; "999...9" overflows to inf.
    if not value or not value.replace(".", "", 1).isdigit():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def rate_limited(
    headers: Mapping[str, str],
    message: str,
    *,
    http_status: int,
    code: str | None = None,
    wait: float | None = None,
) -> ProbeOutcome:
    """RateLimited, waiting as Retry-After says (else `wait`, a provider's own hint), and the
    message saying so."""
    found = retry_after(headers)
    wait = found if found is not None else wait
    hint = f" Retrying after {wait:.0f}s." if wait is not None else ""
    return ProbeOutcome(
        Reason.RATE_LIMITED, message + hint, http_status=http_status, code=code, retry_after=wait
    )


_QUOTA_WORDS = (
    "insufficient_quota",
    "credit balance",
    "insufficient balance",
    "arrearage",
    "billing",
    # LiteLLM proxy budgets (type budget_exceeded, "Budget has been exceeded! Current cost:
    # ..."), sent as 400 or 429: a spend ceiling that waiting does not lift.
    "budget_exceeded",
    "budget has been exceeded",
    "exceeded your current quota",
    "out of credits",
)
_BAD_KEY_WORDS = (
    "invalid_api_key",
    "api_key_invalid",
    "invalidapikey",
    "authentication_error",
    "incorrect api key",
    "invalid api key",
    "invalid subscription key",
)
_OVERLOADED_WORDS = ("overloaded", "engine is currently", "server is busy")


def classify_error(ctx: ProbeContext, reply: Reply, what: str = "the request") -> ProbeOutcome:
    """Turn a non-success answer into a reason with a message that says what to do.

    `what` names the call for the message ("the model list", "model gpt-4o").
    """
    status = reply.status
    body = reply.json()
    err = parse_error(body)
    if err is None and (reply.is_html or (body is None and reply.content.strip())):
        if status >= 500:
            return _out(
                Reason.PROVIDER_UNAVAILABLE,
                reply,
                None,
                f"The provider is unavailable (HTTP {status}).",
            )
        return _out(
            Reason.UNEXPECTED_RESPONSE,
            reply,
            None,
            f"{_cap(what)} returned HTTP {status} with a body that is not the provider's "
            f"API (content-type {reply.headers.get('content-type') or 'none'}). "
            "Check spec.endpoint.",
        )
    err = err or ErrorBody()
    words = err.words
    code = err.code or err.type
    if status == 200 and err.numeric and err.numeric >= 400:
        status = err.numeric  # an error body sent with HTTP 200
    said = f": {err.message.rstrip('. ')}" if err.message else ""
    tag = f"HTTP {status}{' ' + code if code else ''}"

    if any(w in words for w in _QUOTA_WORDS) or status == 402:
        return _out(
            Reason.QUOTA_EXCEEDED,
            reply,
            code,
            f"The account is out of credits or quota ({tag}){said}. "
            "Add credit or raise the quota with the provider.",
        )
    if status == 401 or any(w in words for w in _BAD_KEY_WORDS):
        return _out(
            Reason.INVALID_API_KEY,
            reply,
            code,
            f"The provider rejected the API key ({tag}){said}; {ctx.key_hint}.",
        )
    if status == 403 or "permission" in words or "failed_precondition" in words:
        return _out(
            Reason.PERMISSION_DENIED,
            reply,
            code,
            f"The key is valid but not allowed to do this ({tag}){said}. "
            "Check the key's project, region and permissions.",
        )
    if status == 429:
        if any(w in words for w in _OVERLOADED_WORDS):
            return _out(
                Reason.PROVIDER_UNAVAILABLE,
                reply,
                code,
                f"The provider is overloaded ({tag}){said}.",
            )
        return rate_limited(
            reply.headers,
            f"The provider is rate limiting this key ({tag}){said}.",
            http_status=reply.status,
            code=code,
        )
    # DeepSeek answers an unknown model with 400 "Model Not Exist".
    if status == 404 or any(w in words for w in ("not_found", "notfound", "model not exist")):
        if err == ErrorBody():
            return _out(
                Reason.UNEXPECTED_RESPONSE,
                reply,
                code,
                f"{_cap(what)} answered HTTP 404 without a provider error: the path does "
                "not exist there. Check spec.endpoint (the base URL the SDK takes).",
            )
        return _out(
            Reason.MODEL_NOT_FOUND,
            reply,
            code,
            f"{_cap(what)} was not found ({tag}){said}. Check spec.model.",
        )
    if status >= 500 or status == 529:
        return _out(
            Reason.PROVIDER_UNAVAILABLE, reply, code, f"The provider is unavailable ({tag}){said}."
        )
    if status in (400, 422):
        return _out(
            Reason.INVALID_CONFIGURATION,
            reply,
            code,
            f"The provider refused {what} as invalid ({tag}){said}. Check the spec.",
        )
    return _out(
        Reason.UNEXPECTED_RESPONSE,
        reply,
        code,
        f"{_cap(what)} returned an unexpected answer ({tag}){said}.",
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _out(reason: Reason, reply: Reply, code: str | None, message: str) -> ProbeOutcome:
    return ProbeOutcome(reason, message, http_status=reply.status, code=code)


def _not_the_api(
    reply: Reply, what: str, expected: str, endpoint: str | None = None
) -> ProbeOutcome:
    """A success status whose body is not the provider's answer (a portal's HTML page, broken
    JSON, JSON of another shape). `endpoint` says what spec.endpoint should be."""
    body = reply.json()
    if reply.is_html:
        found = "an HTML page"
    elif body is None:
        found = "a body that is not JSON"
    else:
        found = f"JSON without {expected}"
    return _out(
        Reason.UNEXPECTED_RESPONSE,
        reply,
        None,
        f"{_cap(what)} returned HTTP {reply.status} with {found}: that is not the provider's "
        f"API. Check spec.endpoint{f' ({endpoint})' if endpoint else ''}.",
    )


def has(name: str, kind: type | tuple[type, ...]) -> Callable[[Any], bool]:
    """A shape for `read_json`: a JSON object whose `name` is of `kind`."""
    return lambda body: isinstance(body, dict) and isinstance(body.get(name), kind)


def read_json(
    ctx: ProbeContext,
    reply: Reply,
    what: str,
    *,
    fits: Callable[[Any], bool],
    expected: str,
    classify: Classify = classify_error,
    endpoint: str | None = None,
) -> Any:
    """The JSON body of a successful answer of the expected shape, as every native probe
    reads one. Raises ProbeFailure: the classified error for an error status, or for an error
    body sent with a success status (some gateways do that); UnexpectedResponse for a success
    that is not JSON of that shape. `what` names the call in messages ("the model list"),
    `expected` the shape ("a `data` list"), `endpoint` what spec.endpoint should be."""
    body = reply.json()
    _note_request_id(ctx, reply, body)
    if not 200 <= reply.status < 300 or parse_error(body) is not None:
        raise ProbeFailure(classify(ctx, reply, what))
    if not fits(body):
        raise ProbeFailure(_not_the_api(reply, what, expected, endpoint))
    return body


def _note_request_id(ctx: ProbeContext, reply: Reply, body: Any) -> None:
    # Anthropic, DashScope and Mistral may put the request id in the body, not in a header.
    if any(name in reply.headers for name in REQUEST_ID_HEADERS):
        return
    if isinstance(body, dict) and isinstance(body.get("request_id"), str) and body["request_id"]:
        ctx.found.request_id = body["request_id"][:128]
