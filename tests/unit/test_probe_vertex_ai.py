"""The vertex-ai probe through validate(): a service-account key exchanged at a loopback Google
token service that verifies the JWT, an express-mode key, and a given bearer token, against a
loopback Vertex AI server (tests/servers/google_token.py, tests/servers/vertex_dialect.py).

Every run goes through the real egress-guarded client pool, so the key's token_uri is held to
the egress policy like the endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
import pytest

from llmconn.model import logs
from llmconn.model.blocks import VertexAISpec
from llmconn.model.credentials import BearerToken, service_account_key
from llmconn.model.fields import SecretKeyRef
from llmconn.model.reasons import Reason, Result
from llmconn.model.redact import MARKER
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import Defaults, SecretData, Verdict
from llmconn.net.egress import EgressPolicy
from llmconn.net.guard import DNSLookupError
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec, registry
from llmconn.probes.base import ProbeContext, ProbeFailure
from llmconn.probes.google_oauth import sign
from llmconn.probes.vertex_ai import regional_endpoint
from llmconn.validation.validate import validate
from servers import google_token, vertex_dialect
from servers.serve import serve

PROJECT = vertex_dialect.PROJECT
GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
TOKEN_HOST = "oauth2.loopback.test"  # resolved to 127.0.0.1 by these tests' resolver


@dataclass
class Google:
    token_url: str  # http://oauth2.loopback.test:PORT/token
    vertex_url: str
    tokens: google_token.TokenState
    vertex: vertex_dialect.VertexState
    account: google_token.ServiceAccount

    def key_file(self, account: google_token.ServiceAccount | None = None) -> str:
        return (account or self.account).key_file(self.token_url)


@pytest.fixture(scope="module")
def account() -> google_token.ServiceAccount:
    return google_token.make_account()


@pytest.fixture(scope="module")
def servers(account: google_token.ServiceAccount) -> Iterator[Google]:
    token_app = google_token.make_app()
    token_app.state.dialect.trust(account)
    vertex_app = vertex_dialect.make_app(issued=token_app.state.dialect.issued)
    with serve(token_app) as token_base, serve(vertex_app) as vertex_url:
        port = token_base.rsplit(":", 1)[1]
        yield Google(
            f"http://{TOKEN_HOST}:{port}/token",
            vertex_url,
            token_app.state.dialect,
            vertex_app.state.dialect,
            account,
        )


@pytest.fixture
def google(servers: Google) -> Google:
    servers.tokens.reset()
    servers.tokens.refusals.clear()
    servers.tokens.trust(servers.account)
    servers.vertex.reset()
    servers.vertex.counted = 0
    servers.vertex.granted = {PROJECT}
    servers.vertex.enabled = {PROJECT}
    servers.vertex.billable = {PROJECT}
    servers.vertex.tokens.clear()
    return servers


async def loopback(host: str, port: int) -> Sequence[str]:
    if host in ("localhost", TOKEN_HOST):
        return ["127.0.0.1"]
    raise DNSLookupError(host, "Name or service not known")


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback, proxies={})
    yield clients
    await clients.aclose()


class Secrets:
    def __init__(self, value: str) -> None:
        self.value = value

    async def get(self, name: str) -> SecretData | None:
        return SecretData({"key.json": self.value.encode()}, "7") if name == "gcp" else None


def spec(
    google: Google,
    vtype: str,
    *,
    model: str | None = GEMINI,
    publisher: str = "google",
    location: str = "us-central1",
    project: str = PROJECT,
) -> Any:
    raw: dict[str, Any] = {
        "provider": "vertex-ai",
        "endpoint": google.vertex_url,
        "apiKeySecretRef": {"name": "gcp", "key": "key.json"},
        "vertexAI": {"project": project, "location": location, "publisher": publisher},
        "validation": {"type": vtype, "timeout": "10s"},
    }
    if model:
        raw["model"] = model
    return parse_spec(raw)


async def check(
    google: Google, pool: ClientPool, vtype: str, secret: str | None = None, **kw: Any
) -> Verdict:
    value = secret if secret is not None else google.key_file()
    return await validate(spec(google, vtype, **kw), Secrets(value), pool, Defaults())


def visible(verdict: Verdict) -> str:
    return json.dumps(
        [verdict.message, verdict.code, verdict.request_id, dict(verdict.details)], default=str
    )


def assert_no_secret(text: str, google: Google, *extra: str) -> None:
    key = service_account_key(google.key_file())
    assert key is not None
    pem_lines = [line for line in key.private_key.splitlines() if "PRIVATE" not in line]
    for value in (*pem_lines, *google.tokens.issued, *extra):
        for i in range(0, max(1, len(value) - 11), 4):
            assert value[i : i + 12] not in text


# --- a service-account key ---------------------------------------------------------------


async def test_model_signs_a_jwt_exchanges_it_and_counts_tokens_with_the_token(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Model")
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert "countTokens" in verdict.message and google.account.email in verdict.message
    assert verdict.details["serviceAccount"] == google.account.email
    [exchange] = google.tokens.seen
    assert exchange.path == "/token"
    assert exchange.body["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert "authorization" not in exchange.headers  # the token service gets no credentials
    [call] = google.vertex.seen
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/"
        f"{GEMINI}:countTokens"
    )
    [issued] = google.tokens.issued.keys() & {call.headers["authorization"][7:]}
    assert google.tokens.issued[issued] == google.account.email
    assert google.vertex.counted == 1 and google.vertex.generated == 0
    assert_no_secret(visible(verdict), google, exchange.body["assertion"])


async def test_the_assertion_is_rs256_with_the_key_id_audience_scope_and_an_hour(
    google: Google, pool: ClientPool
) -> None:
    await check(google, pool, "Model")
    assertion = google.tokens.seen[0].body["assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "RS256" and header["kid"] == google.account.key_id
    claims = jwt.decode(
        assertion, google.account.public_key, algorithms=["RS256"], audience=google.token_url
    )
    assert claims["iss"] == google.account.email
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 300


async def test_connectivity_lists_publisher_models_and_touches_no_project(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Connectivity", model=None)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    assert (call.method, call.path, call.query) == (
        "GET",
        "/v1beta1/publishers/google/models",
        "pageSize=1",
    )
    assert f"project {PROJECT}" in verdict.message  # says that Model checks it


async def test_connectivity_bills_the_model_list_to_the_spec_project(
    google: Google, pool: ClientPool
) -> None:
    # Issue 24, item 2: a service account of a central project whose Vertex AI API is off;
    # the project-less list would be billed there without x-goog-user-project.
    central = google_token.make_account("prober", project="central-project")
    google.tokens.trust(central)
    verdict = await check(google, pool, "Connectivity", model=None, secret=google.key_file(central))
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    assert call.headers["x-goog-user-project"] == PROJECT
    # Where the spec's project has the API off, that is the project named.
    google.vertex.enabled = set()
    verdict = await check(google, pool, "Connectivity", model=None, secret=google.key_file(central))
    assert (verdict.reason, verdict.code) == (Reason.PERMISSION_DENIED, "SERVICE_DISABLED")
    assert f"project {PROJECT}" in verdict.message and "central-project" not in verdict.message


async def test_a_caller_that_may_not_bill_the_project_for_the_list_still_connects(
    google: Google, pool: ClientPool
) -> None:
    # USER_PROJECT_DENIED: the list wants serviceusage.services.use, which the model calls do
    # not: the credentials were accepted, and the message says what was not checked.
    google.vertex.billable = set()
    verdict = await check(google, pool, "Connectivity", model=None)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert "USER_PROJECT_DENIED" in verdict.message and "Type Model" in verdict.message


async def test_inference_generates_with_16_tokens_and_thinking_kept_small(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Inference")
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    assert call.path.endswith(f"/publishers/google/models/{GEMINI}:generateContent")
    config = call.body["generationConfig"]
    assert config["maxOutputTokens"] == 16 and config["thinkingConfig"] == {"thinkingBudget": 0}
    assert google.vertex.generated == 1
    assert verdict.details["servedModel"] == f"{GEMINI}-001"


async def test_claude_model_counts_tokens_at_count_tokens_with_the_model_in_the_body(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(
        google, pool, "Model", model=CLAUDE, publisher="anthropic", location="us-east5"
    )
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/"
        "count-tokens:rawPredict"
    )
    assert call.body["model"] == CLAUDE and call.body["messages"][0]["role"] == "user"
    assert google.vertex.generated == 0


async def test_claude_inference_is_raw_predict_with_the_vertex_anthropic_version(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(
        google, pool, "Inference", model=CLAUDE, publisher="anthropic", location="us-east5"
    )
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    assert call.path.endswith(f"/publishers/anthropic/models/{CLAUDE}:rawPredict")
    assert call.body["anthropic_version"] == "vertex-2023-10-16"
    assert call.body["max_tokens"] == 16 and "model" not in call.body
    assert google.vertex.generated == 1


@pytest.mark.parametrize(
    ("model", "location", "named"),
    [
        ("claude-nonexistent@20990101", "us-east5", "claude-nonexistent"),
        (CLAUDE, "europe-west4", "location europe-west4"),
    ],
)
async def test_a_claude_model_unknown_or_not_served_there_is_model_not_found(
    google: Google, pool: ClientPool, model: str, location: str, named: str
) -> None:
    verdict = await check(
        google, pool, "Model", model=model, publisher="anthropic", location=location
    )
    assert verdict.reason is Reason.MODEL_NOT_FOUND, verdict.message
    assert named in verdict.message


@pytest.mark.parametrize("location", ["global", "europe-west1"])
async def test_claude_tokens_are_counted_where_google_counts_them(
    google: Google, pool: ClientPool, location: str
) -> None:
    # Issue 24, item 1: Claude's counter is not served at `global` (404 there); the model is.
    verdict = await check(
        google, pool, "Model", model=CLAUDE, publisher="anthropic", location=location
    )
    assert verdict.reason is Reason.VALIDATED, verdict.message
    [call] = google.vertex.seen
    counted = "us-east5" if location == "global" else location
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/{counted}/publishers/anthropic/models/"
        "count-tokens:rawPredict"
    )
    if location == "global":
        assert "counted in us-east5" in verdict.message and "not at global" in verdict.message
    # Inference asks the model where the spec says.
    verdict = await check(
        google, pool, "Inference", model=CLAUDE, publisher="anthropic", location=location
    )
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert f"/locations/{location}/" in google.vertex.seen[-1].path


async def test_a_gemini_model_not_in_the_location_is_model_not_found(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Model", model="gemini-0-imaginary")
    assert verdict.reason is Reason.MODEL_NOT_FOUND
    assert "location us-central1" in verdict.message and verdict.code == "NOT_FOUND"


async def test_an_identity_without_predict_permission_is_permission_denied(
    google: Google, pool: ClientPool
) -> None:
    google.vertex.granted = set()
    verdict = await check(google, pool, "Model")
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert "aiplatform.endpoints.predict" in verdict.message
    assert google.account.email in verdict.message and "roles/aiplatform.user" in verdict.message


@pytest.mark.parametrize(
    ("behaviour", "reason", "code", "words"),
    [
        ("service_disabled", Reason.PERMISSION_DENIED, "SERVICE_DISABLED", "not enabled"),
        ("billing_disabled", Reason.PERMISSION_DENIED, "BILLING_DISABLED", "billing"),
        ("rate_limited", Reason.RATE_LIMITED, "RESOURCE_EXHAUSTED", "rate limiting project"),
        ("unavailable", Reason.PROVIDER_UNAVAILABLE, "UNAVAILABLE", "unavailable"),
    ],
)
async def test_google_errors_map_to_reasons(
    google: Google, pool: ClientPool, behaviour: str, reason: Reason, code: str, words: str
) -> None:
    google.vertex.reset(behaviour)
    verdict = await check(google, pool, "Model")
    assert verdict.reason is reason, verdict.message
    assert verdict.code == code and words in verdict.message
    if reason is Reason.RATE_LIMITED:
        assert verdict.result is Result.UNKNOWN


async def test_a_deleted_key_is_invalid_api_key_from_the_token_service(
    google: Google, pool: ClientPool
) -> None:
    google.tokens.forget(google.account)
    verdict = await check(google, pool, "Model")
    assert verdict.reason is Reason.INVALID_API_KEY
    assert verdict.code == "invalid_grant" and "Invalid JWT Signature" in verdict.message
    assert "key key.json of Secret gcp" in verdict.message
    assert not google.vertex.seen  # Vertex AI was never called


async def test_a_key_file_whose_private_key_is_not_the_accounts_is_refused(
    google: Google, pool: ClientPool
) -> None:
    forged = google_token.make_account()  # another key, under the trusted key's id and email
    impostor = google_token.ServiceAccount(
        google.account.email, google.account.key_id, forged.private_pem, forged.public_key
    )
    verdict = await check(google, pool, "Model", secret=google.key_file(impostor))
    assert verdict.reason is Reason.INVALID_API_KEY
    assert google.tokens.refusals == ["Invalid JWT Signature."]


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({"aud": "https://oauth2.googleapis.com/token"}, "claims do not match"),
        ({"iss": "other@p.iam.gserviceaccount.com"}, "claims do not match"),
        ({"scope": "https://www.googleapis.com/auth/devstorage.read_only"}, "scope"),
        ({"exp": int(time.time()) + 7200}, "short-lived"),
    ],
)
async def test_the_token_service_verifies_audience_issuer_scope_and_lifetime(
    google: Google, claims: dict[str, Any], refusal: str
) -> None:
    url = google.token_url.replace(TOKEN_HOST, "127.0.0.1")  # the audience the service sees
    payload = {
        "iss": google.account.email,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": url,
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
        **claims,
    }
    assertion = jwt.encode(
        payload, google.account.private_pem, "RS256", headers={"kid": google.account.key_id}
    )
    before = set(google.tokens.issued)
    async with httpx2.AsyncClient() as http:
        answer = await http.post(
            url,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
        )
    assert answer.status_code == 400, answer.text
    assert refusal in answer.json()["error_description"]
    assert set(google.tokens.issued) == before


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("unavailable", Reason.PROVIDER_UNAVAILABLE),
        ("html", Reason.UNEXPECTED_RESPONSE),
        ("no_token", Reason.UNEXPECTED_RESPONSE),
    ],
)
async def test_token_service_failures_say_they_are_the_token_services(
    google: Google, pool: ClientPool, behaviour: str, reason: Reason
) -> None:
    google.tokens.reset(behaviour)
    verdict = await check(google, pool, "Model")
    assert verdict.reason is reason, verdict.message
    assert "token" in verdict.message.lower()
    assert not google.vertex.seen


async def test_the_token_uri_is_held_to_the_egress_policy(google: Google) -> None:
    pool = ClientPool(EgressPolicy.from_strings(deny=[TOKEN_HOST]), resolver=loopback, proxies={})
    try:
        verdict = await check(google, pool, "Model")
    finally:
        await pool.aclose()
    assert verdict.reason is Reason.EGRESS_DENIED
    assert f"the token service at {TOKEN_HOST}" in verdict.message
    assert not google.tokens.seen and not google.vertex.seen


async def test_a_token_uri_that_does_not_resolve_is_a_dns_failure_naming_it(
    google: Google, pool: ClientPool
) -> None:
    key = json.loads(google.key_file())
    key["token_uri"] = "http://oauth2.nowhere.test/token"
    verdict = await check(google, pool, "Model", secret=json.dumps(key))
    assert verdict.reason is Reason.DNS_FAILURE
    assert "oauth2.nowhere.test" in verdict.message and "token service" in verdict.message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"type": "authorized_user"}, 'its "type" is not "service_account"'),
        ({"private_key": None}, 'no "private_key"'),
        ({"token_uri": "ftp://oauth2.loopback.test/token"}, "token_uri"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"},
            "RSA private key",
        ),
    ],
)
async def test_an_unusable_key_file_is_invalid_configuration(
    google: Google, pool: ClientPool, change: dict[str, Any], words: str
) -> None:
    key = json.loads(google.key_file())
    key.update({k: v for k, v in change.items() if v is not None})
    for name in (k for k, v in change.items() if v is None):
        del key[name]
    verdict = await check(google, pool, "Model", secret=json.dumps(key))
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert words in verdict.message
    assert not google.tokens.seen
    assert_no_secret(visible(verdict), google)


async def test_a_minted_token_echoed_by_the_provider_is_redacted_from_the_verdict(
    google: Google, pool: ClientPool
) -> None:
    google.vertex.reset("echo")
    verdict = await check(google, pool, "Model")
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert f"credentials Bearer {MARKER}" in verdict.message
    [token] = google.tokens.issued.keys() & {google.vertex.seen[0].headers["authorization"][7:]}
    assert_no_secret(visible(verdict), google, token)


async def test_secrets_echoed_by_the_services_are_redacted_and_the_account_is_not(
    google: Google, pool: ClientPool
) -> None:
    google.vertex.granted = set()  # 403: its message names the resource, not the token

    verdict = await check(google, pool, "Model")
    assert verdict.reason is Reason.PERMISSION_DENIED
    assert google.account.email in verdict.message and PROJECT in verdict.message
    assert "aiplatform.googleapis.com" in verdict.message  # URLs are not mangled
    assert_no_secret(visible(verdict), google, google.tokens.seen[0].body["assertion"])


# --- express mode ------------------------------------------------------------------------


async def test_an_express_key_goes_in_x_goog_api_key_to_the_project_free_path(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Model", secret=vertex_dialect.EXPRESS_KEY)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert not google.tokens.seen
    [call] = google.vertex.seen
    assert call.path == f"/v1/publishers/google/models/{GEMINI}:countTokens"
    assert call.headers["x-goog-api-key"] == vertex_dialect.EXPRESS_KEY
    assert "authorization" not in call.headers and "key=" not in call.query


async def test_express_inference_generates_on_the_express_path(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Inference", secret=vertex_dialect.EXPRESS_KEY)
    assert verdict.reason is Reason.VALIDATED, verdict.message
    assert google.vertex.seen[-1].path == f"/v1/publishers/google/models/{GEMINI}:generateContent"


async def test_a_bad_express_key_is_invalid_api_key_and_never_shown(
    google: Google, pool: ClientPool
) -> None:
    wrong = "AQ.Ab8RN6WrongExpressKey000000000000000000"
    verdict = await check(google, pool, "Model", secret=wrong)
    assert verdict.reason is Reason.INVALID_API_KEY and verdict.code == "API_KEY_INVALID"
    assert wrong[4:16] not in visible(verdict)


@pytest.mark.parametrize(
    ("vtype", "model", "publisher", "words"),
    [
        ("Connectivity", None, "google", "set spec.model"),
        ("Model", CLAUDE, "anthropic", "Google's models only"),
    ],
)
async def test_express_mode_limits_are_invalid_configuration(
    google: Google, pool: ClientPool, vtype: str, model: str | None, publisher: str, words: str
) -> None:
    verdict = await check(
        google, pool, vtype, secret=vertex_dialect.EXPRESS_KEY, model=model, publisher=publisher
    )
    assert verdict.reason is Reason.INVALID_CONFIGURATION and words in verdict.message
    assert not google.vertex.seen


async def test_express_connectivity_with_a_model_counts_its_tokens(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Connectivity", secret=vertex_dialect.EXPRESS_KEY)
    assert verdict.reason is Reason.VALIDATED
    assert google.vertex.seen[0].path.endswith(":countTokens")


async def test_a_value_that_is_neither_a_key_file_nor_an_api_key_is_invalid_configuration(
    google: Google, pool: ClientPool
) -> None:
    verdict = await check(google, pool, "Model", secret="two words")
    assert verdict.reason is Reason.INVALID_CONFIGURATION
    assert "neither a service-account JSON key nor an API key" in verdict.message


# --- a bearer token from elsewhere (workload identity) ----------------------------------


async def probe_with(
    google: Google, token: BearerToken | None, api_key: str | None
) -> tuple[Any, ProbeContext]:
    async with httpx2.AsyncClient() as http:
        ctx = ProbeContext(
            provider=registry.get("vertex-ai"),
            endpoint=google.vertex_url,
            validation_type=ValidationType.MODEL,
            http=http,
            timeout=5.0,
            model=GEMINI,
            api_key=api_key,
            api_key_ref=SecretKeyRef(name="gcp", key="key.json") if api_key else None,
            vertex_ai=VertexAISpec(project=PROJECT, location="us-central1"),
            bearer_token=token,
        )
        try:
            outcome = await ctx.provider.probe(ctx)
        except ProbeFailure as failure:
            outcome = failure.outcome
    return outcome, ctx


async def test_a_given_bearer_token_is_used_before_any_static_credentials(
    google: Google,
) -> None:
    google.vertex.tokens.add("ya29.identity-token-0123456789abcdef")
    token = BearerToken("ya29.identity-token-0123456789abcdef")
    outcome, _ = await probe_with(google, token, api_key=google.key_file())
    assert outcome.reason is Reason.VALIDATED, outcome.message
    assert not google.tokens.seen  # no exchange of the key file
    assert google.vertex.seen[0].headers["authorization"] == f"Bearer {token.token}"
    assert "the workload identity" in outcome.message.lower()


async def test_a_refused_bearer_token_points_at_the_identity_not_a_secret(
    google: Google,
) -> None:
    outcome, _ = await probe_with(google, BearerToken("ya29.expired-token-000000"), api_key=None)
    assert outcome.reason is Reason.INVALID_API_KEY
    assert "identity" in outcome.message and "Secret" not in outcome.message


async def test_no_credentials_at_all_is_invalid_configuration(google: Google) -> None:
    outcome, _ = await probe_with(google, None, api_key=None)
    assert outcome.reason is Reason.INVALID_CONFIGURATION
    assert "spec.apiKeySecretRef" in outcome.message and not google.vertex.seen


async def test_what_a_probe_holds_is_redacted_from_logs_only_while_it_holds_it(
    google: Google,
) -> None:
    async with httpx2.AsyncClient() as http:
        ctx = ProbeContext(
            provider=registry.get("vertex-ai"),
            endpoint=google.vertex_url,
            validation_type=ValidationType.MODEL,
            http=http,
            timeout=5.0,
        )
    minted = "ya29.minted-during-the-probe-abcdef0123456789"
    with ctx.holding(minted):
        assert logs.redact(f"token {minted}") == f"token {MARKER}"
    assert logs.redact(f"token {minted}") == f"token {minted}"
    assert ctx.found.secrets == [minted]  # and the verdict is redacted with it


# --- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "endpoint"),
    [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
        ("us", "https://aiplatform.us.rep.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ],
)
def test_the_default_endpoint_is_the_locations_host(location: str, endpoint: str) -> None:
    raw = {"provider": "vertex-ai", "vertexAI": {"project": PROJECT, "location": location}}
    spec = parse_spec(raw)
    assert registry.get("vertex-ai").base_url(spec.endpoint, spec) == endpoint
    assert regional_endpoint(location) == endpoint
    given = parse_spec({**raw, "endpoint": "https://psc.example.internal/"})
    assert registry.get("vertex-ai").base_url(given.endpoint, given) == (
        "https://psc.example.internal"
    )


def test_signing_refuses_a_key_that_is_not_rsa(account: google_token.ServiceAccount) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    key = service_account_key(
        json.dumps({**json.loads(account.key_file("https://t/token")), "private_key": pem})
    )
    assert key is not None
    with pytest.raises(ProbeFailure) as raised:
        sign(key, "scope", time.time())
    assert raised.value.outcome.reason is Reason.INVALID_CONFIGURATION


# --- `llmconn validate`, offline ---------------------------------------------------------


def test_llmconn_validate_takes_both_static_forms_offline(
    google: Google, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmconn.cli.main import main

    key_file = google.account.key_file(google.token_url.replace(TOKEN_HOST, "127.0.0.1"))
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gcp"},
            "stringData": {"key.json": key_file, "express": vertex_dialect.EXPRESS_KEY},
        }
    ]
    for name, key in (("with-key-file", "key.json"), ("express", "express")):
        docs.append(
            {
                "apiVersion": "llmconn.dev/v1alpha1",
                "kind": "LLMConnection",
                "metadata": {"name": name},
                "spec": {
                    "provider": "vertex-ai",
                    "endpoint": google.vertex_url,
                    "model": GEMINI,
                    "vertexAI": {"project": PROJECT, "location": "us-central1"},
                    "apiKeySecretRef": {"name": "gcp", "key": key},
                },
            }
        )
    path = tmp_path / "vertex.yaml"
    path.write_text("\n---\n".join(json.dumps(doc) for doc in docs))
    code = main(["validate", "-f", str(path), "-o", "json"])
    out, err = capsys.readouterr()
    items = json.loads(out)
    assert [i["status"]["reason"] for i in items] == ["Validated", "Validated"], items
    assert code == 0
    assert items[0]["status"]["details"]["serviceAccount"] == google.account.email
    assert len(google.tokens.seen) == 1  # one exchange, for the key file only
    assert_no_secret(out + err, google, vertex_dialect.EXPRESS_KEY)


async def test_a_token_uri_at_the_metadata_address_is_refused_before_any_byte(
    google: Google, pool: ClientPool
) -> None:
    key = json.loads(google.key_file())
    key["token_uri"] = "http://169.254.169.254/computeMetadata/v1/token"
    verdict = await check(google, pool, "Model", secret=json.dumps(key))
    assert verdict.reason is Reason.EGRESS_DENIED
    assert "the token service at 169.254.169.254" in verdict.message
    assert not google.vertex.seen


# --- the key file as a credential -----------------------------------------------------------


def test_of_a_key_file_only_the_private_parts_are_secret(
    account: google_token.ServiceAccount,
) -> None:
    from llmconn.model.credentials import key_file_secrets

    text = account.key_file("https://oauth2.googleapis.com/token")
    found = key_file_secrets(text)
    body = "".join(line for line in account.private_pem.splitlines() if "PRIVATE" not in line)
    assert body in found and account.key_id in found
    assert not any(account.email in value or "googleapis" in value for value in found)
    key = service_account_key(text)
    assert key is not None and account.private_pem[40:60] not in repr(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AQ.Ab8RN6express-key", ("AQ.Ab8RN6express-key",)),
        (
            '{"type": "authorized_user", "refresh_token": "1//0g-refresh"}',
            ("authorized_user", "1//0g-refresh"),
        ),
        ("{not json at all", ("{not json at all",)),
    ],
)
def test_anything_else_is_secret_whole_or_in_every_string_of_its_json(
    text: str, expected: tuple[str, ...]
) -> None:
    from llmconn.model.credentials import key_file_secrets

    assert key_file_secrets(text) == expected
