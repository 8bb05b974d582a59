"""DashScope (Alibaba Cloud Model Studio) in OpenAI-compatible mode; the model must be listed.

Keys only work in their own region: an international key sent to the Beijing endpoint (or the
reverse) is refused with 401, so a bad-key message also points at the endpoint.
"""

from __future__ import annotations

import dataclasses

from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, registry
from llmconn.probes.openai_style import Flavour, check
from llmconn.reasons import Reason

FLAVOUR = Flavour()
_REGION_HINT = (
    " DashScope keys work only in their region: check that spec.endpoint is the key's region "
    "(dashscope-intl.aliyuncs.com international, dashscope.aliyuncs.com Beijing)."
)


@registry.provider(
    "dashscope",
    default_endpoint="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
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
