"""The rendered Helm chart on the real apiserver: accepted by a server-side dry run, and its
RBAC granting what it says under a token of the chart's own ServiceAccount. (The rendering
itself is tested without a cluster in tests/unit/test_chart_static.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from chartkit import CHART, FULLNAME, Doc, one
from controlplane.cluster import ControlPlane


@pytest.fixture(scope="module")
def chart_crds(cluster: ControlPlane) -> Iterator[ControlPlane]:
    """The chart's CRDs installed for real: a dry run of custom objects needs them served."""
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    cluster.wait_established(
        "llmconnections.llmconn.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"
    )
    yield cluster


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"replicaCount": 2, "podDisruptionBudget": {"enabled": True}},
        {"replicaCount": 2, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        "namespaced",
        {
            "egress": {"denyPrivateNetworks": True},
            "networkPolicy": {
                "enabled": True,
                "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"]},
                "dns": {"to": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]},
                "extraEgress": [
                    {
                        "to": [{"namespaceSelector": {}, "podSelector": {}}],
                        "ports": [{"port": 11434, "protocol": "TCP"}],
                    }
                ],
            },
        },
    ],
    ids=["default", "ha", "ha-min-available", "namespaced-ha", "network-policy"],
)
def test_rendered_chart_is_accepted_by_the_apiserver(
    chart_crds: ControlPlane, render: Any, values: Doc | str | None
) -> None:
    cluster = chart_crds
    created = [cluster.create_namespace("llmconn-system")]
    try:
        if values == "namespaced":
            created += [cluster.create_namespace("team-a"), cluster.create_namespace("team-b")]
            values = {"watch": {"namespaces": created[1:]}, "replicaCount": 2}
        docs = render(values, namespace=created[0])
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(docs)
        )
        applied = sorted(line.split("/", 1)[1] for line in result.stdout.split())
        assert applied == sorted(doc["metadata"]["name"] for doc in docs)
    finally:
        for ns in created:
            cluster.delete_namespace(ns)


def can_i(cluster: ControlPlane, token: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", f"--token={token}", *args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def install_rbac(cluster: ControlPlane, docs: list[Doc]) -> str:
    """Apply the chart's ServiceAccount, RBAC and peering objects; a token for the account."""
    wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    objects = [d for d in docs if d["kind"] in wanted or d["kind"].endswith("KopfPeering")]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    account = one(docs, "ServiceAccount")["metadata"]
    token = cluster.kubectl(
        "create", "token", account["name"], "-n", account["namespace"], "--duration=10m"
    ).stdout.strip()
    return token


def test_namespaced_rbac_reaches_only_the_watched_namespaces(
    chart_crds: ControlPlane, render: Any
) -> None:
    cluster = chart_crds
    release_ns, watched, other = (cluster.create_namespace(n) for n in ("rel", "team", "other"))
    try:
        docs = render(
            {"watch": {"namespaces": [watched]}, "replicaCount": 2},
            namespace=release_ns,
            release="llmconn-ns-rbac",
        )
        token = install_rbac(cluster, docs)
        peering = one(docs, "KopfPeering")["metadata"]["name"]
        for ns, expected in ((watched, True), (other, False)):
            for verb in ("get", "list", "watch"):
                assert can_i(cluster, token, verb, "secrets", "-n", ns) is expected
                assert (
                    can_i(cluster, token, verb, "llmconnections.llmconn.dev", "-n", ns) is expected
                )
            assert (
                can_i(
                    cluster,
                    token,
                    "patch",
                    "llmconnections.llmconn.dev",
                    "--subresource=status",
                    "-n",
                    ns,
                )
                is expected
            )
            assert can_i(cluster, token, "create", "events", "-n", ns) is expected
            assert (
                can_i(cluster, token, "patch", f"kopfpeerings.kopf.dev/{peering}", "-n", ns)
                is expected
            )
        assert not can_i(cluster, token, "patch", "kopfpeerings.kopf.dev/another", "-n", watched)
        for forbidden in (
            ("create", "secrets"),
            ("update", "secrets"),
            ("delete", "secrets"),
            ("patch", "llmconnections.llmconn.dev"),
            ("update", "llmconnections.llmconn.dev"),
            ("delete", "llmconnections.llmconn.dev"),
        ):
            assert not can_i(cluster, token, *forbidden, "-n", watched)
        assert not can_i(cluster, token, "list", "secrets", "--all-namespaces")
        assert not can_i(cluster, token, "list", "namespaces")
        assert not can_i(cluster, token, "list", "clusterkopfpeerings.kopf.dev")
        # Not just the authorizer's opinion: a real read of a Secret outside is refused.
        cluster.kubectl("create", "secret", "generic", "key", "-n", other, "--from-literal=a=b")
        denied = cluster.kubectl(
            "get", "secret", "key", "-n", other, f"--token={token}", "-o", "name", check=False
        )
        assert denied.returncode != 0
        assert "Forbidden" in denied.stderr
    finally:
        for ns in (release_ns, watched, other):
            cluster.delete_namespace(ns)


def test_cluster_wide_rbac(chart_crds: ControlPlane, render: Any) -> None:
    cluster = chart_crds
    release_ns, anywhere = cluster.create_namespace("rel"), cluster.create_namespace("any")
    release = "llmconn-cw-rbac"
    try:
        docs = render({"replicaCount": 2}, namespace=release_ns, release=release)
        token = install_rbac(cluster, docs)
        assert can_i(cluster, token, "list", "secrets", "--all-namespaces")
        assert can_i(cluster, token, "get", "secrets", "-n", anywhere)
        assert can_i(
            cluster,
            token,
            "patch",
            "llmconnections.llmconn.dev",
            "--subresource=status",
            "-n",
            anywhere,
        )
        assert can_i(cluster, token, "patch", f"clusterkopfpeerings.kopf.dev/{release}")
        assert can_i(cluster, token, "watch", "clusterkopfpeerings.kopf.dev")
        assert not can_i(cluster, token, "patch", "clusterkopfpeerings.kopf.dev/another")
        assert not can_i(cluster, token, "create", "secrets", "-n", anywhere)
        assert not can_i(cluster, token, "update", "llmconnections.llmconn.dev", "-n", anywhere)
        assert not can_i(cluster, token, "list", "namespaces")
        assert not can_i(cluster, token, "list", "customresourcedefinitions.apiextensions.k8s.io")
    finally:
        for kind in ("clusterrolebinding", "clusterrole", "clusterkopfpeering"):
            cluster.kubectl("delete", kind, release, "--ignore-not-found", check=False)
        for role in ("view", "edit"):
            cluster.kubectl("delete", "clusterrole", f"{release}-{role}", "--ignore-not-found")
        for ns in (release_ns, anywhere):
            cluster.delete_namespace(ns)


def test_view_and_edit_roles_grant_what_they_say(chart_crds: ControlPlane, render: Any) -> None:
    """Bound as the built-in view and edit roles would carry them (this control plane has no
    controller-manager to aggregate them), for a person's ServiceAccount in one namespace."""
    cluster = chart_crds
    ns = cluster.create_namespace("people")
    release = "llmconn-people"
    try:
        docs = render(namespace=ns, release=release)
        roles = [d for d in docs if d["metadata"]["name"] in (f"{release}-view", f"{release}-edit")]
        assert len(roles) == 2
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(roles))
        tokens = {}
        for role in ("view", "edit"):
            cluster.kubectl("create", "serviceaccount", role, "-n", ns)
            cluster.kubectl(
                "create",
                "rolebinding",
                role,
                "-n",
                ns,
                f"--clusterrole={release}-{role}",
                f"--serviceaccount={ns}:{role}",
            )
            tokens[role] = cluster.kubectl("create", "token", role, "-n", ns).stdout.strip()
        conns = "llmconnections.llmconn.dev"
        for verb in ("get", "list", "watch"):
            assert can_i(cluster, tokens["view"], verb, conns, "-n", ns)
        for verb in ("create", "update", "patch", "delete", "deletecollection"):
            assert not can_i(cluster, tokens["view"], verb, conns, "-n", ns)
            assert can_i(cluster, tokens["edit"], verb, conns, "-n", ns)
        for token in tokens.values():
            assert not can_i(cluster, token, "patch", conns, "--subresource=status", "-n", ns)
            assert not can_i(cluster, token, "get", "secrets", "-n", ns)
    finally:
        for role in ("view", "edit"):
            cluster.kubectl("delete", "clusterrole", f"{release}-{role}", "--ignore-not-found")
        cluster.delete_namespace(ns)


def test_dashboard_config_map_is_accepted_by_the_apiserver(
    cluster: ControlPlane, render: Any
) -> None:
    ns = cluster.create_namespace("dashboard")
    try:
        docs = render({"metrics": {"grafanaDashboard": {"enabled": True}}}, namespace=ns)
        cm = one(docs, "ConfigMap", ns)
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(cm)
        )
        assert result.stdout.strip() == f"configmap/{FULLNAME}-dashboard"
    finally:
        cluster.delete_namespace(ns)


def test_sharded_chart_is_accepted_and_its_rbac_reaches_each_shards_peering(
    chart_crds: ControlPlane, render: Any
) -> None:
    """The StatefulSet, a budget and a peering object per shard pass a server-side dry run;
    the account may keep a keep-alive in every shard's peering object and in no other."""
    cluster = chart_crds
    release_ns, watched = cluster.create_namespace("rel"), cluster.create_namespace("team")
    release = "llmconn-sharded"
    try:
        values = {
            "sharding": {"shards": 3},
            "replicaCount": 2,
            "podDisruptionBudget": {"enabled": True},
            "watch": {"namespaces": [watched]},
        }
        docs = render(values, namespace=release_ns, release=release)
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(docs)
        )
        applied = sorted(result.stdout.split())
        assert f"statefulset.apps/{release}" in applied
        assert [a for a in applied if a.startswith("poddisruptionbudget")] == [
            f"poddisruptionbudget.policy/{release}-shard-{i}" for i in range(3)
        ]
        assert len(applied) == len(docs)
        token = install_rbac(cluster, docs)
        for i in range(3):
            peering = f"kopfpeerings.kopf.dev/{release}-shard-{i}"
            assert can_i(cluster, token, "patch", peering, "-n", watched)
        for other in (release, f"{release}-shard-3"):
            assert not can_i(
                cluster, token, "patch", f"kopfpeerings.kopf.dev/{other}", "-n", watched
            )
    finally:
        for ns in (release_ns, watched):
            cluster.delete_namespace(ns)
