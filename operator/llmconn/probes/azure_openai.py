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
object, owned_by), so that surface reads the classic list of the same resource. Every model
has a date (the field is required, and Microsoft's retirement policy sets a "not sooner than"
date at launch, a year out for GA models), so a date ahead alone is not a deprecation: the
model is deprecated while `lifecycle_status` says so, or once the date has passed. A passed
date on a model that just answered is a warning, never ModelRetired: the date is the earliest
retirement, not the day it happened. The list may hold one entry per version under a bare
name, and a completion may report only that name: the entry with the latest date is read
(another version's passed date says nothing of this deployment's), and the message says so.
Not confirmed: that the answer's `model` is spelled as the list's id (no match: no
lifecycle), and the data plane's word for a deprecating model (the documented values are
`preview` and `generally-available`; `deprecating` and `deprecated` are the management
plane's, in the data plane's spelling). Model's free check sees no model, so it reports no
lifecycle.

A deployment of a retired model: the management plane's `ModelLifecycleStatus` says
inference calls "will return 410 errors"; users report a bare 404 "Resource not found"
(BerriAI/litellm#11116) and a 400 OperationNotSupported naming a chat model
(BerriAI/litellm#11505). A 410 is ModelRetired. A 404 other than DeploymentNotFound is the
deployment's once the free model list (same endpoint, key and api-version) answers: then
ModelRetired, saying how it was read; if the list fails too, the list's failure is the
verdict (a wrong endpoint). An OperationNotSupported naming a model that the list says
chats is ModelRetired; naming one that does not chat, it stays InvalidConfiguration.

A 400 `content_filter` (innererror ResponsibleAIPolicyViolation) on the test completion is
the deployment's model refusing the prompt: key, deployment and model answered, so it is
Validated, and says so (Microsoft Learn, "Content filtering").

One module, past the size of the OpenAI-style flavours: Azure's two API surfaces, its
deployments, its model list with lifecycle dates and its errors change together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.model.blocks import AzureSpec
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import Lifecycle
from llmconn.net.exchange import Reply
from llmconn.probes.base import Auth, ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.probes.openai_style import respond, responses_only

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
    await _answer(ctx, azure, reply, what)
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
    if _filtered(reply):
        return ok(
            f"Deployment {deployment} answered: its content filter refused the {MAX_TOKENS}-"
            f"token test prompt (HTTP 400 content_filter{_inner(reply)}), which only the "
            "deployment's model does, so the key, the deployment and its model are proven "
            "and nothing was generated.",
            reply,
        )
    if _chat_refused(reply):
        # A model only the Responses API serves; a deployment that does not chat at all (an
        # embedding model) is refused there too, and reported as the chat call was.
        chat = reply
        path = "/responses" if _v1(ctx) else "/openai/v1/responses"
        try:
            reply = await respond(ctx, deployment, _classify, path=path)
        except ProbeFailure:
            await _answer(ctx, azure, chat, what)
            raise
        api, body = "response", reply.json()
    else:
        body = await _answer(ctx, azure, reply, what)
    served = body.get("model")
    details = {"servedModel": served[:128]} if isinstance(served, str) else {}
    life, aside = (None, "")
    if isinstance(served, str):
        life, aside = await _served_lifecycle(ctx, azure, served[:128])
    why = (
        " Azure did not show that the deployment itself refused the free check (no "
        "x-ms-deployment-name), so one real completion proved it."
        if proof
        else ""
    )
    said = f"Deployment {deployment} answered a {MAX_TOKENS}-token test {api}.{aside}"
    return dataclasses.replace(ok(said + why, reply, **details), lifecycle=life)


async def _classic_list(ctx: ProbeContext, azure: AzureSpec) -> Reply:
    """GET /openai/models?api-version=...: the list with `lifecycle_status` and `deprecation`,
    of the same resource on the /openai/v1 surface too."""
    if _v1(ctx):
        url = ctx.endpoint.rstrip("/").removesuffix("/v1") + "/models"
        return await ctx.request("GET", url, params={"api-version": LIST_API_VERSION})
    return await ctx.request("GET", "/openai/models", params={"api-version": azure.api_version})


async def _served_lifecycle(
    ctx: ProbeContext, azure: AzureSpec, served: str
) -> tuple[Lifecycle | None, str]:
    """The lifecycle of the model the deployment just served, from the resource's model
    list, and the words for the message. Never ModelRetired: the model answered."""
    body = await _model_list(ctx, azure)
    entries = [
        item
        for item in body["data"]
        if isinstance(item, dict) and str(item.get("id")).lower() == served.lower()
    ]
    entry = latest(entries)
    life = lifecycle(entry, dt.datetime.now(dt.UTC)) if entry is not None else None
    aside = _aside(served, life)
    if len(entries) > 1:
        end = _utc(_inference_end(entry)) if entry is not None else None
        shown = f" ({end:%Y-%m-%d})" if end is not None else ""
        aside += (
            f" Azure lists {len(entries)} versions of {served} and the answer does not say "
            f"which one this deployment serves, so the latest end of inference support{shown} "
            "is read: another version's date says nothing of this one."
        )
    return life, aside


async def _model_list(ctx: ProbeContext, azure: AzureSpec) -> Any:
    reply = await _classic_list(ctx, azure)
    return _read(ctx, reply, "the model list", fits=_LISTED, expected="a `data` list")


def latest(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the list's entries for one name, the one whose inference support ends last (no
    date counts as latest): the reading that never warns of a version not deployed."""
    if not entries:
        return None
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return max(entries, key=lambda e: _utc(_inference_end(e)) or far)


def _inference_end(entry: Mapping[str, Any]) -> Any:
    deprecation = entry.get("deprecation")
    return deprecation.get("inference") if isinstance(deprecation, Mapping) else None


def lifecycle(model: Mapping[str, Any], now: dt.datetime) -> Lifecycle | None:
    """Where an entry of the resource's model list is in its life: deprecated while
    `lifecycle_status` says so or once `deprecation.inference` has passed (a "not sooner
    than" date: overdue, not retired), else None (a date ahead alone is every model's, see
    the module doc)."""
    end = _utc(_inference_end(model))
    shown = end.strftime("%Y-%m-%dT%H:%M:%SZ") if end is not None else None
    if end is not None and end <= now:
        return Lifecycle(stage="deprecated", retires_at=shown)
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


def _aside(served: str, life: Lifecycle | None) -> str:
    if life is None:
        return ""
    if _passed(life.retires_at):
        return (
            f" Azure lists the end of inference support of {served} as {life.retires_at}, a "
            '"not sooner than" date now passed: it still answers, but Azure may retire it '
            "any day. Move the deployment to a current model version."
        )
    ends = f"; its inference support ends on {life.retires_at}" if life.retires_at else ""
    return f" Azure lists {served} as deprecated{ends}: plan the move to a current version."


def _passed(when: str | None) -> bool:
    try:
        moment = dt.datetime.fromisoformat((when or "").replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None and moment <= dt.datetime.now(dt.UTC)


async def _answer(ctx: ProbeContext, azure: AzureSpec, reply: Reply, what: str) -> Any:
    """A deployment's answer as `_read` reads it, after the refusals that only the model
    list can explain (a retired model's 404 or OperationNotSupported)."""
    if not 200 <= reply.status < 300 and (found := await _refusal(ctx, azure, reply, what)):
        raise ProbeFailure(found)
    return _read(ctx, reply, what)


async def _refusal(
    ctx: ProbeContext, azure: AzureSpec, reply: Reply, what: str
) -> ProbeOutcome | None:
    """ModelRetired for a deployment call refused as Azure refuses a retired model's, once
    the free model list has shown that the endpoint, key and api-version are right."""
    error = _error(reply)
    code = str(error.get("code")) if error is not None and error.get("code") else None
    gone = reply.status == 404 and error is not None and code != "DeploymentNotFound"
    named = _unsupported_model(reply)
    if not gone and named is None:
        return None
    listed = await _classic_list(ctx, azure)
    if not 200 <= listed.status < 300 or not _LISTED(listed.json()):
        return None  # the list fails too: the endpoint is wrong, as the refusal is read

    said = f": {_message(reply).rstrip('. ')}" if _message(reply) else ""
    tag = f"HTTP {reply.status}{' ' + code if code else ''}"
    if named is not None:
        chats = [
            item
            for item in listed.json()["data"]
            if isinstance(item, dict)
            and str(item.get("id")).lower() == named.lower()
            and isinstance(item.get("capabilities"), Mapping)
            and item["capabilities"].get("chat_completion") is True
        ]
        if not chats:
            return None  # the model does not chat: InvalidConfiguration, as classified
        why = (
            f"Azure refuses {what} as an operation {named} does not support ({tag}){said}, "
            f"yet its model list says {named} chats: Azure answers a deployment of a "
            "retired model version this way (as users report it)."
        )
    else:
        why = (
            f"Azure answered {what} with {tag}{said}, while the model list at the same "
            "endpoint, with the same key and api-version, answered: the 404 is the "
            "deployment's, and Azure answers a deployment of a retired model version this "
            "way (as users report it)."
        )
    return ProbeOutcome(
        Reason.MODEL_RETIRED,
        f"{why} Move the deployment to a current model version, or spec.azure.deployment "
        "to one that serves it.",
        http_status=reply.status,
        code=code,
        lifecycle=Lifecycle(stage="retired"),
    )


def _unsupported_model(reply: Reply) -> str | None:
    """The model a 400 OperationNotSupported names ("... with the specified model, m.")."""
    error = _error(reply)
    if reply.status != 400 or error is None or error.get("code") != "OperationNotSupported":
        return None
    _, found, rest = _message(reply).partition("the specified model, ")
    name = rest.split(". ", 1)[0].strip().rstrip(".")
    return name[:128] if found and name else None


def _filtered(reply: Reply) -> bool:
    """The content filter's refusal of the prompt: 400 content_filter, or its inner code."""
    error = _error(reply)
    if reply.status != 400 or error is None:
        return False
    inner = error.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    return error.get("code") == "content_filter" or inner_code == "ResponsibleAIPolicyViolation"


def _inner(reply: Reply) -> str:
    error = _error(reply) or {}
    inner = error.get("innererror")
    code = inner.get("code") if isinstance(inner, dict) else None
    return f", {str(code)[:64]}" if code else ""


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
