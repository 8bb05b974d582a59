"""Azure OpenAI probe: the resource's model list, then the deployment, free below Inference.

Connectivity is GET {endpoint}/openai/models?api-version=... ("Models - List" of the data
plane: the models the resource can use, with `lifecycle_status` and `deprecation` dates). It
is authenticated and free: it proves the key, the endpoint and the api-version, not a
deployment (the data-plane deployment list and GET were retired after api-version
2023-03-15-preview; deployments are listed by the management plane only).

Model proves the deployment without spending a token where Azure lets it: a chat completions
call with an invalid body (an empty `messages` list). Nothing confirms from a primary source
that Azure routes to the deployment before it reads the body, and on the /openai/v1 surface
the deployment is named in the body itself. So a 400 about `messages` counts as proof only
when the answer shows that the deployment handled it: the `x-ms-deployment-name` header that
Azure sets to the deployment serving a request (Microsoft's spillover traffic management
guide). Without that header the probe cannot tell a real deployment from a body check made
before routing, so it asks the deployment for one real completion capped at 16 tokens, and
says so: a deployment that does not exist is never reported Validated.

POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...

With spec.identity, an Entra ID access token goes as `Authorization: Bearer` instead of the
`api-key` (ProbeContext.auth_headers); a 401 PermissionDenied then means the identity has no
role on the resource.

Inference sends one real completion capped at 16 tokens; reasoning deployments refuse
`max_tokens`, so a 400 naming `max_completion_tokens` is retried once with that cap instead
(it bounds reasoning tokens too). A deployment whose model only the Responses API serves is
asked through POST /openai/v1/responses (`max_output_tokens` 16).

An endpoint ending in /openai/v1 is Azure's newer surface: GET {endpoint}/models, POST
{endpoint}/chat/completions and {endpoint}/responses with the deployment as `model` and no
api-version.

Lifecycle, wherever a completion showed which model the deployment serves (Inference, and
Model when the free check could not count): the answer's `model` is looked up, by exact id
(case aside), in the resource's model list, which is free. That list's `Model` object
(azure-rest-api-specs, data-plane authoring 2024-10-21 `azureopenai.json`) has
`lifecycle_status` and `deprecation.inference`, "the end date of inference support of this
model" in Unix seconds; the /openai/v1 list has neither (its `OpenAI.Model` is id, created,
object, owned_by), so that surface reads the classic list of the same resource. A date passed
is ModelRetired. A date ahead alone is not a deprecation: every model has one (the field is
required, and Microsoft's retirement policy sets a "not sooner than" date at launch, a year out
for GA models), so the model is deprecated only while `lifecycle_status` says so. Not
confirmed: that the answer's `model` is spelled as the list's id (no match: no lifecycle), and
the data plane's word for a deprecating model (the documented values are `preview` and
`generally-available`; `deprecating` and `deprecated` are the management plane's, in the data
plane's spelling). Model's free check sees no model, so it reports no lifecycle. A 410 is
ModelRetired: the management plane's `ModelLifecycleStatus` says inference calls to
deployments of a retired model "will return 410 errors".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.probes.openai_style import respond, responses_only
from llmconn.reasons import Reason
from llmconn.spec import AzureSpec, ValidationType
from llmconn.verdict import Lifecycle

MAX_TOKENS = 16
PROMPT = "Reply with the single word OK."
_CHOICES = has("choices", list)
_LISTED = has("data", list)
# The classic list's api-version on the /openai/v1 surface, where spec.azure.apiVersion is not
# used: the GA version whose reference documents the lifecycle fields.
LIST_API_VERSION = "2024-10-21"
# lifecycle_status values that announce a retirement (see the module doc: not confirmed).
DEPRECATING = frozenset({"deprecating", "deprecated"})


@registry.provider(
    "azure-openai",
    default_endpoint=None,
    auth=Auth.AZURE,
    title="Azure OpenAI",
    requires=("azure",),
    identities=("azure",),  # Entra ID: a bearer token for Cognitive Services
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    if ctx.azure is None:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                "Provider azure-openai needs spec.azure.deployment.",
            )
        )
    if ctx.validation_type is ValidationType.CONNECTIVITY:
        return await _list_models(ctx, ctx.azure)
    if ctx.validation_type is ValidationType.INFERENCE:
        return await _complete(ctx, ctx.azure)
    return await _touch(ctx, ctx.azure)


async def _list_models(ctx: ProbeContext, azure: AzureSpec) -> ProbeOutcome:
    """The resource's model list: key, endpoint and api-version, for free."""
    reply = await (ctx.request("GET", "/models") if _v1(ctx) else _classic_list(ctx, azure))
    body = _read(ctx, reply, "the model list", fits=_LISTED, expected="a `data` list")
    count = str(len(body["data"]))
    return ok(
        f"The key is valid for {urlsplit(ctx.endpoint).hostname}; the resource can use "
        f"{count} models.",
        reply,
        modelCount=count,
    )


async def _touch(ctx: ProbeContext, azure: AzureSpec) -> ProbeOutcome:
    """Prove key and deployment with a request the deployment refuses before any token, when
    the answer shows the deployment refused it; else with one tiny completion."""
    deployment = azure.deployment
    what = f"deployment {deployment}"
    reply = await _chat(ctx, azure, {"messages": []})
    if _chat_refused(reply):
        return await _complete(ctx, azure, proof=True)  # Responses only: no free check
    if reply.status == 400 and _refused_messages(reply):
        if _served_by(reply, deployment):
            return ok(
                f"The key is valid and deployment {deployment} exists (checked with a request "
                "it refuses before generating, so no tokens were spent).",
                reply,
            )
        return await _complete(ctx, azure, proof=True)
    _read(ctx, reply, what)
    return ok(f"The key is valid and deployment {deployment} answered.", reply)


async def _complete(ctx: ProbeContext, azure: AzureSpec, *, proof: bool = False) -> ProbeOutcome:
    deployment = azure.deployment
    what = f"deployment {deployment}"
    messages = [{"role": "user", "content": PROMPT}]
    reply = await _chat(ctx, azure, {"messages": messages, "max_tokens": MAX_TOKENS})
    if reply.status == 400 and "max_completion_tokens" in _message(reply).lower():
        body = {"messages": messages, "max_completion_tokens": MAX_TOKENS}
        reply = await _chat(ctx, azure, body)
    api = "completion"
    if _chat_refused(reply):
        # A model only the Responses API serves; a deployment that does not chat at all (an
        # embedding model) is refused there too, and reported as the chat call was.
        chat = reply
        path = "/responses" if _v1(ctx) else "/openai/v1/responses"
        try:
            reply = await respond(ctx, deployment, _classify, path=path)
        except ProbeFailure:
            _read(ctx, chat, what)
            raise
        api, body = "response", reply.json()
    else:
        body = _read(ctx, reply, what)
    served = body.get("model")
    details = {"servedModel": served[:128]} if isinstance(served, str) else {}
    life = await _served_lifecycle(ctx, azure, served[:128]) if isinstance(served, str) else None
    why = (
        " Azure did not show that the deployment itself refused the free check (no "
        "x-ms-deployment-name), so one real completion proved it."
        if proof
        else ""
    )
    said = f"Deployment {deployment} answered a {MAX_TOKENS}-token test {api}.{_aside(life)}"
    return dataclasses.replace(ok(said + why, reply, **details), lifecycle=life)


async def _classic_list(ctx: ProbeContext, azure: AzureSpec) -> Reply:
    """GET /openai/models?api-version=...: the list with `lifecycle_status` and `deprecation`,
    of the same resource on the /openai/v1 surface too."""
    if _v1(ctx):
        url = ctx.endpoint.rstrip("/").removesuffix("/v1") + "/models"
        return await ctx.request("GET", url, params={"api-version": LIST_API_VERSION})
    return await ctx.request("GET", "/openai/models", params={"api-version": azure.api_version})


async def _served_lifecycle(ctx: ProbeContext, azure: AzureSpec, served: str) -> Lifecycle | None:
    """The lifecycle of the model the deployment served, from the resource's model list;
    ModelRetired once its end of inference support has passed."""
    reply = await _classic_list(ctx, azure)
    body = _read(ctx, reply, "the model list", fits=_LISTED, expected="a `data` list")
    entry = next(
        (
            item
            for item in body["data"]
            if isinstance(item, dict) and str(item.get("id")).lower() == served.lower()
        ),
        None,
    )
    life = lifecycle(entry, dt.datetime.now(dt.UTC)) if entry is not None else None
    if life is not None and life.stage == "retired":
        raise ProbeFailure(
            ProbeOutcome(
                Reason.MODEL_RETIRED,
                f"Deployment {azure.deployment} serves {served}, whose inference support ended "
                f"on {life.retires_at} (the resource's model list): Azure retires a model region "
                "by region, and then requests to the deployment fail. Move the deployment to a "
                "current model version, or spec.azure.deployment to one that serves it.",
                http_status=reply.status,
                details={"servedModel": served},
                lifecycle=life,
            )
        )
    return life


def lifecycle(model: Mapping[str, Any], now: dt.datetime) -> Lifecycle | None:
    """Where an entry of the resource's model list is in its life: retired once
    `deprecation.inference` has passed, deprecated while `lifecycle_status` says so, else
    None (a date ahead alone is every model's, see the module doc)."""
    deprecation = model.get("deprecation")
    end = _utc(deprecation.get("inference") if isinstance(deprecation, Mapping) else None)
    shown = end.strftime("%Y-%m-%dT%H:%M:%SZ") if end is not None else None
    if end is not None and end <= now:
        return Lifecycle(stage="retired", retires_at=shown)
    if str(model.get("lifecycle_status") or "").lower() in DEPRECATING:
        return Lifecycle(stage="deprecated", retires_at=shown)
    return None


def _utc(seconds: Any) -> dt.datetime | None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _aside(life: Lifecycle | None) -> str:
    if life is None:
        return ""
    when = f"; its inference support ends on {life.retires_at}" if life.retires_at else ""
    return f" Azure lists its model as deprecated{when}: plan the move to a current version."


def _chat_refused(reply: Reply) -> bool:
    """The deployment's model does not take chat completions: OpenAI's Responses-only answer,
    or Azure's 400 OperationNotSupported ("The chatCompletion operation does not work with
    the specified model")."""
    error = _error(reply)
    code = error.get("code") if error is not None else None
    return responses_only(reply) or (reply.status == 400 and code == "OperationNotSupported")


def _v1(ctx: ProbeContext) -> bool:
    return urlsplit(ctx.endpoint).path.rstrip("/").endswith("/openai/v1")


def _served_by(reply: Reply, deployment: str) -> bool:
    return reply.headers.get("x-ms-deployment-name", "").lower() == deployment.lower()


async def _chat(ctx: ProbeContext, azure: AzureSpec, body: dict[str, Any]) -> Reply:
    if _v1(ctx):
        return await ctx.request(
            "POST", "/chat/completions", json_body={**body, "model": azure.deployment}
        )
    return await ctx.request(
        "POST",
        f"/openai/deployments/{quote(azure.deployment, safe='')}/chat/completions",
        params={"api-version": azure.api_version},
        json_body=body,
    )


def _read(
    ctx: ProbeContext,
    reply: Reply,
    what: str,
    *,
    fits: Callable[[Any], bool] = _CHOICES,
    expected: str = "`choices`",
) -> Any:
    return read_json(ctx, reply, what, fits=fits, expected=expected, classify=_classify)


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

    if reply.status == 401 and ctx.bearer_token is not None:
        if code == "PermissionDenied":  # "Principal does not have access to API/Operation."
            return out(
                Reason.PERMISSION_DENIED,
                f"Azure accepted the Entra ID token, but the identity may not use {host} "
                f"(HTTP 401 PermissionDenied){said}. Give the identity (spec.identity.azure."
                "clientId) a data-plane role on the resource, such as Cognitive Services "
                "OpenAI User.",
            )
        return out(
            Reason.INVALID_API_KEY,
            f"Azure rejected the Entra ID token for {host} (HTTP 401){said}; check that "
            "spec.endpoint is a resource of the identity's tenant.",
        )
    if reply.status == 401:
        # Azure words it "invalid subscription key or wrong API endpoint": it cannot tell.
        return out(
            Reason.INVALID_API_KEY,
            f"Azure rejected the API key for {host} (HTTP 401){said}; {ctx.key_hint}, "
            "and check that spec.endpoint is the resource the key belongs to.",
        )
    if reply.status == 410 and what != "the model list":  # a deployment call
        return ProbeOutcome(
            Reason.MODEL_RETIRED,
            f"Azure answered {what} with HTTP 410 Gone{said}: the deployment's model is "
            "retired. Move the deployment to a current model version, or spec.azure.deployment "
            "to one that serves it.",
            http_status=410,
            code=code,
            lifecycle=Lifecycle(stage="retired"),
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
