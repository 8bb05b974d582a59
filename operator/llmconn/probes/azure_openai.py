"""Azure OpenAI probe: one call to the deployment, which costs nothing below Inference.

Azure offers no free read that proves a deployment: the resource's model list is its
catalogue, not its deployments, and the data-plane deployment list is gone from current
api-versions. So every validation type calls the deployment's chat completions:

POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...

For Connectivity and Model the body is invalid on purpose: an empty `messages` list. Azure
checks a request in layers: the key at its gateway (401), then the deployment while routing
(404 DeploymentNotFound), and only then the body, in the deployment's model service (400).
A 400 that complains about `messages` therefore proves both the key and the deployment, and
no token was processed, so nothing is billed. Any other 400 proves nothing (an unsupported
api-version, a deployment whose model does not chat) and is reported as what it is. An empty
list is used rather than `max_tokens: 0` because newer reasoning deployments refuse
`max_tokens` itself, which would blur which defect was refused.

Inference sends one real completion capped at 16 tokens; reasoning deployments refuse
`max_tokens`, so a 400 naming `max_completion_tokens` is retried once with that cap instead
(it bounds reasoning tokens too).

An endpoint ending in /openai/v1 is Azure's newer surface: POST {endpoint}/chat/completions
with the deployment as `model` and no api-version.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.reasons import Reason
from llmconn.spec import AzureSpec, ValidationType

MAX_TOKENS = 16
PROMPT = "Reply with the single word OK."


@registry.provider(
    "azure-openai",
    default_endpoint=None,
    auth=Auth.AZURE,
    title="Azure OpenAI",
    requires=("azure",),
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    if ctx.azure is None:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                "Provider azure-openai needs spec.azure.deployment.",
            )
        )
    if ctx.validation_type is ValidationType.INFERENCE:
        return await _complete(ctx, ctx.azure)
    return await _touch(ctx, ctx.azure)


async def _touch(ctx: ProbeContext, azure: AzureSpec) -> ProbeOutcome:
    """Prove key and deployment with a request the deployment refuses before any token."""
    deployment = azure.deployment
    what = f"deployment {deployment}"
    reply = await _chat(ctx, azure, {"messages": []})
    if reply.status == 400 and _refused_messages(reply):
        return ok(
            f"The key is valid and deployment {deployment} exists (checked with a request "
            "it refuses before generating, so no tokens were spent).",
            reply,
        )
    _read(ctx, reply, what)
    return ok(f"The key is valid and deployment {deployment} answered.", reply)


async def _complete(ctx: ProbeContext, azure: AzureSpec) -> ProbeOutcome:
    deployment = azure.deployment
    what = f"deployment {deployment}"
    messages = [{"role": "user", "content": PROMPT}]
    reply = await _chat(ctx, azure, {"messages": messages, "max_tokens": MAX_TOKENS})
    if reply.status == 400 and "max_completion_tokens" in _message(reply).lower():
        body = {"messages": messages, "max_completion_tokens": MAX_TOKENS}
        reply = await _chat(ctx, azure, body)
    body = _read(ctx, reply, what)
    served = body.get("model")
    details = {"servedModel": served[:128]} if isinstance(served, str) else {}
    return ok(
        f"Deployment {deployment} answered a {MAX_TOKENS}-token test completion.",
        reply,
        **details,
    )


async def _chat(ctx: ProbeContext, azure: AzureSpec, body: dict[str, Any]) -> Reply:
    if urlsplit(ctx.endpoint).path.rstrip("/").endswith("/openai/v1"):
        return await ctx.request(
            "POST", "/chat/completions", json_body={**body, "model": azure.deployment}
        )
    return await ctx.request(
        "POST",
        f"/openai/deployments/{quote(azure.deployment, safe='')}/chat/completions",
        params={"api-version": azure.api_version},
        json_body=body,
    )


def _read(ctx: ProbeContext, reply: Reply, what: str) -> Any:
    return read_json(
        ctx, reply, what, fits=has("choices", list), expected="`choices`", classify=_classify
    )


def _error(reply: Reply) -> dict[str, Any] | None:
    body = reply.json()
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _message(reply: Reply) -> str:
    error = _error(reply)
    return str(error.get("message") or "") if error is not None else ""


def _refused_messages(reply: Reply) -> bool:
    """The model service's answer to our empty list: "[] is too short - 'messages'" and the
    like, or param "messages"."""
    error = _error(reply)
    if error is None:
        return False
    return "messages" in f"{error.get('message')} {error.get('param')}".lower()


def _classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
    deployment = ctx.azure.deployment if ctx.azure else ""
    error = _error(reply)
    code = str(error.get("code")) if error is not None and error.get("code") else None
    message = _message(reply).rstrip(".")
    said = f": {message.rstrip('. ')}" if message else ""
    host = urlsplit(ctx.endpoint).hostname

    def out(reason: Reason, text: str) -> ProbeOutcome:
        return ProbeOutcome(reason, text, http_status=reply.status, code=code)

    if reply.status == 401:
        # Azure words it "invalid subscription key or wrong API endpoint": it cannot tell.
        return out(
            Reason.INVALID_API_KEY,
            f"Azure rejected the API key for {host} (HTTP 401){said}; {ctx.key_hint}, "
            "and check that spec.endpoint is the resource the key belongs to.",
        )
    if reply.status == 404 and code == "DeploymentNotFound":
        return out(
            Reason.MODEL_NOT_FOUND,
            f"Deployment {deployment} does not exist on {host} (HTTP 404 DeploymentNotFound). "
            "Check spec.azure.deployment; a deployment created less than about 5 minutes ago "
            "may not be visible yet.",
        )
    if reply.status == 404 and error is not None:
        return out(
            Reason.UNEXPECTED_RESPONSE,
            f"The call to {what} reached no Azure OpenAI API "
            f"(HTTP 404{' ' + code if code else ''}){said}. Check spec.endpoint "
            "(https://<resource>.openai.azure.com, without /openai) and spec.azure.apiVersion.",
        )
    if reply.status == 400 and "api version" in message.lower().replace("-", " "):
        return out(
            Reason.INVALID_CONFIGURATION,
            f"Azure does not accept api-version {ctx.azure.api_version if ctx.azure else ''} "
            f"(HTTP 400{' ' + code if code else ''}){said}. Set spec.azure.apiVersion to a "
            "supported version.",
        )
    return classify_error(ctx, reply, what)
