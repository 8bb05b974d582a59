"""DashScope (Alibaba Cloud Model Studio) in OpenAI-compatible mode; the model must be listed.

Keys only work in their own region: a key of one region sent to another region's endpoint is
refused with 401, so a bad-key message also names the regional endpoints.

Two answers need DashScope's own reading:
- 429 Throttling.AllocationQuota is most often the per-minute (RPM/TPM) allocation, which
  "typically resumes within one minute" (Model Studio, rate limiting best practices): it is
  RateLimited, waiting a minute unless Retry-After says otherwise. An unpaid account
  (Arrearage) stays QuotaExceeded.
- Qwen3's hybrid-thinking models refuse a non-streaming call unless thinking is off
  (`enable_thinking: false`, Model Studio error codes), so the test completion turns it off;
  models without thinking ignore the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmconn.model.reasons import Reason
from llmconn.net.exchange import Reply
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, registry
from llmconn.probes.errors import classify_error, parse_error, rate_limited
from llmconn.probes.openai_style import TEST_MAX_TOKENS, Flavour, check

PER_MINUTE = 60.0  # seconds a per-minute allocation takes to refill
_REGION_HINT = (
    " DashScope keys work only in their region: check that spec.endpoint is the key's region "
    "(Singapore https://dashscope-intl.aliyuncs.com/compatible-mode/v1, China (Beijing) "
    "https://dashscope.aliyuncs.com/compatible-mode/v1, US (Virginia) "
    "https://dashscope-us.aliyuncs.com/compatible-mode/v1, or the access domain your "
    "workspace's console shows, as for China (Hong Kong))."
)


def completion_fields(model: str) -> dict[str, Any]:
    return {"max_tokens": TEST_MAX_TOKENS, "temperature": 0, "enable_thinking": False}


def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    err = parse_error(reply.json())
    if err is not None and err.code == "Throttling.AllocationQuota":
        said = f": {err.message.rstrip('. ')}" if err.message else ""
        return rate_limited(
            reply.headers,
            f"DashScope is throttling this key (HTTP {reply.status} {err.code}){said}. This is "
            "usually the per-minute allocation; if it persists, raise the model's quota.",
            http_status=reply.status,
            code=err.code,
            wait=PER_MINUTE,
        )
    return classify_error(ctx, reply, what)


FLAVOUR = Flavour(completion_fields=completion_fields, classify=classify)


@registry.provider(
    "dashscope",
    default_endpoint="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    api_path="/compatible-mode/v1",
    title="Alibaba Cloud Model Studio (DashScope, OpenAI-compatible mode)",
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    try:
        return await check(ctx, FLAVOUR)
    except ProbeFailure as failure:
        if failure.outcome.reason is not Reason.INVALID_API_KEY:
            raise
        outcome = failure.outcome
        return dataclasses.replace(outcome, message=outcome.message + _REGION_HINT)
