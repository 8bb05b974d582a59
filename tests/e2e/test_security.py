"""The adversarial suite on the real control plane: what a tenant with namespace rights tries.

- A Secret reference that climbs into another namespace is refused at admission, and, past an
  older CRD that admitted it, the operator sends no request for it.
- Request shaping (timeouts, URLs, headers) is refused at admission with the field named.
- A status is bounded by the CRD, and a megabyte provider answer still yields a small one.
- The operator at debug level, with canary keys in every credential position and a provider
  that echoes every request header, logs none of them in any encoding, nor its own token.
- One namespace's slow endpoints do not delay another namespace's validation.
- A namespace of flapping connections writes a bounded number of Events and, past its
  write budget, waits for it, while another namespace's new connection is written at once.
- A tenant's KopfPeering (namespaced mode) with a huge priority pauses its own namespace at
  most, and one with an absurd lifetime pauses nothing and ends nothing.
- The metrics and health ports listen on --listen-address only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import secrets as pysecrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opkit import Api, ControlledProvider, OperatorProcess, condition, manifest, secret, wait_for

from controlplane.cluster import ControlPlane
from servers.serve import serve

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "llmconnections.yaml"
BIN_DIR = REPO / ".local" / "bin"
TRAVERSAL = "../../victim/secrets/topsecret"


def apply(cluster: ControlPlane, *docs: str, check: bool = True) -> Any:
    return cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs), check=check)


def refused(cluster: ControlPlane, ns: str, spec: dict[str, Any]) -> str:
    result = apply(cluster, manifest(ns, "attack", spec), check=False)
    assert result.returncode != 0, f"admitted: {spec}"
    return str(result.stderr)


# --- admission -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"apiKeySecretRef": {"name": TRAVERSAL}}, "spec.apiKeySecretRef.name"),
        (
            {"headersFromSecret": [{"name": "X-Token", "secretKeyRef": {"name": TRAVERSAL}}]},
            "spec.headersFromSecret[0].secretKeyRef.name",
        ),
        ({"tls": {"caBundleSecretRef": {"name": TRAVERSAL}}}, "spec.tls.caBundleSecretRef.name"),
        ({"apiKeySecretRef": {"name": "k", "key": "../x"}}, "spec.apiKeySecretRef.key"),
        ({"validation": {"timeout": "9999h"}}, "timeout must be at most 60s"),
        ({"validation": {"timeout": "99999999999999999999h"}}, "timeout must be at most 60s"),
        ({"validation": {"timeout": "1m0.5s"}}, "timeout must be at most 60s"),
        ({"endpoint": "https://api.example.com/v1?x=#"}, "must not have a query"),
        ({"model": "../../../admin/secret"}, "model must not have a '.' or '..'"),
        ({"model": "gpt-4o\x1b]52;c;ZXZpbA==\x07\x1b[2J"}, "spec.model"),  # OSC 52, clear
        ({"model": "gpt-4o\u202e"}, "spec.model"),
        ({"headers": {"Host": "internal.example"}}, "set by the HTTP client"),
        ({"headers": {"Cookie": "a=b"}}, "must not carry credentials"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "given twice"),
        (
            {"headersFromSecret": [{"name": "Transfer-Encoding", "secretKeyRef": {"name": "s"}}]},
            "set by",
        ),
        (
            {
                "headers": {"X-Tenant": "a"},
                "headersFromSecret": [{"name": "x-tenant", "secretKeyRef": {"name": "s"}}],
            },
            "given twice",
        ),
        (
            {
                "apiKeySecretRef": {"name": "k"},
                "headersFromSecret": [{"name": "Authorization", "secretKeyRef": {"name": "s"}}],
            },
            "apiKeySecretRef fills",
        ),
    ],
)
def test_admission_refuses_tenant_attacks_naming_the_field(
    cluster: ControlPlane, namespace: str, spec: dict[str, Any], words: str
) -> None:
    assert words in refused(cluster, namespace, {"provider": "openai", **spec})


def test_admission_keeps_legitimate_connections(cluster: ControlPlane, namespace: str) -> None:
    spec = {
        "provider": "openai-compatible",
        "endpoint": "https://gateway.example.com:8443/v1",
        "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "apiKeySecretRef": {"name": "gw.key-1", "key": "api_key.v2"},
        "headers": {"X-Tenant": "a"},
        "headersFromSecret": [
            {"name": "Cookie", "secretKeyRef": {"name": "gw", "key": "cookie"}},
            {"name": "Proxy-Authorization", "secretKeyRef": {"name": "gw", "key": "proxy"}},
        ],
        "validation": {"timeout": "59.999s"},
    }
    apply(cluster, manifest(namespace, "fine", spec))


def test_the_status_schema_refuses_a_megabyte_status(cluster: ControlPlane, namespace: str) -> None:
    apply(cluster, manifest(namespace, "big", {"provider": "openai"}))
    patch = json.dumps({"status": {"message": "A" * 100_000, "details": {"k": "v" * 1000}}})
    result = cluster.kubectl(
        "patch",
        "llmconnection",
        "big",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
        check=False,
    )
    assert result.returncode != 0
    assert "status.message" in result.stderr and "status.details" in result.stderr


# --- past an older CRD --------------------------------------------------------------------


def loosened_crd() -> str:
    """The CRD as an older release shipped it: Secret names without a pattern."""
    crd = yaml.safe_load(CRD.read_text())

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("apiKeySecretRef", "caBundleSecretRef", "secretKeyRef"):
                if key in node:
                    node[key]["properties"]["name"].pop("pattern", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(crd)
    return yaml.safe_dump(crd)


@pytest.fixture(scope="module")
def old_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: its CRD admits what the current one refuses."""
    plane = ControlPlane(tmp_path_factory.mktemp("old-crd"), BIN_DIR)
    plane.start()
    try:
        plane.kubectl("apply", "-f", "-", input=loosened_crd())
        plane.wait_established("llmconnections.llmconn.dev")
        yield plane
    finally:
        plane.stop()


def test_a_traversal_admitted_by_an_older_crd_reads_nothing(
    old_cluster: ControlPlane, tmp_path: Path
) -> None:
    victim_key = "sk-victim-" + pysecrets.token_hex(16)
    old_cluster.kubectl("create", "namespace", "victim")
    old_cluster.kubectl("create", "namespace", "tenant")
    apply(old_cluster, secret("victim", "topsecret", {"apiKey": victim_key}))
    refs = {
        "apiKeySecretRef": {"name": TRAVERSAL},
        "headersFromSecret": [{"name": "X-Token", "secretKeyRef": {"name": TRAVERSAL}}],
        "tls": {"caBundleSecretRef": {"name": TRAVERSAL}},
    }
    provider = ControlledProvider(keys={victim_key})
    with serve(provider.app()) as url:
        for field, ref in refs.items():
            spec = {"provider": "openai-compatible", "endpoint": url + "/v1", field: ref}
            apply(old_cluster, manifest("tenant", field.lower(), spec))
        gets_before = old_cluster.apiserver_metrics().total(verb="GET", resource="secrets")
        op = OperatorProcess(old_cluster, tmp_path, "-A").start()
        try:
            api = Api(old_cluster)
            for field in refs:
                status = wait_for(
                    f"a verdict on {field}",
                    lambda f=field: api.status("tenant", f.lower()).get("reason"),  # type: ignore[misc]
                )
                assert status == "InvalidConfiguration"
                message = api.status("tenant", field.lower())["message"]
                assert "not a Secret name" in message
            gets_after = old_cluster.apiserver_metrics().total(verb="GET", resource="secrets")
        finally:
            op.stop()
        assert provider.hits == []  # the victim's key never reached the endpoint
    assert gets_after == gets_before  # no Secret was read at all
    assert victim_key not in op.log()


# --- bounded status, written for real ---------------------------------------------------


def test_a_megabyte_answer_yields_a_small_status(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hostile(request: Any) -> Any:
        body = {"error": {"message": "A" * 1_000_000, "code": "C" * 40_000}}
        headers = {f"x-ratelimit-{'k' * 80}-{i}": "9" * 60 for i in range(150)}
        return JSONResponse(body, status_code=400, headers=headers)

    app = Starlette(routes=[Route("/v1/models/{m:path}", hostile)])
    with serve(app) as url:
        spec = {"provider": "openai", "endpoint": url + "/v1", "model": "gpt-4o"}
        apply(cluster, manifest(namespace, "hostile", spec))
        op = OperatorProcess(cluster, tmp_path, "-n", namespace).start()
        try:
            api = Api(cluster)
            status = wait_for("a verdict", lambda: api.status(namespace, "hostile").get("result"))
            assert status == "failed"
            written = api.status(namespace, "hostile")
        finally:
            op.stop()
    assert len(json.dumps(written).encode()) <= 16 * 1024
    assert len(written["message"]) <= 2048 and len(written.get("code", "")) <= 128


# --- no key in the debug log -------------------------------------------------------------


def forms(value: str) -> list[str]:
    """The encodings a leak could take, as substrings to look for."""
    raw = value.encode()
    b64 = [
        base64.b64encode(raw).decode(),
        base64.b64encode(b"Bearer " + raw).decode(),
        base64.b64encode(b"user:" + raw).decode(),
    ]
    out = [value, value.upper(), value.lower(), raw.hex(), raw.hex().upper(), quote(value, safe="")]
    out += b64 + [b.replace("+", "-").replace("/", "_").rstrip("=") for b in b64]
    # The middle of each form, where alignment and framing do not change it.
    return out + [f[4:20] for f in out if len(f) >= 20]


def test_the_debug_log_names_no_credential_in_any_form(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Any) -> Any:
        # The worst provider: every request header back, in the error message and a header.
        said = json.dumps(dict(request.headers))
        return JSONResponse(
            {"error": {"message": said, "type": "invalid_request_error", "code": said[:100]}},
            status_code=401,
            headers={"x-request-id": said[:200], "www-authenticate": f'Bearer error="{said}"'},
        )

    forms_sent: list[dict[str, str]] = []

    async def token_echo(request: Any) -> Any:
        # The worst authorization server: the client's credentials back in its error.
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        forms_sent.append(form)
        said = json.dumps({"authorization": request.headers.get("authorization"), **form})
        return JSONResponse(
            {"error": "invalid_client", "error_description": said},
            status_code=401,
            headers={"www-authenticate": f'Basic realm="{said[:200]}"'},
        )

    canaries = {f"k{i}": f"canary{i}-" + pysecrets.token_urlsafe(24) for i in range(15)}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    app = Starlette(
        routes=[
            Route("/token", token_echo, methods=["POST"]),
            Route("/{path:path}", echo, methods=["GET", "POST", "DELETE"]),
        ]
    )
    with serve(app) as url:
        ref = {"name": "creds"}
        specs = {
            "bearer": {"provider": "openai", "model": "m", "apiKeySecretRef": {**ref, "key": "k0"}},
            "x-api-key": {"provider": "anthropic", "apiKeySecretRef": {**ref, "key": "k1"}},
            "goog": {"provider": "gemini", "apiKeySecretRef": {**ref, "key": "k2"}},
            "azure": {
                "provider": "azure-openai",
                "azure": {"deployment": "d"},
                "apiKeySecretRef": {**ref, "key": "k3"},
            },
            "mcp": {"provider": "mcp", "apiKeySecretRef": {**ref, "key": "k4"}},
            "headers": {
                "provider": "openai-compatible",
                "headersFromSecret": [
                    {"name": "X-Custom-Auth", "secretKeyRef": {**ref, "key": "k5"}},
                    {"name": "Cookie", "secretKeyRef": {**ref, "key": "k6"}},
                    {"name": "Proxy-Authorization", "secretKeyRef": {**ref, "key": "k7"}},
                ],
            },
            # AWS access keys sign every request (the access key id and the session token
            # go out in headers, the secret access key never does), a Bedrock API key is a
            # bearer token, and xAI's key is checked on its own path first.
            "bedrock-sigv4": {
                "provider": "bedrock",
                "bedrock": {"region": "us-east-1"},
                "model": "m",
                "awsCredentialsSecretRef": {
                    **ref,
                    "accessKeyIdKey": "k8",
                    "secretAccessKeyKey": "k9",
                    "sessionTokenKey": "k10",
                },
            },
            "bedrock-key": {
                "provider": "bedrock",
                "bedrock": {"region": "us-east-1"},
                "apiKeySecretRef": {**ref, "key": "k11"},
            },
            "xai": {"provider": "xai", "apiKeySecretRef": {**ref, "key": "k12"}},
            # spec.oauth: the client secret as HTTP Basic and in the form, and a client
            # assertion signed with a private key, all to a token endpoint that echoes them.
            "oauth-basic": {
                "provider": "mcp",
                "oauth": {
                    "clientCredentials": {"secretName": "creds", "clientSecretKey": "k13"},
                    "tokenURL": url + "/token",
                },
            },
            "oauth-post": {
                "provider": "openai-compatible",
                "oauth": {
                    "clientCredentials": {
                        "secretName": "creds",
                        "clientSecretKey": "k14",
                        "authMethod": "client_secret_post",
                    },
                    "tokenURL": url + "/token",
                },
            },
            "oauth-key": {
                "provider": "mcp",
                "oauth": {
                    "privateKeyJWT": {"clientId": "probe", "secretName": "creds"},
                    "tokenURL": url + "/token",
                },
            },
        }
        docs = [secret(namespace, "creds", {**canaries, "clientId": "probe", "privateKey": pem})]
        for name, spec in specs.items():
            endpoint = url + ("/mcp" if spec["provider"] == "mcp" else "/v1")
            docs.append(manifest(namespace, name, {"endpoint": endpoint, **spec}))
        apply(cluster, *docs)
        op = OperatorProcess(cluster, tmp_path, "-n", namespace).start()  # --log-level debug
        try:
            api = Api(cluster)
            for name in specs:
                wait_for(f"{name}'s verdict", lambda n=name: api.status(namespace, n).get("result"))  # type: ignore[misc]
            statuses = json.dumps([api.status(namespace, name) for name in specs])
            events = json.dumps(api.events(namespace))
        finally:
            op.stop()
    log = op.log()
    assert "DEBUG" in log  # the debug level was on
    assertions = [f["client_assertion"] for f in forms_sent if "client_assertion" in f]
    assert assertions and any("client_secret" in f for f in forms_sent)  # every form was sent
    pem_lines = [line for line in pem.splitlines() if not line.startswith("-----")]
    signatures = [a.rsplit(".", 1)[1] for a in assertions]
    basic = base64.b64encode(f"probe:{canaries['k13']}".encode()).decode()
    for value in [*pem_lines, *signatures, basic]:
        for piece in (value[len(value) // 2 - 8 :][:16], value[-16:]):
            assert piece not in log and piece not in statuses + events, "a key, assertion or Basic"
    for value in [*canaries.values(), cluster.token]:
        for form in forms(value):
            assert form not in log, f"a form of a credential is in the operator's log: {form[:6]}…"
            assert form not in statuses and form not in events


# --- one tenant cannot starve another ----------------------------------------------------


@pytest.fixture
def slow_loris() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def test_a_slow_namespace_does_not_delay_another(
    cluster: ControlPlane, slow_loris: str, tmp_path: Path
) -> None:
    slow, fast = cluster.create_namespace("slow"), cluster.create_namespace("fast")
    provider = ControlledProvider(keys={"sk-fast"})
    try:
        hung = {"provider": "openai-compatible", "endpoint": slow_loris}
        hung["validation"] = {"timeout": "60s"}  # type: ignore[assignment]
        apply(cluster, *(manifest(slow, f"hung-{i}", hung) for i in range(8)))
        op = OperatorProcess(cluster, tmp_path, "-n", f"{slow},{fast}", "--concurrency", "4")
        op.start()
        try:
            api = Api(cluster)
            with serve(provider.app()) as url:
                spec = {
                    "provider": "openai-compatible",
                    "endpoint": url + "/v1",
                    "apiKeySecretRef": {"name": "creds"},
                }
                apply(cluster, secret(fast, "creds", {"apiKey": "sk-fast"}))
                apply(cluster, manifest(fast, "quick", spec))
                status = wait_for(
                    "the fast namespace's verdict",
                    lambda: api.status(fast, "quick").get("result"),
                    timeout=45,
                )
                assert status == "success"
                assert condition(api.status(fast, "quick"), "Ready")["status"] == "True"
            # The slow namespace's probes are all still waiting for their 60s timeout.
            assert all("lastValidationTime" not in api.status(slow, f"hung-{i}") for i in range(8))
        finally:
            op.stop()
    finally:
        cluster.delete_namespace(slow)
        cluster.delete_namespace(fast)


# --- budgets for what lands in the API server ---------------------------------------------


class Flip(set):  # type: ignore[type-arg]
    """A provider's key set that takes every other request's key: 200, 401, 200, ..."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def __contains__(self, key: object) -> bool:
        self.asked += 1
        return self.asked % 2 == 0


def flapping(ns: str, url: str, count: int) -> list[str]:
    spec = {
        "provider": "openai-compatible",
        "endpoint": url + "/v1",
        "apiKeySecretRef": {"name": "creds"},
        "validation": {"interval": "1s", "failureThreshold": 1},
    }
    return [
        secret(ns, "creds", {"apiKey": "sk-flap"}),
        *(manifest(ns, f"flap-{i}", spec) for i in range(count)),
    ]


def audit_writes(
    cluster: ControlPlane, ns: str, resource: str, subresource: str | None
) -> list[float]:
    """When each successful write of `resource` in `ns` was received (seconds since epoch)."""
    times = []
    for event in cluster.audit_events():
        ref = event.get("objectRef", {})
        if (
            ref.get("namespace") == ns
            and ref.get("resource") == resource
            and (subresource is None or ref.get("subresource", "") == subresource)
            and event.get("verb") in ("create", "update", "patch")
            and 200 <= event.get("responseStatus", {}).get("code", 0) < 300
        ):
            stamp = str(event["requestReceivedTimestamp"]).replace("Z", "+00:00")
            times.append(dt.datetime.fromisoformat(stamp).timestamp())
    return sorted(times)


def test_flapping_connections_post_a_bounded_number_of_events(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """30 connections at 1s against a provider that alternates 200 and 401 posted an Event per
    transition; now each connection posts two at once, then one a minute."""
    noisy = cluster.create_namespace("flap-events")
    provider = ControlledProvider(keys=set())
    provider.keys = Flip()
    try:
        with serve(provider.app()) as url:
            op = OperatorProcess(
                cluster, tmp_path, "-n", noisy, env={"LLMCONN_NAMESPACE_WRITE_RATE": "0"}
            )
            op.start()
            try:
                started = time.time()
                apply(cluster, *flapping(noisy, url, 10))
                wait_for("many validations", lambda: op.validations() >= 200, timeout=120)
                elapsed = time.time() - started
                metrics = op.metrics()
            finally:
                op.stop()
        writes = audit_writes(cluster, noisy, "events", None)
        # Two at once and one a minute per connection, the summaries at shutdown included.
        assert len(writes) <= 10 * (2 + math.ceil(elapsed / 60) + 1)
        assert f'llmconn_events_held_total{{namespace="{noisy}"}}' in metrics  # it did flap
    finally:
        cluster.delete_namespace(noisy)


def test_a_namespace_past_its_write_budget_waits_and_another_is_not_slowed(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    noisy, victim = cluster.create_namespace("flap-writes"), cluster.create_namespace("victim")
    provider = ControlledProvider(keys={"sk-victim"})
    flap = ControlledProvider(keys=set())
    flap.keys = Flip()
    try:
        with serve(flap.app()) as flap_url, serve(provider.app()) as url:
            op = OperatorProcess(
                cluster,
                tmp_path,
                "-n",
                f"{noisy},{victim}",
                env={"LLMCONN_NAMESPACE_WRITE_RATE": "2", "LLMCONN_NAMESPACE_WRITE_BURST": "5"},
            )
            op.start()
            api = Api(cluster)
            try:
                apply(cluster, *flapping(noisy, flap_url, 10))
                wait_for("the budget to bite", lambda: op.validations() >= 40, timeout=60)
                # The victim's new connection is judged (and not delayed by any budget).
                spec = {
                    "provider": "openai-compatible",
                    "endpoint": url + "/v1",
                    "apiKeySecretRef": {"name": "creds"},
                }
                apply(cluster, secret(victim, "creds", {"apiKey": "sk-victim"}))
                apply(cluster, manifest(victim, "quick", spec))
                wait_for("the victim's verdict", lambda: api.status(victim, "quick").get("result"))
                # A user's change in the noisy namespace is judged too: delayed, never dropped.
                changed = json.loads(flapping(noisy, flap_url, 1)[1])
                changed["spec"]["model"] = "gpt-other"
                apply(cluster, json.dumps(changed))
                wait_for(
                    "the noisy namespace's change judged",
                    lambda: api.status(noisy, "flap-0").get("observedGeneration") == 2,
                    timeout=60,
                )
                metrics = op.metrics()
            finally:
                op.stop()
        # What the API server took from the noisy namespace: the burst, then 2 a second.
        writes = audit_writes(cluster, noisy, "llmconnections", "status")
        assert len(writes) > 5
        assert len(writes) <= 5 + 2 * (writes[-1] - writes[0]) + 2
        assert f'llmconn_status_writes_delayed_total{{namespace="{noisy}"}}' in metrics
        assert f'llmconn_status_writes_delayed_total{{namespace="{victim}"}}' not in metrics
    finally:
        cluster.delete_namespace(noisy)
        cluster.delete_namespace(victim)


# --- peering in namespaced mode ---------------------------------------------------------------


def peering_object(ns: str, status: dict[str, Any] | None = None) -> str:
    obj: dict[str, Any] = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "ha", "namespace": ns},
    }
    if status is not None:
        obj["status"] = status
    return json.dumps(obj)


def peer_entry(priority: int, lifetime: int = 60) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": now}


@pytest.fixture
def peering_crds(cluster: ControlPlane) -> ControlPlane:
    crds = REPO / "charts" / "llmconn" / "crds" / "kopf-peering.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    cluster.wait_established("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
    return cluster


def validated_at(api: Api, ns: str, name: str) -> str | None:
    return api.status(ns, name).get("lastValidationTime")


def test_a_peering_object_kopf_cannot_read_is_repaired_before_kopf_reads_it(
    peering_crds: ControlPlane, tmp_path: Path
) -> None:
    """Kopf stops the whole operator on a peering entry it cannot read (a lifetime of 10**18
    seconds), and again at every start: the operator's startup removes such entries before
    Kopf watches anything, and its own follower never dies of them."""
    cluster = peering_crds
    ns = cluster.create_namespace("peer-absurd")
    provider = ControlledProvider(keys={"sk-victim"})
    args = ("-n", ns, "--peering", "ha", "--priority", "5")
    forever = {"forever": peer_entry(9, 10**18)}
    try:
        # Written while no operator runs: the startup removes it before Kopf reads it.
        apply(cluster, peering_object(ns, forever), secret(ns, "creds", {"apiKey": "sk-victim"}))
        with serve(provider.app()) as url:
            spec = {
                "provider": "openai-compatible",
                "endpoint": url + "/v1",
                "apiKeySecretRef": {"name": "creds"},
            }
            first = OperatorProcess(cluster, tmp_path, *args, name="first")
            first.start()
            try:
                wait_for("the operator active", lambda: "active" in first.log(), timeout=30)
                apply(cluster, manifest(ns, "before", spec))
                api = Api(cluster)
                wait_for("a verdict", lambda: api.status(ns, "before").get("result"))
                # Written while it runs: Kopf may stop it; the follower removes the entry.
                apply(cluster, peering_object(ns, forever))
                wait_for(
                    "the entry read",
                    lambda: (
                        "'forever'" in first.log()
                        or (first.proc is not None and first.proc.poll() is not None)
                    ),
                    timeout=30,
                )
            finally:
                first.stop()
            # Whatever became of that process (Kopf stops it), the next one starts and works.
            second = OperatorProcess(cluster, tmp_path, *args, name="second")
            second.start()
            try:
                apply(cluster, manifest(ns, "after", spec))
                status = wait_for("a verdict", lambda: api.status(ns, "after").get("result"))
                assert status == "success"
                assert second.healthy()
                peering = api.get(f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/ha") or {}
                assert "forever" not in (peering.get("status") or {})
            finally:
                second.stop()
    finally:
        cluster.delete_namespace(ns)


def test_a_tenants_peering_object_pauses_its_own_namespace_in_the_operators_judgement(
    peering_crds: ControlPlane, tmp_path: Path
) -> None:
    """Kopf pauses every namespace's watch when any namespace's peering object names a
    higher priority (so the tenant's claim stops Kopf's news of every namespace); the
    operator judges each namespace by its own object, and goes on validating the other
    namespaces' connections it knows."""
    cluster = peering_crds
    tenant, victim = (
        cluster.create_namespace("peer-tenant"),
        cluster.create_namespace("peer-victim"),
    )
    provider = ControlledProvider(keys={"sk-victim"})
    try:
        apply(
            cluster,
            peering_object(tenant),
            peering_object(victim),
            secret(victim, "creds", {"apiKey": "sk-victim"}),
        )
        with serve(provider.app()) as url:
            op = OperatorProcess(
                cluster, tmp_path, "-n", f"{tenant},{victim}", "--peering", "ha", "--priority", "5"
            )
            op.start()
            api = Api(cluster)
            spec = {
                "provider": "openai-compatible",
                "endpoint": url + "/v1",
                "apiKeySecretRef": {"name": "creds"},
                "validation": {"interval": "1s"},
            }
            try:
                wait_for("the operator active", lambda: "active" in op.log(), timeout=30)
                apply(cluster, manifest(victim, "known", spec))
                wait_for("a verdict", lambda: validated_at(api, victim, "known"))
                # The tenant claims its namespace's peering with the highest priority there is.
                apply(cluster, peering_object(tenant, {"evil": peer_entry(2**31)}))
                wait_for(
                    "Kopf to pause",
                    lambda: "Pausing operations in favour of" in op.log(),
                    timeout=30,
                )
                before = validated_at(api, victim, "known")
                wait_for(
                    "the victim's connection validated again",
                    lambda: validated_at(api, victim, "known") != before,
                )
                assert op.healthy()
            finally:
                op.stop()
    finally:
        cluster.delete_namespace(tenant)
        cluster.delete_namespace(victim)


# --- listeners ----------------------------------------------------------------------------


def nothing_listens(host: str, port: int) -> bool:
    """Whether nothing listens at host:port (a connection is refused)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_the_metrics_and_health_ports_listen_on_the_listen_address_only(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    op = OperatorProcess(cluster, tmp_path, "-A", env={"LLMCONN_LISTEN_ADDRESS": "127.0.0.2"})
    op.host = "127.0.0.2"
    op.start()
    try:
        assert "llmconn_connections" in op.metrics()
        assert op.healthy()
        assert nothing_listens("127.0.0.1", op.metrics_port)
        assert nothing_listens("127.0.0.1", op.health_port)
    finally:
        op.stop()
