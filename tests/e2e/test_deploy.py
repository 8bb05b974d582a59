"""The operator in its deployed shape on the real control plane: under the chart's
ServiceAccount and RBAC, scraped by Prometheus, as active/standby peers, as shards, and
stopped by SIGTERM while it probes.

Each test runs its own operator process(es) on namespaces of its own.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from opkit import (
    Api,
    ControlledProvider,
    OperatorProcess,
    condition,
    leaked,
    manifest,
    secret,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from chartkit import HELM
from controlplane.cluster import ControlPlane
from servers import azure_dialect, entra
from servers.serve import serve

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmconn"

GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
BAD_KEY = "sk-bad-" + pysecrets.token_hex(12)
ALL_KEYS = (GOOD_KEY, BAD_KEY)

Doc = dict[str, Any]


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[ControlledProvider, str]]:
    p = ControlledProvider(keys={GOOD_KEY})
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture
def own_provider() -> Iterator[tuple[ControlledProvider, str]]:
    """A provider for one test, for tests that count its requests or slow it down."""
    p = ControlledProvider(keys={GOOD_KEY})
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-logs")


@pytest.fixture
def api(cluster: ControlPlane) -> Api:
    return Api(cluster)


@pytest.fixture
def operators() -> Iterator[list[OperatorProcess]]:
    """Operators a test starts; whatever is still running at the end is stopped, and then
    their logs (at debug level) must hold no key, nor a piece of one."""
    started: list[OperatorProcess] = []
    yield started
    for op in started:
        op.stop(signal.SIGKILL, timeout=10)
    for op in started:
        assert leaked(ALL_KEYS, op.log()) == [], op.log_path


@pytest.fixture
def namespaces(cluster: ControlPlane) -> Iterator[list[str]]:
    """Namespaces a test creates; their connections are deleted afterwards (no controller
    finishes a namespace deletion here, and a cluster-wide operator would still see them)."""
    created: list[str] = []
    yield created
    for ns in created:
        cluster.kubectl("delete", "llmconnections", "--all", "-n", ns, "--wait=false", check=False)
        cluster.delete_namespace(ns)


@pytest.fixture(scope="module")
def peering_crds(cluster: ControlPlane) -> ControlPlane:
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(CHART / "crds" / "kopf-peering.yaml"),
    )
    cluster.wait_established("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
    return cluster


# --- helpers -----------------------------------------------------------------------------


def apply(cluster: ControlPlane, *docs: str) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))


def spec(url: str, **extra: Any) -> Doc:
    return {
        "provider": "openai-compatible",
        "endpoint": url,
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
        **extra,
    }


def ready(
    api: Api, ns: str, name: str, want: str, reason: str | None = None, timeout: float = 30
) -> Doc:
    def check() -> Doc | None:
        status = api.status(ns, name)
        ok = condition(status, "Ready").get("status") == want and (
            reason is None or status.get("reason") == reason
        )
        return status if ok else None

    return wait_for(f"{ns}/{name} Ready={want} reason={reason}", check, timeout=timeout)


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` in a Prometheus text exposition, with its labels."""
    return [
        (dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    ]


def value(text: str, metric: str, **labels: str) -> float:
    """The one sample of `metric` whose labels include `labels`."""
    found = [v for ls, v in samples(text, metric) if labels.items() <= ls.items()]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


def ready_series(text: str, ns: str) -> dict[str, dict[str, float]]:
    """llmconn_connection_ready of the connections in `ns`: name -> {status: value}."""
    out: dict[str, dict[str, float]] = {}
    for labels, v in samples(text, "llmconn_connection_ready"):
        if labels["namespace"] == ns:
            out.setdefault(labels["name"], {})[labels["status"]] = v
    return out


def start_all(started: list[OperatorProcess], *ops: OperatorProcess) -> None:
    """Start operators side by side (each start waits for its health endpoint)."""
    started.extend(ops)
    with ThreadPoolExecutor(len(ops)) as pool:
        for future in [pool.submit(op.start) for op in ops]:
            future.result()


def render_chart(helm_env: dict[str, str], release: str, namespace: str, values: Doc) -> list[Doc]:
    values_file = Path(helm_env["HELM_CONFIG_HOME"]).parent / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [
            str(HELM),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "-f",
            str(values_file),
        ],
        capture_output=True,
        text=True,
        env=helm_env,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def chart_args(docs: list[Doc]) -> list[str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def install_account(cluster: ControlPlane, docs: list[Doc], tmp_path: Path) -> tuple[str, Path]:
    """Apply the chart's ServiceAccount and RBAC (and its peering object, when it renders
    one) and nothing else; mint a token; a kubeconfig holding only that token. Returns the
    account's username and the kubeconfig."""
    objects = [d for d in docs if d["kind"] in RBAC_KINDS or d["kind"].endswith("KopfPeering")]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    (account,) = [d["metadata"] for d in docs if d["kind"] == "ServiceAccount"]
    token = cluster.kubectl(
        "create", "token", account["name"], "-n", account["namespace"], "--duration=10m"
    ).stdout.strip()
    kubeconfig = tmp_path / "sa-kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority": str(cluster.ca_file),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": "test", "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    kubeconfig.chmod(0o600)
    return f"system:serviceaccount:{account['namespace']}:{account['name']}", kubeconfig


def token_of(kubeconfig: Path) -> str:
    token: str = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    return token


def get_as(cluster: ControlPlane, token: str, path: str) -> int:
    """HTTP status of a GET with `token`."""
    req = urllib.request.Request(
        cluster.server + path, headers={"Authorization": f"Bearer {token}"}
    )
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def refusals(text: str, *, tokens: bool = True) -> list[str]:
    """Log lines in which the apiserver's authorizer refused the operator something; with
    `tokens=False`, not a refused ServiceAccount token (see `audit_denials`)."""
    # RBAC's wording ('secrets is forbidden: User "..." cannot list ...') as Kopf and httpx
    # quote it. The Event poster logs only "HTTP 403": its writes are judged in the audit
    # log, which tells RBAC apart from a namespace being deleted.
    pattern = re.compile(
        r"is forbidden: User|APIForbiddenError|Not enough permissions|403 Forbidden"
    )
    return [
        line
        for line in text.splitlines()
        if pattern.search(line) and (tokens or "(IdentityExchangeFailed)" not in line)
    ]


def audit_denials(cluster: ControlPlane, username: str, *, tokens: bool = True) -> list[Doc]:
    """Writes by `username` that authentication or RBAC refused (the audit log records
    writes only). Not counted: Events refused in a namespace being deleted (here namespaces
    never finish deleting, and a cluster-wide operator still validates what is left in them);
    with `tokens=False`, ServiceAccount tokens: without `identity.enabled` the chart grants no
    minting, by design, and a cluster-wide operator meets other tests' identity connections
    (the refusal is the connection's IdentityExchangeFailed naming identity.enabled, which the
    identity test below checks)."""
    return [
        e
        for e in cluster.audit_events()
        if e.get("user", {}).get("username") == username
        and (tokens or (e.get("objectRef") or {}).get("subresource") != "token")
        and (
            e.get("responseStatus", {}).get("code") == 401
            or (
                e.get("responseStatus", {}).get("code") == 403
                and "is forbidden: User" in e["responseStatus"].get("message", "")
            )
        )
    ]


def events_for(api: Api, ns: str, name: str) -> list[str]:
    return [
        e["reason"]
        # resourceVersion orders them: timestamps have one-second resolution
        for e in sorted(api.events(ns), key=lambda e: int(e["metadata"]["resourceVersion"]))
        if e["involvedObject"].get("name") == name
    ]


# --- 1. RBAC: the chart's ServiceAccount runs the operator ------------------------------


def test_namespaced_chart_rbac_runs_the_operator_and_keeps_it_out_of_other_namespaces(
    cluster: ControlPlane,
    helm_env: dict[str, str],
    provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    tmp_path: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    _, url = provider
    rel, w1, w2, other = (cluster.create_namespace(n) for n in ("rel", "team-a", "team-b", "other"))
    namespaces += [rel, w1, w2, other]
    release = f"llmconn-ns-{pysecrets.token_hex(3)}"
    docs = render_chart(
        helm_env,
        release,
        rel,
        # Loopback is the test provider here; in a pod it would be the operator itself.
        {"watch": {"namespaces": [w1, w2]}, "egress": {"denyLoopback": False}},
    )
    assert {d["kind"] for d in docs if d["kind"] in RBAC_KINDS} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",  # only the view and edit roles for people, bound to no one
    }
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole") == [
        f"{release}-edit",
        f"{release}-view",
    ]
    args = chart_args(docs)
    assert f"--namespace={w1}" in args and f"--namespace={w2}" in args
    user, kubeconfig = install_account(cluster, docs, tmp_path)
    token = token_of(kubeconfig)

    apply(
        cluster,
        secret(w1, "creds", {"apiKey": BAD_KEY}),
        secret(w2, "creds", {"apiKey": GOOD_KEY}),
        secret(other, "creds", {"apiKey": GOOD_KEY}),
    )
    op = OperatorProcess(cluster, logs, *args, kubeconfig=kubeconfig, name="ns-rbac")
    operators.append(op.start())
    apply(
        cluster,
        manifest(w1, "a", spec(url)),
        manifest(w2, "b", spec(url)),
        manifest(other, "c", spec(url)),
    )
    ready(api, w2, "b", "True", "Validated")
    bad = ready(api, w1, "a", "False", "InvalidAPIKey")
    assert condition(bad, "Stalled").get("status") == "True"
    # Rotation bad -> good: seen through the Secret watch the Role allows.
    apply(cluster, secret(w1, "creds", {"apiKey": GOOD_KEY}))
    ready(api, w1, "a", "True", "Validated")
    wait_for(
        "the Validated event after the rotation",
        lambda: events_for(api, w1, "a")[-1:] == ["Validated"],
    )
    assert events_for(api, w1, "a") == ["ValidationFailed", "Validated"]
    assert events_for(api, w2, "b") == ["Validated"]

    # Outside the watched namespaces: the connection stays unhandled. Evidence that the
    # operator has moved on past it: a connection created after it, in a watched namespace,
    # has its verdict already.
    apply(cluster, manifest(w2, "after-c", spec(url)))
    ready(api, w2, "after-c", "True", "Validated")
    assert api.status(other, "c") == {}
    # ...and the account could not read the Secret there even if it tried.
    assert get_as(cluster, token, f"/api/v1/namespaces/{other}/secrets/creds") == 403
    assert get_as(cluster, token, f"/api/v1/namespaces/{w1}/secrets/creds") == 200
    can_i = cluster.kubectl(
        "auth", "can-i", "get", "secrets", "-n", other, f"--token={token}", check=False
    )
    assert can_i.stdout.strip() == "no"

    # The status writes were the ServiceAccount's, and none of its requests was refused.
    assert cluster.writes(w1, subresource="status", username=user) >= 2
    assert cluster.writes(w1, subresource="status") == cluster.writes(
        w1, subresource="status", username=user
    )
    assert audit_denials(cluster, user) == []
    assert op.healthy()
    assert op.stop() == 0
    assert refusals(op.log()) == []
    assert "Traceback" not in op.log()


def test_cluster_wide_chart_rbac_runs_the_operator(
    cluster: ControlPlane,
    helm_env: dict[str, str],
    provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    tmp_path: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    _, url = provider
    rel, anywhere = cluster.create_namespace("rel"), cluster.create_namespace("anywhere")
    namespaces += [rel, anywhere]
    release = f"llmconn-cw-{pysecrets.token_hex(3)}"
    docs = render_chart(helm_env, release, rel, {"egress": {"denyLoopback": False}})
    assert {d["kind"] for d in docs if d["kind"] in RBAC_KINDS} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    args = chart_args(docs)
    assert "--all-namespaces" in args
    try:
        user, kubeconfig = install_account(cluster, docs, tmp_path)
        apply(cluster, secret(anywhere, "creds", {"apiKey": BAD_KEY}))
        op = OperatorProcess(cluster, logs, *args, kubeconfig=kubeconfig, name="cw-rbac")
        operators.append(op.start())
        apply(cluster, manifest(anywhere, "x", spec(url)))
        ready(api, anywhere, "x", "False", "InvalidAPIKey")
        apply(cluster, secret(anywhere, "creds", {"apiKey": GOOD_KEY}))
        ready(api, anywhere, "x", "True", "Validated")
        wait_for(
            "the Validated event after the rotation",
            lambda: events_for(api, anywhere, "x") == ["ValidationFailed", "Validated"],
        )
        assert cluster.writes(anywhere, subresource="status", username=user) >= 2
        assert audit_denials(cluster, user, tokens=False) == []
        assert op.stop() == 0
        assert refusals(op.log(), tokens=False) == []
        assert "Traceback" not in op.log()
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            cluster.kubectl("delete", kind, release, "--ignore-not-found", check=False)


# --- 1b. RBAC of identity mode: minting tokens where the operator watches, and only there ---

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"


def post_as(cluster: ControlPlane, token: str, path: str, body: Doc) -> int:
    """HTTP status of a POST with `token`."""
    req = urllib.request.Request(
        cluster.server + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def mint_as(cluster: ControlPlane, token: str, ns: str, account: str = "agent") -> int:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 600},
    }
    return post_as(
        cluster, token, f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", request
    )


@pytest.fixture
def azure_with_entra(cluster: ControlPlane) -> Iterator[tuple[entra.EntraState, str, str]]:
    """Entra ID trusting ServiceAccounts named agent, and an Azure OpenAI resource taking its
    tokens; the cluster's issuer readable by them."""
    cluster.public_issuer_discovery()
    directory = entra.EntraState(
        trust_store=ssl.create_default_context(cafile=str(cluster.ca_file))
    )
    directory.add_tenant(TENANT)
    azure = azure_dialect.make_app(entra=directory, role_holders={CLIENT})
    with serve(entra.make_app(directory)) as entra_url, serve(azure) as azure_url:
        yield directory, entra_url, azure_url


def keyless(url: str) -> Doc:
    return {
        "provider": "azure-openai",
        "endpoint": url,
        "azure": {"deployment": "gpt-4o-prod"},
        "identity": {
            "serviceAccountName": "agent",
            "azure": {"tenantId": TENANT, "clientId": CLIENT},
        },
    }


def test_identity_mode_mints_tokens_only_in_the_watched_namespaces(
    cluster: ControlPlane,
    helm_env: dict[str, str],
    azure_with_entra: tuple[entra.EntraState, str, str],
    api: Api,
    logs: Path,
    tmp_path: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    directory, entra_url, azure_url = azure_with_entra
    rel, watched, plain, other = (
        cluster.create_namespace(n) for n in ("rel", "minting", "plain", "other")
    )
    namespaces += [rel, watched, plain, other]
    for ns in (watched, plain, other):
        cluster.kubectl("create", "serviceaccount", "agent", "-n", ns)
        credential = entra.FederatedCredential(cluster.server, f"system:serviceaccount:{ns}:agent")
        directory.add_app(TENANT, CLIENT, *directory.apps.get((TENANT, CLIENT), []), credential)

    # Identity mode for one namespace: its Role may mint tokens there, and nothing else on
    # ServiceAccounts; nowhere else.
    release = f"llmconn-id-{pysecrets.token_hex(3)}"
    values = {"watch": {"namespaces": [watched]}, "egress": {"denyLoopback": False}}
    docs = render_chart(
        helm_env,
        release,
        rel,
        {**values, "identity": {"enabled": True, "azureAuthorityHost": entra_url}},
    )
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    user, kubeconfig = install_account(cluster, docs, tmp_path / "with")
    token = token_of(kubeconfig)
    assert mint_as(cluster, token, watched) == 201
    assert mint_as(cluster, token, other) == 403
    assert get_as(cluster, token, f"/api/v1/namespaces/{watched}/serviceaccounts/agent") == 403
    assert get_as(cluster, token, f"/api/v1/namespaces/{watched}/serviceaccounts") == 403
    refused_by_test = audit_denials(cluster, user)  # the mint in `other`, just above
    op = OperatorProcess(cluster, logs, *chart_args(docs), kubeconfig=kubeconfig, name="id-rbac")
    operators.append(op.start())
    apply(cluster, manifest(watched, "keyless", keyless(azure_url)))
    ready(api, watched, "keyless", "True", "Validated")
    assert audit_denials(cluster, user) == refused_by_test  # the operator was refused nothing

    # The default chart (identity off) in another namespace: the API server refuses the
    # TokenRequest, and the connection says what to turn on.
    plain_release = f"llmconn-plain-{pysecrets.token_hex(3)}"
    plain_docs = render_chart(
        helm_env,
        plain_release,
        rel,
        {"watch": {"namespaces": [plain]}, "egress": {"denyLoopback": False},
         "identity": {"azureAuthorityHost": entra_url}},
    )  # fmt: skip
    _, plain_kubeconfig = install_account(cluster, plain_docs, tmp_path / "without")
    assert mint_as(cluster, token_of(plain_kubeconfig), plain) == 403
    op2 = OperatorProcess(
        cluster, logs, *chart_args(plain_docs), kubeconfig=plain_kubeconfig, name="no-id-rbac"
    )
    operators.append(op2.start())
    apply(cluster, manifest(plain, "keyless", keyless(azure_url)))
    status = ready(api, plain, "keyless", "False", "IdentityExchangeFailed")
    assert status["code"] == "Forbidden"
    assert "identity.enabled=true" in status["message"]
    assert condition(status, "Stalled")["status"] == "True"
    # Not one token reached a log.
    for text in (op.log(), op2.log()):
        for issued in directory.issued:
            assert issued not in text
        for seen in directory.seen:
            assert seen.body["client_assertion"] not in text
    assert op.stop() == 0 and op2.stop() == 0
    assert "Traceback" not in op.log() + op2.log()
    for name in (release, plain_release):  # the roles for people are cluster-wide
        for role in (f"{name}-view", f"{name}-edit"):
            cluster.kubectl("delete", "clusterrole", role, "--ignore-not-found", check=False)


def test_cluster_wide_identity_mode_mints_in_any_namespace(
    cluster: ControlPlane,
    helm_env: dict[str, str],
    tmp_path: Path,
    namespaces: list[str],
) -> None:
    rel, anywhere = cluster.create_namespace("rel"), cluster.create_namespace("anywhere")
    namespaces += [rel, anywhere]
    cluster.kubectl("create", "serviceaccount", "agent", "-n", anywhere)
    release = f"llmconn-cwid-{pysecrets.token_hex(3)}"
    try:
        docs = render_chart(helm_env, release, rel, {"identity": {"enabled": True}})
        _, kubeconfig = install_account(cluster, docs, tmp_path)
        token = token_of(kubeconfig)
        assert mint_as(cluster, token, anywhere) == 201
        assert get_as(cluster, token, f"/api/v1/namespaces/{anywhere}/serviceaccounts/agent") == 403
        plain = render_chart(helm_env, release, rel, {})  # the same release, identity off
        cluster.kubectl(
            "apply", "-f", "-",
            input=yaml.safe_dump_all([d for d in plain if d["kind"] == "ClusterRole"]),
        )  # fmt: skip
        wait_for("the grant to go", lambda: mint_as(cluster, token, anywhere) == 403)
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            cluster.kubectl("delete", kind, release, "--ignore-not-found", check=False)


# --- 2. metrics scraped while the operator runs ------------------------------------------


def test_metrics_scraped_while_running(
    cluster: ControlPlane,
    provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    p, url = provider
    ns = cluster.create_namespace("solo-metrics")
    namespaces.append(ns)
    # One worker, so that a slow provider leaves a validation waiting (llmconn_queue_depth).
    op = OperatorProcess(
        cluster, logs, "-n", ns, "--default-interval", "1h", "--concurrency", "1", name="metrics"
    )
    operators.append(op.start())
    started = time.time()
    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY}),
        secret(ns, "bad-creds", {"apiKey": BAD_KEY}),
        manifest(ns, "good", spec(url)),
        manifest(ns, "good-openai", spec(url, provider="openai")),
        manifest(ns, "bad", spec(url, apiKeySecretRef={"name": "bad-creds", "key": "apiKey"})),
    )
    ready(api, ns, "good", "True")
    ready(api, ns, "good-openai", "True")
    ready(api, ns, "bad", "False", "InvalidAPIKey")
    first = op.metrics()
    stamp = value(first, "llmconn_last_validation_timestamp_seconds", namespace=ns, name="good")
    # One more validation of "good", on request.
    cluster.kubectl(
        "annotate", "-n", ns, "llmconnection/good", "llmconn.dev/validate-requested-at=again"
    )
    wait_for(
        "the requested validation",
        lambda: api.status(ns, "good").get("lastHandledRequestedAt") == "again",
    )
    text = wait_for(
        "four validations in the metrics",
        lambda: op.metrics() if op.validations() == 4 else None,
    )

    validations = {
        (ls["provider"], ls["result"], ls["reason"]): v
        for ls, v in samples(text, "llmconn_validations_total")
    }
    assert validations == {
        ("openai-compatible", "success", "Validated"): 2,
        ("openai", "success", "Validated"): 1,
        ("openai-compatible", "failed", "InvalidAPIKey"): 1,
    }
    counts = {
        ls["provider"]: v for ls, v in samples(text, "llmconn_validation_duration_seconds_count")
    }
    assert counts == {"openai-compatible": 3, "openai": 1}
    for prov, count in counts.items():
        buckets = sorted(
            (float(ls["le"]), v)
            for ls, v in samples(text, "llmconn_validation_duration_seconds_bucket")
            if ls["provider"] == prov
        )
        assert buckets[-1] == (float("inf"), count)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert value(text, "llmconn_validation_duration_seconds_sum", provider=prov) > 0

    series = ready_series(text, ns)
    assert series == {
        "good": {"True": 1, "False": 0, "Unknown": 0},
        "good-openai": {"True": 1, "False": 0, "Unknown": 0},
        "bad": {"True": 0, "False": 1, "Unknown": 0},
    }
    providers = {
        ls["name"]: ls["provider"]
        for ls, _ in samples(text, "llmconn_connection_ready")
        if ls["namespace"] == ns
    }
    assert providers == {
        "good": "openai-compatible",
        "good-openai": "openai",
        "bad": "openai-compatible",
    }
    now = time.time()
    for name in ("good", "good-openai", "bad"):
        ts = value(text, "llmconn_last_validation_timestamp_seconds", namespace=ns, name=name)
        assert started <= ts <= now
    assert (
        value(text, "llmconn_last_validation_timestamp_seconds", namespace=ns, name="good") > stamp
    )

    assert value(text, "llmconn_connections") == 3
    assert value(text, "llmconn_schedule_lag_seconds_count") >= 4

    # The work gauges (sampled every second): at rest both are 0; with the provider slowed
    # down, one validation runs on the only worker while another waits.
    def work(t: str) -> tuple[float, float]:
        return value(t, "llmconn_probes_in_flight"), value(t, "llmconn_queue_depth")

    wait_for("idle work gauges", lambda: work(op.metrics()) == (0, 0))
    p.delay = 3.0
    try:
        for name in ("good", "good-openai"):
            cluster.kubectl(
                "annotate",
                "-n",
                ns,
                f"llmconnection/{name}",
                "--overwrite",
                "llmconn.dev/validate-requested-at=slow",
            )
        wait_for("one in flight and one waiting", lambda: work(op.metrics()) == (1, 1))
    finally:
        p.delay = 0.0
    for name in ("good", "good-openai"):
        wait_for(
            f"{name}'s slow validation",
            lambda name=name: api.status(ns, name).get("lastHandledRequestedAt") == "slow",
        )
    wait_for("idle work gauges again", lambda: work(op.metrics()) == (0, 0))

    # Deleting a connection removes its series.
    cluster.kubectl("delete", "-n", ns, "llmconnection/bad")
    after = wait_for(
        "the deleted connection's series to go",
        lambda: t if "bad" not in ready_series(t := op.metrics(), ns) else None,
    )
    assert value(after, "llmconn_connections") == 2
    assert not [
        ls
        for ls, _ in samples(after, "llmconn_last_validation_timestamp_seconds")
        if ls["namespace"] == ns and ls["name"] == "bad"
    ]
    assert set(ready_series(after, ns)) == {"good", "good-openai"}
    # Counters keep their history.
    assert value(after, "llmconn_validations_total", reason="InvalidAPIKey") == 1

    assert leaked(ALL_KEYS, text + after) == []
    assert op.stop() == 0


# --- 3. peering: active/standby ----------------------------------------------------------


# Kopf's own words (kopf/_core/engines/peering.py and its watch-stream): a replica with
# mandatory peering starts paused, says "Pausing the watch-stream" at debug level, and
# "Resuming operations after the pause" when it finds itself the highest priority.
PAUSED = (
    "standing by: another replica with a higher priority is active",
    "Pausing operations in favour of",
    "Pausing all operators",
    "Pausing the watch-stream for llmconnections",
)
RESUMED = (
    "active: no replica with a higher priority is alive",
    "Resuming operations after the pause",
    "Resuming the watch-stream for llmconnections",
)


def peering_state(log: str) -> str | None:
    """What this replica last said about its peering: active, paused, or nothing yet."""
    state = None
    for line in log.splitlines():
        if any(r in line for r in RESUMED):
            state = "active"
        elif any(p in line for p in PAUSED):
            state = "paused"
    return state


def kopf_peering(cluster: ControlPlane, ns: str, name: str) -> None:
    apply(
        cluster,
        json.dumps(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": name, "namespace": ns},
            }
        ),
    )


def peers(api: Api, ns: str, name: str) -> dict[str, Doc]:
    obj = api.get(f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{name}") or {}
    return dict(obj.get("status") or {})


def test_peering_one_replica_validates_and_the_standby_takes_over_after_sigkill(
    peering_crds: ControlPlane,
    helm_env: dict[str, str],
    tmp_path: Path,
    own_provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    """Two replicas as the chart runs them (replicaCount 2: --peering, a KopfPeering and its
    RBAC, POD_ID as Kopf's identity), under the chart's ServiceAccount."""
    cluster = peering_crds
    _, url = own_provider
    rel, ns = cluster.create_namespace("rel"), cluster.create_namespace("solo-peering")
    namespaces += [rel, ns]
    docs = render_chart(
        helm_env,
        f"llmconn-ha-{pysecrets.token_hex(3)}",
        rel,
        {"watch": {"namespaces": [ns]}, "replicaCount": 2, "egress": {"denyLoopback": False}},
    )
    (peering,) = [d["metadata"]["name"] for d in docs if d["kind"] == "KopfPeering"]
    args = chart_args(docs)
    assert f"--peering={peering}" in args
    user, kubeconfig = install_account(cluster, docs, tmp_path)
    ops = {
        ident: OperatorProcess(
            cluster,
            logs,
            *args,
            "--default-interval",
            "1h",
            "--peering-lifetime",
            "10s",
            kubeconfig=kubeconfig,
            env={"POD_ID": ident},  # what the chart sets: the pod's name
            name=ident,
        )
        for ident in ("peer-a", "peer-b")
    }
    start_all(operators, *ops.values())  # each with a random priority (see runner)
    seen = wait_for(
        "both replicas in the peering object",
        lambda: len(peers(api, ns, peering)) == 2 and peers(api, ns, peering),
    )
    active_id = max(seen, key=lambda i: seen[i]["priority"])
    active, standby = ops[active_id], next(op for i, op in ops.items() if i != active_id)
    wait_for(
        "one active replica and one standby",
        lambda: (peering_state(active.log()), peering_state(standby.log())) == ("active", "paused"),
    )

    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY}),
        *(manifest(ns, f"p{i}", spec(url, validation={"interval": "1s"})) for i in range(3)),
    )
    for i in range(3):
        ready(api, ns, f"p{i}", "True")
    wait_for("periodic validations by the active replica", lambda: active.validations() >= 6)
    assert standby.validations() == 0
    assert peering_state(standby.log()) == "paused"

    # SIGKILL: no goodbye in the peering object; the standby waits out the dead peer's
    # keep-alive lifetime (--peering-lifetime 10s) and resumes.
    active.stop(signal.SIGKILL)
    wait_for("the standby to take over", lambda: standby.validations() > 0, timeout=40, every=0.5)
    assert peering_state(standby.log()) == "active"
    # It watches now: a spec change is handled by the former standby.
    apply(cluster, manifest(ns, "p0", spec(url, model="gpt-gone", validation={"interval": "1s"})))
    ready(api, ns, "p0", "False", "ModelNotFound")
    assert standby.stop() == 0
    for op in ops.values():
        assert refusals(op.log()) == []
    assert audit_denials(cluster, user) == []


def test_peering_a_replica_paused_by_a_higher_priority_one_stops_validating(
    peering_crds: ControlPlane,
    own_provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    """A rolling update or a restart can bring a replica with a higher priority than the
    active one: the old one must stand by from then on."""
    cluster = peering_crds
    _, url = own_provider
    ns = cluster.create_namespace("solo-peering")
    namespaces.append(ns)
    kopf_peering(cluster, ns, "ha")

    def replica(ident: str, priority: int) -> OperatorProcess:
        return OperatorProcess(
            cluster,
            logs,
            "-n",
            ns,
            "--peering",
            "ha",
            "--priority",
            str(priority),
            "--default-interval",
            "1h",
            env={"POD_ID": ident},
            name=ident,
        )

    low = replica("low", 1)
    operators.append(low.start())
    wait_for("the first replica to be active", lambda: peering_state(low.log()) == "active")
    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY}),
        *(manifest(ns, f"q{i}", spec(url, validation={"interval": "1s"})) for i in range(3)),
    )
    wait_for("periodic validations by the first replica", lambda: low.validations() >= 6)
    high = replica("high", 2)
    operators.append(high.start())
    wait_for("the first replica to pause", lambda: peering_state(low.log()) == "paused")
    wait_for("the new replica to validate", lambda: high.validations() >= 3)
    # A validation in flight at the pause may still finish: wait until the active replica
    # has validated every connection again, then count the paused one's from there.
    mark = high.validations()
    wait_for("a round by the active replica", lambda: high.validations() >= mark + 3)
    before = low.validations()
    # Evidence of time passing with work to do: three more rounds (1 s intervals), all the
    # active replica's; the paused one validated nothing meanwhile.
    mark = high.validations()
    wait_for("three rounds by the active replica", lambda: high.validations() >= mark + 9)
    assert low.validations() == before


# --- 4. sharding -------------------------------------------------------------------------


def test_two_shards_split_the_connections(
    cluster: ControlPlane,
    own_provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    _, url = own_provider
    ns = cluster.create_namespace("solo-shards")
    namespaces.append(ns)
    shards = [
        OperatorProcess(
            cluster,
            logs,
            "-n",
            ns,
            "--shard-count",
            "2",
            "--shard-index",
            str(i),
            "--default-interval",
            "1h",
            name=f"shard-{i}",
        )
        for i in range(2)
    ]
    start_all(operators, *shards)
    n = 10
    names = {f"s{i}" for i in range(n)}
    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY}),
        *(manifest(ns, name, spec(url)) for name in sorted(names)),
    )
    for name in names:
        ready(api, ns, name, "True")
    wait_for("ten validations", lambda: sum(op.validations() for op in shards) >= n)
    time.sleep(1)  # a second validation of any connection would show up here
    texts = [op.metrics() for op in shards]
    slices = [set(ready_series(t, ns)) for t in texts]
    assert slices[0].isdisjoint(slices[1])
    assert slices[0] | slices[1] == names
    assert [value(t, "llmconn_connections") for t in texts] == [len(s) for s in slices]
    assert [op.validations() for op in shards] == [len(s) for s in slices]

    # A Secret rotation reaches each connection through its own shard only, once.
    apply(cluster, secret(ns, "creds", {"apiKey": BAD_KEY}))
    for name in names:
        ready(api, ns, name, "False", "InvalidAPIKey")
    time.sleep(1)
    texts = [op.metrics() for op in shards]
    assert [set(ready_series(t, ns)) for t in texts] == slices
    assert [op.validations() for op in shards] == [2 * len(s) for s in slices]
    for t, s in zip(texts, slices, strict=True):
        assert all(ready_series(t, ns)[name]["False"] == 1 for name in s)
    for op in shards:
        assert op.stop() == 0


# --- 5. graceful shutdown ----------------------------------------------------------------


def test_sigterm_lets_probes_in_flight_write_their_verdict(
    cluster: ControlPlane,
    own_provider: tuple[ControlledProvider, str],
    api: Api,
    logs: Path,
    namespaces: list[str],
    operators: list[OperatorProcess],
) -> None:
    p, url = own_provider
    p.delay = 1.5
    ns = cluster.create_namespace("solo-shutdown")
    namespaces.append(ns)
    op = OperatorProcess(cluster, logs, "-n", ns, "--default-interval", "1h", name="shutdown")
    operators.append(op.start())
    n = 6
    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY}),
        *(manifest(ns, f"g{i}", spec(url)) for i in range(n)),
    )
    # Reconciling=True is written when a first probe takes a while: all are in flight now.
    for i in range(n):
        wait_for(
            f"g{i} in flight",
            lambda i=i: condition(api.status(ns, f"g{i}"), "Reconciling").get("status") == "True",
        )
    assert op.stop(signal.SIGTERM) == 0
    for i in range(n):
        status = api.status(ns, f"g{i}")
        assert status.get("result") == "success", status
        assert status["reason"] == "Validated"
        assert condition(status, "Ready")["status"] == "True"
        assert condition(status, "Reconciling") == {}
        assert status["lastValidationTime"] and isinstance(status["latencyMs"], int)
        # The transition's Event went out too, before the operator closed its client.
        assert events_for(api, ns, f"g{i}") == ["Validated"]
    assert "Traceback" not in op.log()
