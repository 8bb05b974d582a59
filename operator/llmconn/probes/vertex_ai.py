"""Vertex AI probe: Gemini and Anthropic publisher models in a Google Cloud project.

Credentials, first found wins:
- `ctx.bearer_token`, the access token of the connection's workload identity (spec.identity.gcp:
  Google STS's federated token, or the impersonated service account's);
- a service-account JSON key in apiKeySecretRef: a JWT signed with it is exchanged at the
  key's `token_uri` for a cloud-platform token, on every validation (`google_oauth`);
- a Vertex AI express-mode API key in apiKeySecretRef, sent in `x-goog-api-key` (never
  `?key=`), as google-genai sends it (`_api_client.py`). Express mode serves Google's models
  only, on the global host, with no project or location in the path:
  POST https://aiplatform.googleapis.com/v1/publishers/google/models/{model}:countTokens
  (Google's express-mode REST reference lists countTokens, generateContent and
  streamGenerateContent). A spec.endpoint given by the user is used as it is.

The endpoint is https://{location}-aiplatform.googleapis.com, https://aiplatform.googleapis.com
for location `global`, and https://aiplatform.{us,eu}.rep.googleapis.com for the multi-regions
(google-genai `_api_client.py` and anthropic `lib/vertex/_client.py` choose the same hosts).

What each type calls (paths under the endpoint):
- Connectivity: GET /v1beta1/publishers/{publisher}/models?pageSize=1, the Model Garden list
  (google-genai lists base models there): the credentials are accepted and the location's host
  answers. A call that names no project is billed to, and checked against, a project of the
  caller's: without `x-goog-user-project`, the credential's own (a service account's, a
  federated token's pool project), where the API may be off though the project the agent
  calls is fine (googleapis/python-genai#2173, googleapis/python-aiplatform#2557). So the list
  names vertexAI.project there, as google-genai sends the credentials' quota project
  (`_api_client.py`). A refusal about billing a project other than vertexAI.project, or
  USER_PROJECT_DENIED (the caller may not bill that project: serviceusage.services.use, which
  calls in the project do not need), is about the list alone: the credentials were accepted,
  so it validates and says so. Express mode has no such call: it counts the tokens of
  spec.model instead, and needs one.
- Model, Gemini: POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:countTokens.
  Free, and Google's reference for countTokens requires IAM permission
  `aiplatform.endpoints.predict` (the permission generateContent needs), so a Validated Model
  means: the model is served in that location and this identity may call it in that project.
- Model, Anthropic: POST .../publishers/anthropic/models/count-tokens:rawPredict with the
  model in the body (Google's "Count tokens for Claude models": free; the anthropic SDK's
  Vertex client sends count_tokens there). rawPredict needs the same predict permission, and
  the counter answers for the named model. The counter is served in a few regions only
  (Google's page lists them; its versions differ, and us-east5, europe-west1 and
  asia-southeast1 are in every one), not at `global`, which answers 404 (BerriAI/litellm
  PR #20348): a `global` connection counts in us-east5 and says so; Inference asks `global`
  itself. Not confirmed from a primary source: whether the counter refuses a model that the
  project has not enabled in Model Garden. Inference proves the model itself.
- Inference, Gemini: generateContent with maxOutputTokens 16, thinking kept small (the Gemini
  probe's `generate`: Vertex takes the same GenerateContentRequest).
- Inference, Anthropic: POST .../publishers/anthropic/models/{m}:rawPredict with
  `anthropic_version: vertex-2023-10-16` (Google's Claude request body) and max_tokens 16.

Errors are Google's shape (`error.code`, `message`, `status`, `details[]` with ErrorInfo
`reason` and `metadata`), read as the Gemini probe reads them, plus what Vertex AI adds:
UNAUTHENTICATED (a token or key not accepted), PERMISSION_DENIED with reason SERVICE_DISABLED
(the Vertex AI API is off in the project) or BILLING_DISABLED, IAM_PERMISSION_DENIED (with the
permission in `metadata.permission`), FAILED_PRECONDITION and NOT_FOUND (the publisher model
is not served in that location, or the project may not use it).

One module, past the size of the other providers: Vertex AI's two publishers (Google's
models and Anthropic's), its key forms and its error dialect change together.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from llmconn.model.blocks import VertexAISpec, VertexPublisher
from llmconn.model.credentials import key_file_secrets, service_account_key
from llmconn.model.reasons import Reason
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.net.exchange import USER_AGENT, Reply
from llmconn.net.oauth import google_error
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome, ok, registry
from llmconn.probes.errors import classify_error, has, read_json
from llmconn.probes.gemini import exhausted, generate
from llmconn.probes.google_oauth import access_token

GLOBAL_ENDPOINT = "https://aiplatform.googleapis.com"
ANTHROPIC_VERSION = "vertex-2023-10-16"
# Where Claude's token counter is served in every version of Google's list (module doc), and
# the one a location without a counter of its own (`global`) counts in.
CLAUDE_COUNT_REGIONS = ("us-east5", "europe-west1", "asia-southeast1")
CLAUDE_COUNT_FALLBACK = "us-east5"
MAX_TOKENS = 16
PROMPT = "Reply with the single word OK."
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")  # an API key: printable ASCII, no spaces


def regional_endpoint(location: str) -> str:
    """The host Google serves a location on (see the module doc)."""
    if location == "global":
        return GLOBAL_ENDPOINT
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def default_endpoint(spec: LLMConnectionSpec) -> str:
    return regional_endpoint(spec.vertex_ai.location if spec.vertex_ai else "global")


@registry.provider(
    "vertex-ai",
    default_endpoint="https://{location}-aiplatform.googleapis.com",
    endpoint_for=default_endpoint,
    title="Google Vertex AI",
    requires=("vertexAI",),
    key_secrets=key_file_secrets,
    identities=("gcp",),  # Google STS, then IAM Credentials when impersonating
)
async def probe(ctx: ProbeContext) -> ProbeOutcome:
    vertex = ctx.vertex_ai
    if vertex is None:
        raise ProbeFailure(
            ProbeOutcome(Reason.INVALID_CONFIGURATION, "Provider vertex-ai needs spec.vertexAI.")
        )
    auth = await _credentials(ctx)
    with ctx.holding(*auth.secrets):
        return await _validate(ctx, vertex, auth)


@dataclass(frozen=True)
class _Auth:
    """How requests authenticate, and who they are, for messages."""

    headers: dict[str, str]
    who: str  # "service account a@p.iam.gserviceaccount.com", "the express-mode API key"
    express: bool = False
    secrets: tuple[str, ...] = ()


async def _credentials(ctx: ProbeContext) -> _Auth:
    if ctx.bearer_token is not None:
        given = ctx.bearer_token.token
        gcp = ctx.identity.gcp if ctx.identity is not None else None
        email = gcp.service_account_email if gcp is not None else None
        who = f"service account {email} (impersonated)" if email else "the workload identity"
        return _Auth({"Authorization": f"Bearer {given}"}, who)
    if not ctx.api_key:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                "Provider vertex-ai needs credentials: set spec.apiKeySecretRef to a Secret key "
                "holding a service-account JSON key or a Vertex AI express-mode API key.",
            )
        )
    try:
        key = service_account_key(ctx.api_key)
    except ValueError as exc:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                f"{_where(ctx)} holds JSON that is not a service-account key: {exc}. Put the "
                "key file from Google Cloud there as it is, or an express-mode API key.",
            )
        ) from None
    if key is None:
        if not _HEADER_SAFE.match(ctx.api_key):
            raise ProbeFailure(
                ProbeOutcome(
                    Reason.INVALID_CONFIGURATION,
                    f"{_where(ctx)} is neither a service-account JSON key nor an API key "
                    "(an API key is one word of printable ASCII).",
                )
            )
        return _Auth({"x-goog-api-key": ctx.api_key}, "the express-mode API key", express=True)
    ctx.found.details["serviceAccount"] = key.client_email[:128]
    with ctx.holding(*key.secrets()):
        token = await access_token(ctx, key)
    return _Auth(
        {"Authorization": f"Bearer {token.token}"},
        f"service account {key.client_email}",
        secrets=token.secrets(),
    )


def _where(ctx: ProbeContext) -> str:
    ref = ctx.api_key_ref
    return f"Key {ref.key} of Secret {ref.name}" if ref else "The credentials"


async def _validate(ctx: ProbeContext, vertex: VertexAISpec, auth: _Auth) -> ProbeOutcome:
    anthropic = vertex.publisher is VertexPublisher.ANTHROPIC
    if auth.express and anthropic:
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            "Vertex AI express mode serves Google's models only: use a service-account key "
            "for publisher anthropic, or set vertexAI.publisher to google.",
        )
    if ctx.validation_type is ValidationType.CONNECTIVITY and not auth.express:
        return await _list_models(ctx, vertex, auth)
    if ctx.validation_type is ValidationType.CONNECTIVITY and not ctx.model:
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            "Vertex AI express mode has no free call without a model: set spec.model (its "
            "tokens are counted, for free).",
        )
    model = ctx.required_model()
    call = _Call(ctx, vertex, auth, model)
    if ctx.validation_type is ValidationType.INFERENCE:
        return await (call.message() if anthropic else call.generate())
    return await (call.count_claude() if anthropic else call.count_gemini())


async def _list_models(ctx: ProbeContext, vertex: VertexAISpec, auth: _Auth) -> ProbeOutcome:
    path = f"/v1beta1/publishers/{vertex.publisher.value}/models"
    reply = await _send(
        ctx,
        auth,
        "GET",
        ctx.url(path),
        params={"pageSize": "1"},
        headers={"x-goog-user-project": vertex.project},
    )
    if reply.status == 404:
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"There is no Vertex AI model list at {ctx.endpoint}{path} (HTTP 404). "
            "spec.endpoint is the host only (https://{location}-aiplatform.googleapis.com), "
            "or leave it out.",
            http_status=reply.status,
        )
    host = urlsplit(ctx.endpoint).hostname
    if (billing := list_billing_refusal(reply, vertex.project)) is not None:
        reason, consumer = billing
        return ok(
            f"Vertex AI at {host} accepted the credentials of {auth.who}. The project-less "
            f"model list was asked to bill project {vertex.project} (x-goog-user-project) "
            f"and Google refused it for {consumer} ({reason}): that concerns the list's "
            "billing, which calls in the project do not need, so it fails nothing. Type "
            f"Model checks project {vertex.project} and a model.",
            reply,
        )
    _read(ctx, reply, auth, vertex, "the model list", has("publisherModels", list))
    return ok(
        f"Vertex AI at {urlsplit(ctx.endpoint).hostname} accepted the credentials of "
        f"{auth.who}. Type Model checks project {vertex.project} and a model.",
        reply,
    )


def list_billing_refusal(reply: Reply, project: str) -> tuple[str, str] | None:
    """(reason, consumer) when the model list's 403 is about billing the call rather than the
    credentials: SERVICE_DISABLED or BILLING_DISABLED for a project other than `project`, or
    USER_PROJECT_DENIED for any (see the module doc); else None."""
    if reply.status != 403:
        return None
    error = google_error(reply)
    details = error.get("details") if error is not None else None
    for info in details if isinstance(details, list) else []:
        if not isinstance(info, dict):
            continue
        reason = info.get("reason")
        metadata = info.get("metadata")
        consumer = metadata.get("consumer") if isinstance(metadata, dict) else None
        shown = str(consumer)[:128] if consumer else "another project"
        if reason == "USER_PROJECT_DENIED":
            return reason, shown
        if reason in ("SERVICE_DISABLED", "BILLING_DISABLED") and consumer != f"projects/{project}":
            return str(reason), shown
    return None


def claude_count_location(location: str) -> str:
    """Where Claude's tokens are counted for a connection at `location`: there, unless it is
    `global`, where the counter is not served (module doc)."""
    return CLAUDE_COUNT_FALLBACK if location == "global" else location


@dataclass(frozen=True)
class _Call:
    """The calls that name the project, location and model."""

    ctx: ProbeContext
    vertex: VertexAISpec
    auth: _Auth
    model: str

    def url(self, method: str, name: str | None = None, location: str | None = None) -> str:
        """The URL of `method` on the model (or on `name`: Claude's count-tokens), in the
        spec's location or in `location` (on its host, unless spec.endpoint is given)."""
        model = quote(name or self.model, safe="@")
        publisher = self.vertex.publisher.value
        if self.auth.express:
            base = self.ctx.endpoint
            if base == regional_endpoint(self.vertex.location):
                base = GLOBAL_ENDPOINT  # express mode lives on the global host only
            return f"{base}/v1/publishers/{publisher}/models/{model}:{method}"
        project, location = self.vertex.project, location or self.vertex.location
        base = self.ctx.endpoint
        if base == regional_endpoint(self.vertex.location):
            base = regional_endpoint(location)
        return (
            f"{base}/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/"
            f"{model}:{method}"
        )

    @property
    def place(self) -> str:
        if self.auth.express:
            return "in express mode"
        return f"in project {self.vertex.project}, location {self.vertex.location}"

    async def post(self, url: str, body: dict[str, Any]) -> Reply:
        return await _send(self.ctx, self.auth, "POST", url, json_body=body)

    def read(self, reply: Reply, fits: Callable[[Any], bool]) -> Any:
        return _read(self.ctx, reply, self.auth, self.vertex, f"model {self.model}", fits)

    async def count_gemini(self) -> ProbeOutcome:
        body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
        reply = await self.post(self.url("countTokens"), body)
        self.read(reply, has("totalTokens", int))
        return ok(
            f"{_cap(self.auth.who)} may call model {self.model} {self.place} (countTokens, "
            "which needs the predict permission and spends no tokens).",
            reply,
        )

    async def count_claude(self) -> ProbeOutcome:
        where = claude_count_location(self.vertex.location)
        url = self.url("rawPredict", name="count-tokens", location=where)
        body = {
            "anthropic_version": ANTHROPIC_VERSION,
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT}],
        }
        reply = await self.post(url, body)
        self.read(reply, has("input_tokens", int))
        elsewhere = (
            f" It was counted in {where}: Google serves Claude's token counter in a few "
            f"regions, not at {self.vertex.location}."
            if where != self.vertex.location
            else ""
        )
        return ok(
            f"{_cap(self.auth.who)} may call Claude models in project {self.vertex.project}, "
            f"and the token counter knows {self.model} (no tokens spent; Inference proves the "
            f"model itself in location {self.vertex.location}).{elsewhere}",
            reply,
        )

    async def generate(self) -> ProbeOutcome:
        url = self.url("generateContent")

        async def send(body: dict[str, Any]) -> Reply:
            return await self.post(url, body)

        def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
            return _classify(ctx, reply, self.auth, self.vertex, what)

        return await generate(self.ctx, self.model, send, classify)

    async def message(self) -> ProbeOutcome:
        body = {
            "anthropic_version": ANTHROPIC_VERSION,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": PROMPT}],
        }
        reply = await self.post(self.url("rawPredict"), body)
        found = self.read(reply, _is_message)
        served = found.get("model")
        details = {"servedModel": served[:128]} if isinstance(served, str) else {}
        return ok(
            f"Model {self.model} answered a {MAX_TOKENS}-token test message.", reply, **details
        )


def _is_message(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("type") == "message"
        and isinstance(body.get("content"), list)
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


async def _send(
    ctx: ProbeContext,
    auth: _Auth,
    method: str,
    url: str,
    *,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A request with these credentials (not `ctx.request`, whose api_key here may be a
    whole key file) and the spec's headers."""
    extra = headers or {}
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(ctx.headers)
    headers.update(extra)
    headers.update(auth.headers)
    return await ctx.transport.fetch(
        method, url, headers=headers, json_body=json_body, params=params
    )


def _read(
    ctx: ProbeContext,
    reply: Reply,
    auth: _Auth,
    vertex: VertexAISpec,
    what: str,
    fits: Callable[[Any], bool],
) -> Any:
    def classify(ctx: ProbeContext, reply: Reply, what: str) -> ProbeOutcome:
        return _classify(ctx, reply, auth, vertex, what)

    return read_json(ctx, reply, what, fits=fits, expected="Vertex AI's answer", classify=classify)


def _classify(
    ctx: ProbeContext, reply: Reply, auth: _Auth, vertex: VertexAISpec, what: str
) -> ProbeOutcome:
    error = google_error(reply)
    if error is None or not error.get("status"):
        return classify_error(ctx, reply, what)  # Anthropic's own shape, or not Google's
    status = str(error.get("status") or "")
    message = str(error.get("message") or "")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    infos = [d for d in details if isinstance(d.get("reason"), str)]
    reasons = [str(d["reason"]) for d in infos]
    said = f": {message.rstrip('.')}" if message else ""
    tag = f"HTTP {reply.status} {status}"
    place = "in express mode" if auth.express else f"in project {vertex.project}"

    def out(reason: Reason, text: str, code: str | None = None) -> ProbeOutcome:
        return ProbeOutcome(reason, text, http_status=reply.status, code=code or status or None)

    bad_key = next((r for r in reasons if r in ("API_KEY_INVALID", "API_KEY_EXPIRED")), None)
    if bad_key is not None:
        return out(
            Reason.INVALID_API_KEY,
            f"Vertex AI rejected the API key (HTTP {reply.status} {bad_key}){said}; "
            f"{ctx.key_hint}.",
            bad_key,
        )
    if reply.status == 401 or status == "UNAUTHENTICATED":
        return out(
            Reason.INVALID_API_KEY,
            f"Vertex AI did not accept the credentials of {auth.who} ({tag}){said}; "
            f"{ctx.key_hint}.",
        )
    if "SERVICE_DISABLED" in reasons:
        return out(
            Reason.PERMISSION_DENIED,
            f"The Vertex AI API is not enabled {place} ({tag} SERVICE_DISABLED){said}. Enable "
            "aiplatform.googleapis.com in the project.",
            "SERVICE_DISABLED",
        )
    if "BILLING_DISABLED" in reasons or status == "FAILED_PRECONDITION":
        return out(
            Reason.PERMISSION_DENIED,
            f"Vertex AI refuses this {place} ({tag}){said}. Enable billing on the project "
            "(and, for partner models, enable the model in Model Garden).",
            "BILLING_DISABLED" if "BILLING_DISABLED" in reasons else None,
        )
    if reply.status == 403 or status == "PERMISSION_DENIED":
        permission = next(
            (
                str(d["metadata"]["permission"])
                for d in infos
                if isinstance(d.get("metadata"), dict) and "permission" in d["metadata"]
            ),
            "",
        )
        needs = f" lacks {permission[:128]}" if permission else " is not allowed this"
        return out(
            Reason.PERMISSION_DENIED,
            f"{_cap(auth.who)}{needs} {place} ({tag}){said}. Grant it a role with "
            "aiplatform.endpoints.predict (Vertex AI User, roles/aiplatform.user) on the "
            "project, and check vertexAI.project.",
        )
    if reply.status == 404 or status == "NOT_FOUND":
        where = "" if auth.express else f" in location {vertex.location}"
        return out(
            Reason.MODEL_NOT_FOUND,
            f"{_cap(what)} was not found{where}, or {place.removeprefix('in ')} may not use "
            f"it ({tag}){said}. Check spec.model (with its @version for Claude) and "
            "vertexAI.location.",
        )
    if reply.status == 429 or status == "RESOURCE_EXHAUSTED":
        return exhausted(
            reply,
            status,
            message,
            details,
            who="Vertex AI is rate limiting "
            + ("this API key" if auth.express else f"project {vertex.project}"),
            fix="Request a quota increase for the project, or use another location or model.",
        )
    return classify_error(ctx, reply, what)
