"""Upgrades and rollouts on the real node: `helm upgrade` to changed values and back, with two
replicas (Kopf peering, the Deployment's rolling update) and with two shards (the StatefulSet),
side by side in namespaces of their own, while their connections are validated every
INTERVAL seconds.

Through both rollouts every connection keeps its verdict (Ready stays True), none is
validated twice in one interval, none is left unvalidated for more than one interval past
its due time, and each shard's connections are validated by that shard's pod only. Then
`helm uninstall` leaves the connections and the CRD.

The schedule these bounds come from (llmconn.triggers): the next validation is planned
INTERVAL x (1 +- JITTER) after one ends; a replica that starts or takes over continues each
connection from its status.lastValidationTime, spreading the overdue ones over
min(INTERVAL, RESUME_SPREAD) seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets as pysecrets
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
from nodekit import (
    API_FORWARD_PORT,
    Forwarder,
    GatedProvider,
    Helm,
    NetWatch,
    pods,
    rollout,
    status_writers,
    wait,
)
from opkit import Api, condition, manifest, secret

from controlplane.cluster import ControlPlane
from llmconn.controller.triggers import JITTER
from node.images import OPERATOR_REPOSITORY
from servers.serve import serve

INTERVAL = 60.0  # seconds; long enough that the overdue spread (30 s) fits one interval
CONNECTIONS = 6
GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
# Validations of one connection are never closer than this (the jittered plan, less a second
# for the probe and the clock's resolution)...
MIN_GAP = (1 - JITTER) * INTERVAL - 1
# ...nor farther apart than its latest plan plus one interval.
MAX_GAP = (1 + JITTER) * INTERVAL + INTERVAL

pytestmark = pytest.mark.node

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[GatedProvider, str]]:
    p = GatedProvider(keys={GOOD_KEY}, models=["gpt-4o"])
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(scope="module")
def helm(
    node_cluster: ControlPlane,
    helm_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Helm]:
    port = urlparse(node_cluster.server).port
    assert port is not None
    forwarder = Forwarder(API_FORWARD_PORT, port)
    try:
        yield Helm(node_cluster, helm_env, tmp_path_factory.mktemp("upgrades-helm"))
    finally:
        forwarder.close()


@pytest.fixture(scope="module")
def netwatch(node_cluster: ControlPlane) -> Iterator[NetWatch]:
    with NetWatch(node_cluster) as watch:
        yield watch


@dataclass
class Scenario:
    name: str
    kind: str  # what the chart renders: deployment or statefulset
    values: Doc
    release: str = ""
    release_ns: str = ""
    ns: str = ""

    def chart_values(self, **changed: Any) -> Doc:
        return {
            "image": {"repository": OPERATOR_REPOSITORY, "pullPolicy": "Never"},
            "egress": {"denyLoopback": False},
            "watch": {"namespaces": [self.ns]},
            **self.values,
            **changed,
        }

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"


@dataclass
class Seen:
    """What a poller saw of each connection: its validation times and any Ready not True."""

    validations: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    not_ready: list[str] = field(default_factory=list)


def poll(api: Api, namespaces: list[str], seen: Seen, stop: threading.Event) -> None:
    while not stop.is_set():
        for ns in namespaces:
            listing = api.get(f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections") or {}
            for item in listing.get("items", []):
                status = item.get("status") or {}
                key = (ns, item["metadata"]["name"])
                stamp = status.get("lastValidationTime")
                if stamp:
                    t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    times = seen.validations.setdefault(key, [])
                    if not times or times[-1] != t:
                        times.append(t)
                ready = condition(status, "Ready").get("status")
                if ready != "True":
                    seen.not_ready.append(f"{key}: Ready={ready} {status.get('reason')}")
        stop.wait(0.5)


def test_upgrades_and_rollouts_keep_every_verdict(
    node_cluster: ControlPlane,
    helm: Helm,
    provider: tuple[GatedProvider, str],
    netwatch: NetWatch,
) -> None:
    plane = node_cluster
    api = Api(plane)
    _, url = provider
    scenarios = [
        Scenario("peering", "deployment", {"replicaCount": 2}),
        Scenario("shards", "statefulset", {"sharding": {"shards": 2}}),
    ]
    for sc in scenarios:
        sc.release = f"llmconn-{sc.name}"
        sc.release_ns = plane.create_namespace(f"{sc.name}-system")
        sc.ns = plane.create_namespace(sc.name)
        helm.install("install", sc.release, sc.release_ns, sc.chart_values(), own_ports=True)
    for sc in scenarios:
        rollout(plane, sc.release_ns, sc.kind, sc.release)
        spec = {
            "provider": "openai-compatible",
            "endpoint": url,
            "model": "gpt-4o",
            "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
            "validation": {"interval": f"{INTERVAL:.0f}s"},
        }
        docs = [secret(sc.ns, "creds", {"apiKey": GOOD_KEY})]
        docs += [manifest(sc.ns, f"c{i}", spec) for i in range(CONNECTIONS)]
        plane.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
    for sc in scenarios:
        for i in range(CONNECTIONS):
            wait(
                f"{sc.ns}/c{i} Ready",
                lambda ns=sc.ns, i=i: (
                    condition(api.status(ns, f"c{i}"), "Ready").get("status") == "True"
                ),
                timeout=60,
            )
    first_pods = {
        sc.name: {p["metadata"]["uid"] for p in pods(plane, sc.release_ns, sc.selector)}
        for sc in scenarios
    }

    seen = Seen()
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(api, [sc.ns for sc in scenarios], seen, stop))
    poller.start()
    try:
        # To changed values and back; each a rollout of every pod.
        for changed in (
            {"config": {"logLevel": "debug"}, "podAnnotations": {"upgrade": "1"}},
            {},
        ):
            for sc in scenarios:
                helm.install(
                    "upgrade", sc.release, sc.release_ns, sc.chart_values(**changed), own_ports=True
                )
            for sc in scenarios:
                rollout(plane, sc.release_ns, sc.kind, sc.release)
        rolled = time.time()
        # Every connection validated again after the last rollout, within the bound.
        for sc in scenarios:
            for i in range(CONNECTIONS):
                wait(
                    f"{sc.ns}/c{i} validated after the rollouts",
                    lambda key=(sc.ns, f"c{i}"): seen.validations.get(key, [0])[-1] > rolled,
                    timeout=rolled + MAX_GAP + 5 - time.time(),
                    every=0.5,
                )
    finally:
        stop.set()
        poller.join(timeout=10)

    assert seen.not_ready == []
    for key, times in sorted(seen.validations.items()):
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
        print(f"{key}: gaps between validations {gaps}")  # shown with -s, and on failure
        assert gaps, (key, times)
        assert min(gaps) >= MIN_GAP, f"{key} validated twice in one interval: gaps {gaps}"
        assert max(gaps) <= MAX_GAP, f"{key} left unvalidated: gaps {gaps}"

    for sc in scenarios:
        user = f"system:serviceaccount:{sc.release_ns}:{sc.release}"
        now_pods = {p["metadata"]["uid"] for p in pods(plane, sc.release_ns, sc.selector)}
        writers = {i: status_writers(plane, sc.ns, f"c{i}") for i in range(CONNECTIONS)}
        assert {u for w in writers.values() for u, _, _ in w} == {user}
        by_pod = {uid for w in writers.values() for _, _, uid in w}
        # Validated by the pods before and after the rollouts (so rollouts happened while
        # connections came due), and by no one else.
        assert by_pod & first_pods[sc.name] and by_pod & now_pods, by_pod
        if sc.kind == "statefulset":
            # Each shard's connections by the pod of that shard only, whichever pod it was.
            for i in range(CONNECTIONS):
                conn = api.conn(sc.ns, f"c{i}") or {}
                shard = zlib.crc32(conn["metadata"]["uid"].encode()) % 2
                assert {pod for _, pod, _ in writers[i]} == {f"{sc.release}-{shard}"}

    for sc in scenarios:
        helm.run("uninstall", sc.release, "--namespace", sc.release_ns, "--wait")
        wait(
            f"{sc.release}'s pods gone", lambda sc=sc: pods(plane, sc.release_ns, sc.selector) == []
        )
        names = plane.kubectl("get", "llmconnections", "-n", sc.ns, "-o", "name").stdout.split()
        assert len(names) == CONNECTIONS
        plane.kubectl("delete", "llmconnections", "--all", "-n", sc.ns)


def test_the_node_dialled_nothing_but_loopback_through_the_rollouts(netwatch: NetWatch) -> None:
    netwatch.sample()
    assert netwatch.off_loopback == set()
    assert {"kubelet", "llmconn"} <= {process for process, _ in netwatch.loopback}
