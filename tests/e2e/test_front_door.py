"""The front door, run for real: what a cluster admin does first, on a real node.

The image built from operator/Dockerfile by `make image`, `helm install` of charts/llmconn,
`kubectl rollout status`, a Pod the kubelet started Running and Ready, a Secret and an
LLMConnection against a loopback provider turned Ready=True by that Pod, a wrong key turned
InvalidAPIKey, `kubectl logs` without a key, and `helm uninstall` leaving the CRD and the
connections. Nothing the node's processes did went anywhere but loopback.

The chart is installed as users get it: values a user could set (the image `make image`
built, loopback providers allowed, free ports) and the node's plumbing from the Helm
post-renderer (node_postrender.py) only.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from nodekit import (
    API_FORWARD_PORT,
    Forwarder,
    GatedProvider,
    Helm,
    NetWatch,
    PodWatch,
    pods,
    rollout,
    status_writers,
    wait,
)
from opkit import Api, condition, leaked, manifest, secret

from controlplane.cluster import ControlPlane, free_port
from controlplane.node import NODE_NAME
from node.images import CHART_VERSION, OPERATOR_REPOSITORY
from servers.serve import serve

RELEASE = "llmconn"
NAMESPACE = "llmconn-system"
SELECTOR = f"app.kubernetes.io/name=llmconn,app.kubernetes.io/instance={RELEASE}"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
BAD_KEY = "sk-bad-" + pysecrets.token_hex(12)
CRD = "llmconnections.llmconn.dev"

pytestmark = pytest.mark.node

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[GatedProvider, str]]:
    p = GatedProvider(keys={GOOD_KEY}, models=["gpt-4o"])
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(scope="module")
def api_forwarder(node_cluster: ControlPlane) -> Iterator[Forwarder]:
    port = urlparse(node_cluster.server).port
    assert port is not None
    forwarder = Forwarder(API_FORWARD_PORT, port)
    yield forwarder
    forwarder.close()


@pytest.fixture(scope="module")
def netwatch(node_cluster: ControlPlane) -> Iterator[NetWatch]:
    with NetWatch(node_cluster) as watch:
        yield watch


@pytest.fixture(scope="module")
def helm(
    node_cluster: ControlPlane,
    helm_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    api_forwarder: Forwarder,
    netwatch: NetWatch,
) -> Helm:
    return Helm(node_cluster, helm_env, tmp_path_factory.mktemp("front-door-helm"))


def values() -> Doc:
    return {
        # What `make image` built, never pulled: no registry has it.
        "image": {"repository": OPERATOR_REPOSITORY, "pullPolicy": "Never"},
        # The test's providers are on loopback, which in the host's network is the machine's.
        "egress": {"denyLoopback": False},
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
        "config": {"logLevel": "debug"},
    }


def test_helm_install_runs_the_image_and_its_pod_validates_connections(
    node_cluster: ControlPlane,
    helm: Helm,
    provider: tuple[GatedProvider, str],
    netwatch: NetWatch,
) -> None:
    plane = node_cluster
    api = Api(plane)
    gate, url = provider
    assert plane.kubectl("get", "crd", CRD, check=False).returncode != 0  # helm brings it

    chosen = values()
    helm.install("install", RELEASE, NAMESPACE, chosen)
    plane.wait_established(CRD)
    assert "successfully rolled out" in rollout(plane, NAMESPACE, "deployment", RELEASE)

    (pod,) = pods(plane, NAMESPACE, SELECTOR)
    pod_name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["phase"] == "Running"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True
    assert status["restartCount"] == 0
    assert status["image"].endswith(f"{OPERATOR_REPOSITORY}:{CHART_VERSION}")
    assert condition(pod["status"], "Ready")["status"] == "True"
    # ServiceAccount admission gave it its token; the image's user and no capabilities.
    assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])
    assert pod["spec"]["serviceAccountName"] == RELEASE
    state = plane.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        pod_name,
        "--",
        "python",
        "-c",
        "import os; print(os.getuid(), os.getgid(), open('/proc/self/status').read())",
    ).stdout
    assert state.split()[:2] == ["65532", "65532"]
    assert "CapEff:\t0000000000000000" in state
    assert "Seccomp:\t2" in state

    ns = plane.create_namespace("agents")
    spec = {
        "provider": "openai-compatible",
        "endpoint": url,
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
    }
    bad_spec = {**spec, "apiKeySecretRef": {"name": "wrong-creds", "key": "apiKey"}}
    plane.kubectl(
        "apply",
        "-f",
        "-",
        input="\n---\n".join(
            [
                secret(ns, "creds", {"apiKey": GOOD_KEY}),
                secret(ns, "wrong-creds", {"apiKey": BAD_KEY}),
                manifest(ns, "chat", spec),
                manifest(ns, "wrong", bad_spec),
            ]
        ),
    )

    def verdict(name: str, ready: str, reason: str) -> Doc | None:
        status = api.status(ns, name)
        ok = condition(status, "Ready").get("status") == ready and status.get("reason") == reason
        return status if ok else None

    good = wait("chat Ready=True", lambda: verdict("chat", "True", "Validated"), timeout=60)
    assert good["result"] == "success"
    bad = wait("wrong InvalidAPIKey", lambda: verdict("wrong", "False", "InvalidAPIKey"), 60)
    assert bad["result"] == "failed"
    # Written by the Pod, under the chart's ServiceAccount: its token names the pod.
    for name in ("chat", "wrong"):
        writers = [(user, pod) for user, pod, _ in status_writers(plane, ns, name)]
        assert writers and set(writers) == {(ACCOUNT, pod_name)}, writers

    logs = plane.kubectl("logs", "-n", NAMESPACE, pod_name).stdout
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert lines, logs[-2000:]
    assert f"{ns}/chat" in logs and f"{ns}/wrong" in logs
    assert leaked((GOOD_KEY, BAD_KEY), logs) == []
    assert "Traceback" not in logs

    # An upgrade while probes are in flight. The provider holds its answers, validations are
    # requested, and the upgrade replaces the pod (the chart's Recreate: the old one stops
    # first). The old pod gets SIGTERM with its probes in flight; once it has, the answers
    # come, and it writes every verdict and exits by itself within its grace period.
    names = ["chat", "wrong", *(f"more-{i}" for i in range(4))]
    plane.kubectl(
        "apply", "-f", "-", input="\n---\n".join(manifest(ns, n, spec) for n in names[2:])
    )
    for name in names[2:]:
        wait(f"{name} Ready=True", lambda n=name: verdict(n, "True", "Validated"), timeout=60)
    gate.held.set()
    pod_watch = PodWatch(plane, NAMESPACE, SELECTOR)
    try:
        request = f"upgrade-{pysecrets.token_hex(3)}"
        for name in names:
            plane.kubectl(
                "annotate",
                "-n",
                ns,
                f"llmconnection/{name}",
                f"llmconn.dev/validate-requested-at={request}",
            )
        wait("every requested probe in flight", lambda: gate.waiting == len(names))
        helm.install("upgrade", RELEASE, NAMESPACE, {**chosen, "podAnnotations": {"upgraded": "1"}})
        wait(
            "the old pod stopping",
            lambda: plane.kubectl(
                "get",
                "pod",
                pod_name,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
                check=False,
            ).stdout.strip(),
        )
        assert gate.waiting == len(names)  # SIGTERM came while every probe was in flight
    finally:
        gate.held.clear()
    try:
        rollout(plane, NAMESPACE, "deployment", RELEASE)
        for name in names:
            wait(
                f"{name}'s requested verdict",
                lambda n=name: api.status(ns, n).get("lastHandledRequestedAt") == request,
            )
        # Written by the old pod, which then exited by itself (0), not killed at the end of
        # its grace period (137).
        for name in names:
            assert status_writers(plane, ns, name)[-1][:2] == (ACCOUNT, pod_name)
        wait("the old pod's exit", lambda: pod_watch.terminations(pod_name))
        assert [t["exitCode"] for t in pod_watch.terminations(pod_name)][-1:] == [0]
    finally:
        pod_watch.close()
    assert condition(api.status(ns, "chat"), "Ready")["status"] == "True"
    assert api.status(ns, "wrong")["reason"] == "InvalidAPIKey"
    (new_pod,) = pods(plane, NAMESPACE, SELECTOR)
    assert new_pod["metadata"]["name"] != pod_name

    # Uninstall removes the operator and leaves the CRD, the connections and the Secrets.
    helm.run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    wait("the operator pod gone", lambda: pods(plane, NAMESPACE, SELECTOR) == [])
    assert plane.kubectl("get", "crd", CRD, check=False).returncode == 0
    left = plane.kubectl("get", "llmconnections,secrets", "-n", ns, "-o", "name").stdout.split()
    assert sorted(left) == sorted(
        [*(f"llmconnection.llmconn.dev/{n}" for n in names), "secret/creds", "secret/wrong-creds"]
    )
    assert condition(api.status(ns, "chat"), "Ready")["status"] == "True"
    plane.kubectl("delete", "llmconnections", "--all", "-n", ns)


def test_the_node_dialled_nothing_but_loopback(
    netwatch: NetWatch, node_cluster: ControlPlane
) -> None:
    """The kubelet's serving, probes and logs, containerd's streams, the pods: the machine's
    own non-loopback address (the node's InternalIP) was never dialled."""
    netwatch.sample()
    assert netwatch.off_loopback == set()
    # The watch saw the cluster's loopback traffic: the kubelet's and the operator pod's.
    assert netwatch.samples > 10
    assert {"kubelet", "llmconn"} <= {process for process, _ in netwatch.loopback}
