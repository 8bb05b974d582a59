"""The Helm chart without a cluster: lint, the rendered output for the important values
combinations, the flags it passes as the operator parses them, values and schema, NOTES, and the
files that must agree with the chart. (tests/e2e/test_chart.py gives the rendered chart to the
real apiserver.)"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from chartkit import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    Doc,
    args,
    container,
    helm,
    kinds,
    one,
    values_args,
)
from llmconn.controller.config import from_args
from llmconn.net.egress import ALWAYS_DENIED

OPERATOR_RULES = [
    {
        "apiGroups": ["llmconn.dev"],
        "resources": ["llmconnections"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": ["llmconn.dev"], "resources": ["llmconnections/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def peering_rules(resource: str, name: str = FULLNAME) -> list[dict[str, Any]]:
    return [
        {"apiGroups": ["kopf.dev"], "resources": [resource], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["kopf.dev"],
            "resources": [resource],
            "resourceNames": [name],
            "verbs": ["get", "patch"],
        },
    ]


# -- lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"watch": {"namespaces": ["team-a", "team-b"]}, "replicaCount": 2},
        {
            "replicaCount": 3,
            "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
            "metrics": {"serviceMonitor": {"enabled": True}},
        },
        {
            "egress": {"denyPrivateNetworks": True},
            "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
        },
    ],
    ids=["default", "namespaced-ha", "ha-monitored", "network-policy"],
)
def test_lint_strict(helm_env: dict[str, str], tmp_path: Path, values: Doc | None) -> None:
    result = helm(helm_env, "lint", "--strict", "{chart}", *values_args(tmp_path, values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout + result.stderr


# -- cluster-wide (default) ---------------------------------------------------------------


def test_default_is_cluster_wide_with_least_privilege(render: Any) -> None:
    docs = render()
    assert kinds(docs) == [
        ("ClusterRole", None),
        ("ClusterRole", None),
        ("ClusterRole", None),  # the operator's, and the view and edit roles for people
        ("ClusterRoleBinding", None),
        ("Deployment", NAMESPACE),
        ("Service", NAMESPACE),
        ("ServiceAccount", NAMESPACE),
    ]
    assert one(docs, "ClusterRole", name=FULLNAME)["rules"] == OPERATOR_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # A standalone operator must not overlap with its successor during a rollout.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    assert "--all-namespaces" in args(docs)
    assert not [a for a in args(docs) if a.startswith(("--namespace=", "--peering"))]


def test_no_rule_grants_more_than_the_operator_uses(render: Any) -> None:
    allowed = {
        "llmconnections": {"get", "list", "watch"},
        "llmconnections/status": {"patch"},
        "secrets": {"get", "list", "watch"},
        "events": {"create"},
        "serviceaccounts/token": {"create"},
        "clusterkopfpeerings": {"get", "list", "watch", "patch"},
        "kopfpeerings": {"get", "list", "watch", "patch"},
    }
    for values in (
        None,
        {"replicaCount": 2},
        {"watch": {"namespaces": ["a"]}, "replicaCount": 2},
        {"identity": {"enabled": True}},
    ):
        docs = render(values)
        bound = {d["roleRef"]["name"] for d in docs if d["kind"].endswith("RoleBinding")}
        assert bound == {FULLNAME}
        rules = [
            rule
            for doc in docs
            if doc["metadata"]["name"] in bound
            for rule in doc.get("rules", [])
        ]
        assert rules
        for rule in rules:
            (resource,) = rule["resources"]
            assert set(rule["verbs"]) <= allowed[resource], rule


def test_default_flags_reach_the_operator_parser(render: Any) -> None:
    config = from_args(args(render()))
    assert config.all_namespaces
    assert config.concurrency == 32
    assert config.defaults.interval == 300
    assert config.defaults.timeout == 10
    assert config.defaults.failure_threshold == 3
    assert config.defaults.inference_min_interval == 3600
    assert config.defaults.missing_secret_grace == 120
    assert config.metrics_port == 8080
    assert config.health_port == 8081
    assert config.peering is None
    assert config.log_format == "json"
    assert config.namespace_concurrency is None  # a quarter of --concurrency


def test_namespace_concurrency_reaches_the_operator(render: Any) -> None:
    config = from_args(args(render({"config": {"namespaceConcurrency": 3}})))
    assert config.namespace_concurrency == 3


# -- namespaced mode ----------------------------------------------------------------------


def test_namespaced_mode_has_a_role_per_namespace_and_nothing_cluster_wide(render: Any) -> None:
    docs = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    assert kinds(docs) == [
        ("ClusterRole", None),
        ("ClusterRole", None),  # the view and edit roles for people, bound to no one
        ("Deployment", NAMESPACE),
        ("Role", "team-a"),
        ("Role", "team-b"),
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),
        ("Service", NAMESPACE),
        ("ServiceAccount", NAMESPACE),
    ]
    for ns in ("team-a", "team-b"):
        assert one(docs, "Role", ns)["rules"] == OPERATOR_RULES
        binding = one(docs, "RoleBinding", ns)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == FULLNAME
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    flags = args(docs)
    assert "--all-namespaces" not in flags
    assert [a for a in flags if a.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert from_args(flags).namespaces == ("team-a", "team-b")


# -- identity --------------------------------------------------------------------------

MINT = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}


def test_identity_mode_adds_only_token_minting_where_the_operator_watches(render: Any) -> None:
    off = render({"watch": {"namespaces": ["team-a"]}})
    assert MINT not in one(off, "Role", "team-a")["rules"]
    assert not any(
        "serviceaccounts" in r
        for d in render()
        for rule in d.get("rules", [])
        for r in rule["resources"]
    )
    docs = render({"watch": {"namespaces": ["team-a", "team-b"]}, "identity": {"enabled": True}})
    for ns in ("team-a", "team-b"):
        assert one(docs, "Role", ns)["rules"] == [*OPERATOR_RULES, MINT]
    assert all(MINT not in d.get("rules", []) for d in docs if d["kind"] == "ClusterRole")
    cluster_wide = render({"identity": {"enabled": True}})
    assert one(cluster_wide, "ClusterRole", name=FULLNAME)["rules"] == [*OPERATOR_RULES, MINT]


def test_identity_endpoints_reach_the_operator(render: Any) -> None:
    flags = args(
        render(
            {
                "identity": {
                    "awsStsEndpoint": "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com",
                    "azureAuthorityHost": "https://login.microsoftonline.us",
                    "gcpStsEndpoint": "https://sts.p.googleapis.com",
                    "gcpIamCredentialsEndpoint": "https://iamcredentials.p.googleapis.com",
                }
            }
        )
    )
    clouds = from_args(flags).defaults.clouds
    assert clouds.aws_sts == "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com"
    assert clouds.azure_authority_host == "https://login.microsoftonline.us"
    assert clouds.gcp_sts == "https://sts.p.googleapis.com"
    assert clouds.gcp_iam_credentials == "https://iamcredentials.p.googleapis.com"
    assert not [a for a in args(render()) if "endpoint" in a or "authority" in a]


# -- roles for people ---------------------------------------------------------------------


def test_view_and_edit_roles_aggregate_into_the_built_in_ones(render: Any) -> None:
    docs = render()
    view = one(docs, "ClusterRole", name=f"{FULLNAME}-view")
    edit = one(docs, "ClusterRole", name=f"{FULLNAME}-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "view": "true"
    }
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "edit": "true",
        aggregate + "admin": "true",
    }
    assert view["rules"] == [
        {
            "apiGroups": ["llmconn.dev"],
            "resources": ["llmconnections"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    # Everything but the status, which only the operator writes.
    assert edit["rules"] == [
        {
            "apiGroups": ["llmconn.dev"],
            "resources": ["llmconnections"],
            "verbs": ["create", "delete", "deletecollection", "patch", "update"],
        }
    ]
    bound = [d["roleRef"]["name"] for d in docs if d["kind"].endswith("RoleBinding")]
    assert bound == [FULLNAME]


@pytest.mark.parametrize(
    ("values", "left"),
    [
        ({"rbac": {"aggregateToView": False}}, {"edit"}),
        ({"rbac": {"aggregateToEdit": False}}, {"view"}),
        ({"rbac": {"create": False}}, set()),
    ],
)
def test_view_and_edit_roles_can_be_left_out(render: Any, values: Doc, left: set[str]) -> None:
    names = {d["metadata"]["name"] for d in render(values) if d["kind"] == "ClusterRole"}
    assert {n.removeprefix(f"{FULLNAME}-") for n in names if n != FULLNAME} == left


# -- replicas and peering -----------------------------------------------------------------


def test_replicas_turn_on_peering_with_its_object_and_rbac(render: Any) -> None:
    docs = render({"replicaCount": 2})
    assert f"--peering={FULLNAME}" in args(docs)
    assert from_args(args(docs)).peering == FULLNAME
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == FULLNAME
    assert one(docs, "ClusterRole", name=FULLNAME)["rules"] == OPERATOR_RULES + peering_rules(
        "clusterkopfpeerings"
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # rolling: the standby takes over
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_namespaced_peering_meets_in_each_namespace(render: Any) -> None:
    docs = render(
        {
            "watch": {"namespaces": ["team-a", "team-b"]},
            "replicaCount": 2,
            "peering": {"name": "ha"},
        }
    )
    assert "--peering=ha" in args(docs)
    for ns in ("team-a", "team-b"):
        assert one(docs, "KopfPeering", ns)["metadata"]["name"] == "ha"
        assert one(docs, "Role", ns)["rules"] == OPERATOR_RULES + peering_rules(
            "kopfpeerings", "ha"
        )
    assert not [d for d in docs if d["kind"] in ("ClusterKopfPeering", "ClusterRoleBinding")]
    assert FULLNAME not in {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"}


def test_peering_without_creating_the_object(render: Any) -> None:
    docs = render({"peering": {"enabled": True, "createObject": False}})
    assert f"--peering={FULLNAME}" in args(docs)
    assert not [d for d in docs if "KopfPeering" in d["kind"]]


@pytest.mark.parametrize(
    ("pdb", "expected"),
    [
        ({"enabled": True}, {"maxUnavailable": 1}),
        ({"enabled": True, "minAvailable": 1}, {"minAvailable": 1}),
        ({"enabled": True, "maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
    ],
)
def test_pod_disruption_budget_when_enabled(render: Any, pdb: Doc, expected: Doc) -> None:
    docs = render({"replicaCount": 2, "podDisruptionBudget": pdb})
    spec = one(docs, "PodDisruptionBudget")["spec"]
    selector = one(docs, "Deployment")["spec"]["selector"]
    assert spec == {**expected, "selector": selector}


# -- metrics ------------------------------------------------------------------------------


def test_metrics_service_selects_the_pods(render: Any) -> None:
    docs = render()
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["name"] == f"{FULLNAME}-metrics"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}


def test_service_monitor_scrapes_the_metrics_service(render: Any) -> None:
    docs = render(
        {
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "labels": {"release": "prom"},
                    "interval": "15s",
                }
            }
        }
    )
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "honorLabels": True,
            "interval": "15s",
            "scrapeTimeout": "10s",
        }
    ]


def test_metrics_off_means_port_zero_and_no_service(render: Any) -> None:
    docs = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceMonitor")]
    assert "--metrics-port=0" in args(docs)
    assert from_args(args(docs)).metrics_port == 0
    assert [p["name"] for p in container(docs)["ports"]] == ["health"]


# -- egress and other flags ---------------------------------------------------------------


def test_default_egress_denies_loopback(render: Any) -> None:
    flags = args(render())
    assert [a for a in flags if a.startswith("--egress")] == [
        "--egress-deny=127.0.0.0/8",
        "--egress-deny=::1/128",
    ]
    policy = from_args(flags).egress
    for host, ip in (("localhost", "127.0.0.1"), ("x", "127.1.2.3"), ("ip6-localhost", "::1")):
        assert policy.check(host, ip) is not None
    # IPv6 spellings of loopback are refused with it (the policy unwraps them).
    for ip in ("::ffff:127.0.0.1", "64:ff9b::7f00:1", "::127.0.0.1", "2002:7f00:1::"):
        assert policy.check("x", ip) is not None
    assert policy.check("api.openai.com", "162.159.140.245") is None
    assert policy.check("api.openai.com", "64:ff9b::a29f:8cf5") is None  # the same via NAT64
    assert policy.check("ollama.ai.svc", "10.96.3.4") is None  # private networks are allowed


def test_egress_rules_are_appended_and_loopback_deny_can_be_dropped(render: Any) -> None:
    flags = args(
        render(
            {
                "egress": {
                    "deny": ["10.0.0.0/8", "*.internal"],
                    "allow": ["api.openai.com", "192.0.2.0/24"],
                }
            }
        )
    )
    assert [a for a in flags if a.startswith("--egress")] == [
        "--egress-deny=127.0.0.0/8",
        "--egress-deny=::1/128",
        "--egress-deny=10.0.0.0/8",
        "--egress-deny=*.internal",
        "--egress-allow=api.openai.com",
        "--egress-allow=192.0.2.0/24",
    ]
    policy = from_args(flags).egress
    assert policy.check("db.internal", "192.0.2.9") is not None
    assert policy.check("api.openai.com", "162.159.140.245") is None
    assert policy.check("example.com", "93.184.215.14") is not None

    open_flags = args(render({"egress": {"denyLoopback": False}}))
    assert not [a for a in open_flags if a.startswith("--egress")]
    assert from_args(open_flags).egress.check("localhost", "127.0.0.1") is None


PRIVATE_NETWORKS = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fec0::/10",
]


def egress_flags(docs: list[Doc]) -> list[str]:
    return [a for a in args(docs) if a.startswith("--egress")]


def test_deny_private_networks_refuses_them_and_nothing_public(render: Any) -> None:
    flags = args(render({"egress": {"denyPrivateNetworks": True}}))
    assert [a for a in flags if a.startswith("--egress")] == [
        "--egress-deny=127.0.0.0/8",
        "--egress-deny=::1/128",
        *(f"--egress-deny={cidr}" for cidr in PRIVATE_NETWORKS),
    ]
    policy = from_args(flags).egress
    for ip in (
        "10.96.0.10",
        "172.20.1.1",
        "192.168.1.10",
        "100.64.0.1",
        "fd12:3456::1",
        "fec0::1",
        "64:ff9b::10.96.0.10",  # a private address through NAT64
        "::ffff:192.168.1.10",
    ):
        assert policy.check("model.ai.svc", ip) is not None, ip
    for ip in ("162.159.140.245", "172.32.0.1", "100.128.0.1", "2606:4700::6810:84e5"):
        assert policy.check("api.example", ip) is None, ip

    alone = args(render({"egress": {"denyPrivateNetworks": True, "denyLoopback": False}}))
    assert [a for a in alone if a.startswith("--egress")] == [
        f"--egress-deny={cidr}" for cidr in PRIVATE_NETWORKS
    ]


@pytest.mark.parametrize("deny_loopback", [True, False])
def test_egress_variables_in_extra_env_add_to_the_charts_rules(
    render: Any, monkeypatch: pytest.MonkeyPatch, deny_loopback: bool
) -> None:
    """The chart passes --egress-deny only when it has rules; either way the operator adds
    the rules of LLMCONN_EGRESS_DENY from extraEnv to those of the flags."""
    docs = render(
        {
            "egress": {"denyLoopback": deny_loopback},
            "extraEnv": [{"name": "LLMCONN_EGRESS_DENY", "value": "10.0.0.0/8"}],
        }
    )
    assert bool(egress_flags(docs)) is deny_loopback
    env = {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}
    monkeypatch.setenv("LLMCONN_EGRESS_DENY", env["LLMCONN_EGRESS_DENY"])
    policy = from_args(args(docs)).egress
    assert policy.check("db", "10.1.2.3") is not None
    assert (policy.check("x", "127.0.0.1") is not None) is deny_loopback
    assert policy.check("api.openai.com", "162.159.140.245") is None


# -- network policy -----------------------------------------------------------------------


def ip_blocks(rule: Doc) -> dict[str, set[str]]:
    """cidr -> its excepts, for a rule whose peers are all ipBlocks."""
    return {p["ipBlock"]["cidr"]: set(p["ipBlock"].get("except", [])) for p in rule["to"]}


def test_no_network_policy_by_default(render: Any) -> None:
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"]


def test_network_policy_allows_dns_and_providers_except_the_always_denied(render: Any) -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    policy = one(docs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    deployment = one(docs, "Deployment")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Egress"]  # ingress (metrics, health) untouched
    dns, providers = policy["spec"]["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    # The very list the operator always refuses: one fact, in Python and in the chart.
    always = {str(network) for network, _ in ALWAYS_DENIED}
    assert ip_blocks(providers) == {
        "0.0.0.0/0": {n for n in always if ":" not in n},
        "::/0": {n for n in always if ":" in n},
    }
    assert "ports" not in providers  # in-cluster model servers listen where they like


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_network_policy_can_limit_ingress_to_prometheus_on_the_metrics_port(render: Any) -> None:
    policy = one(
        render(
            {
                "networkPolicy": {
                    "enabled": True,
                    "ingress": {"enabled": True, "metricsFrom": [PROMETHEUS]},
                }
            }
        ),
        "NetworkPolicy",
    )
    assert policy["spec"]["policyTypes"] == ["Egress", "Ingress"]
    # The metrics port from Prometheus only; the health port from no one but the kubelet
    # (the node's traffic is always allowed); nothing else.
    assert policy["spec"]["ingress"] == [
        {"from": [PROMETHEUS], "ports": [{"protocol": "TCP", "port": 8080}]}
    ]


def test_network_policy_ingress_with_no_peers_admits_no_one(render: Any) -> None:
    policy = one(
        render({"networkPolicy": {"enabled": True, "ingress": {"enabled": True}}}),
        "NetworkPolicy",
    )
    assert policy["spec"]["policyTypes"] == ["Egress", "Ingress"]
    assert not policy["spec"]["ingress"]


def test_listen_address_reaches_the_operator(render: Any) -> None:
    assert "--listen-address=0.0.0.0" in args(render())
    assert from_args(args(render({"config": {"listenAddress": "::"}}))).listen_address == "::"
    docs = render({"config": {"listenAddress": "podIP"}})
    assert "--listen-address=$(POD_IP)" in args(docs)
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_network_policy_excepts_private_networks_with_deny_private_networks(
    render: Any,
) -> None:
    docs = render(
        {
            "egress": {"denyPrivateNetworks": True},
            "networkPolicy": {
                "enabled": True,
                "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"], "ports": [6443]},
                "dns": {"ports": [53, 5353]},
                "extraEgress": [
                    {
                        "to": [{"podSelector": {"matchLabels": {"app": "ollama"}}}],
                        "ports": [{"port": 11434, "protocol": "TCP"}],
                    }
                ],
            },
        }
    )
    dns, api, providers, extra = one(docs, "NetworkPolicy")["spec"]["egress"]
    assert [(p["protocol"], p["port"]) for p in dns["ports"]] == [
        ("UDP", 53),
        ("TCP", 53),
        ("UDP", 5353),
        ("TCP", 5353),
    ]
    assert ip_blocks(api) == {"10.0.0.1/32": set(), "fd00::1/128": set()}
    assert api["ports"] == [{"protocol": "TCP", "port": 6443}]
    # The operator's flags and the policy's excepts name the same private networks.
    flagged = {a.split("=", 1)[1] for a in egress_flags(docs)} - {"127.0.0.0/8", "::1/128"}
    assert flagged == set(PRIVATE_NETWORKS)
    blocks = ip_blocks(providers)
    always = {str(network) for network, _ in ALWAYS_DENIED}
    assert blocks["0.0.0.0/0"] | blocks["::/0"] == always | flagged
    for cidr, excepts in blocks.items():
        outer = ipaddress.ip_network(cidr)
        assert all(ipaddress.ip_network(e).version == outer.version for e in excepts)
    assert extra == {
        "to": [{"podSelector": {"matchLabels": {"app": "ollama"}}}],
        "ports": [{"port": 11434, "protocol": "TCP"}],
    }


def test_config_values_become_flags(render: Any) -> None:
    config = from_args(
        args(
            render(
                {
                    "config": {
                        "concurrency": 64,
                        "defaultInterval": "1m30s",
                        "defaultTimeout": "2500ms",
                        "defaultFailureThreshold": 5,
                        "missingSecretGrace": "30s",
                        "noInference": True,
                        "logLevel": "debug",
                        "logFormat": "plain",
                    },
                    "health": {"port": 9091},
                    "metrics": {"port": 9090},
                }
            )
        )
    )
    assert config.concurrency == 64
    assert config.defaults.interval == 90
    assert config.defaults.timeout == 2.5
    assert config.defaults.failure_threshold == 5
    assert config.defaults.missing_secret_grace == 30
    assert config.defaults.inference_min_interval is None
    assert (config.log_level, config.log_format) == ("debug", "plain")
    assert (config.metrics_port, config.health_port) == (9090, 9091)


def test_extra_args_and_env(render: Any) -> None:
    docs = render(
        {
            "extraArgs": ["--shard-count=2"],
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
        }
    )
    assert args(docs)[-1] == "--shard-count=2"
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy.corp:3128"


# -- pod hardening ------------------------------------------------------------------------


def test_pod_is_locked_down(render: Any) -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert isinstance(sc["runAsUser"], int)
    assert sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable path is an emptyDir on /tmp.
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert c["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert (
        c["image"] == f"llmconn:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    )


def test_image_digest_wins_over_tag(render: Any) -> None:
    digest = "sha256:" + "a" * 64
    c = container(render({"image": {"repository": "registry.example/llmconn", "digest": digest}}))
    assert c["image"] == f"registry.example/llmconn@{digest}"


# -- values and schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"config": {"defaultInterval": "5 minutes"}}, "/config/defaultInterval"),
        ({"watch": {"namespace": "x"}}, "namespace"),
        ({"watch": {"namespaces": ["Team_A"]}}, "/watch/namespaces/0"),
        ({"egress": {"deny": ["10.0.0.0/8,192.168.0.0/16"]}}, "/egress/deny/0"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"egress": {"denyPrivateNetworks": "yes"}}, "/egress/denyPrivateNetworks"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer"),
        ({"networkPolicy": {"dns": {"ports": [0]}}}, "/networkPolicy/dns/ports/0"),
        ({"networkPolicy": {"extraEgress": ["allow-all"]}}, "/networkPolicy/extraEgress/0"),
    ],
)
def test_schema_refuses_bad_values(
    helm_env: dict[str, str], tmp_path: Path, values: Doc, complaint: str
) -> None:
    result = helm(
        helm_env, "template", RELEASE, "{chart}", *values_args(tmp_path, values), check=False
    )
    assert result.returncode != 0
    assert complaint in result.stderr


def test_every_value_is_documented() -> None:
    """Each leaf in values.yaml has a `# --` comment above it (k8s structs as a whole)."""
    whole = {"resources", "podSecurityContext", "securityContext"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, str, bool]] = []  # indent, key, documented as a whole
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = lines[i - 1].strip() if i else ""
        commented = above.startswith("#")
        inside_whole = any(w for _, _, w in stack)
        is_leaf = rest != ""
        if is_leaf and not commented and not inside_whole:
            undocumented.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, key in whole and commented and not stack))
    assert undocumented == []


def test_schema_knows_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Doc, props: Doc, path: str) -> None:
        for key, value in node.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            sub = props[key]
            if isinstance(value, dict) and sub.get("additionalProperties") is False:
                walk(value, sub["properties"], f"{path}{key}.")

    walk(values, schema["properties"], "")


# -- NOTES --------------------------------------------------------------------------------


@pytest.fixture
def notes(helm_env: dict[str, str], tmp_path: Path) -> Any:
    """notes(values) -> NOTES.txt as rendered (helm template leaves it out: render a copy)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    text = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + text + "\n{{- end }}\n"
    )
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )

    def _notes(values: Doc | None = None) -> str:
        out = helm(
            helm_env,
            "template",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            "--show-only",
            "templates/notes.yaml",
            *values_args(tmp_path, values),
        ).stdout
        rendered: str = yaml.safe_load(out)["data"]["notes"]
        return rendered

    return _notes


def test_notes_say_what_was_installed(notes: Any) -> None:
    default = notes()
    assert "every namespace (cluster-wide mode)" in default
    assert f"port-forward service/{FULLNAME}-metrics 8080" in default
    assert "loopback destinations are refused" in default
    assert "peering" not in default
    scoped = notes({"watch": {"namespaces": ["a", "b"]}, "replicaCount": 2})
    assert "only in: a, b" in scoped
    assert f'Kopf peering object "{FULLNAME}"' in scoped
    assert "WARNING" in notes({"egress": {"denyLoopback": False}})
    assert "NetworkPolicy" not in default
    confined = notes({"networkPolicy": {"enabled": True}})
    assert "egress NetworkPolicy" in confined
    assert "WARNING" not in confined
    unreachable = notes(
        {"networkPolicy": {"enabled": True}, "egress": {"denyPrivateNetworks": True}}
    )
    assert "Private networks" in unreachable
    assert "WARNING: networkPolicy.apiServer.cidrs is empty" in unreachable


# -- CRD copy -----------------------------------------------------------------------------


def test_chart_crd_is_the_canonical_crd() -> None:
    """`make chart-sync` copies crds/llmconnections.yaml into the chart; run it on drift."""
    canonical = (ROOT / "crds" / "llmconnections.yaml").read_bytes()
    copy = (CHART / "crds" / "llmconnections.yaml").read_bytes()
    assert copy == canonical, "chart CRD differs from crds/llmconnections.yaml: make chart-sync"


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    names = {(d["spec"]["names"]["kind"], d["spec"]["scope"], d["spec"]["group"]) for d in docs}
    assert names == {
        ("ClusterKopfPeering", "Cluster", "kopf.dev"),
        ("KopfPeering", "Namespaced", "kopf.dev"),
    }


# -- the image and the chart agree --------------------------------------------------------


def test_dockerfile_matches_the_chart() -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (user,) = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert (
        user
        == f"{values['securityContext']['runAsUser']}:{values['securityContext']['runAsGroup']}"
    )
    assert re.search(r'^ENTRYPOINT \["llmconn", "run"\]$', dockerfile, flags=re.M)
    # Every base image is pinned to an exact Python release.
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, flags=re.M)
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[0])
    assert re.findall(r"^FROM (\S+)", dockerfile, flags=re.M) == [
        "${PYTHON_IMAGE}",
        "${PYTHON_IMAGE}",
    ]


def test_the_image_installs_with_the_base_images_pip() -> None:
    # The venv is made without pip. With /opt/llmconn/bin already on PATH, the `python -m pip`
    # that installs into it would start the venv's own python and fail: "No module named pip".
    final = (ROOT / "operator" / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    pip = final.index("python -m pip --python /opt/llmconn/bin/python install")
    on_path = [m.start() for m in re.finditer(r"PATH=/opt/llmconn/bin", final)]
    assert on_path and min(on_path) > pip
    assert re.search(r"^ENV PATH=/opt/llmconn/bin:\$PATH$", final, flags=re.M)


# -- alerts and dashboard -----------------------------------------------------------------


def test_alerts_and_dashboard_are_off_by_default(render: Any) -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert not [d for d in docs if d["kind"] in ("PrometheusRule", "ConfigMap")]


def test_prometheus_rule_where_and_how_labelled(render: Any) -> None:
    rule_values = {"enabled": True, "namespace": "monitoring", "labels": {"release": "prom"}}
    docs = render({"metrics": {"prometheusRule": rule_values}})
    rule = one(docs, "PrometheusRule", "monitoring")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert alerts == [
        "LLMConnectionNotReady",
        "LLMConnectionsFailingInNamespace",
        "LLMConnOperatorDown",
        "LLMConnOperatorLagging",
    ]
    # Without the metrics endpoint there is nothing to alert on.
    off = render({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}})
    assert not [d for d in off if d["kind"] == "PrometheusRule"]


def test_alert_labels_reach_every_alert(render: Any) -> None:
    values = {"enabled": True, "alertLabels": {"team": "platform"}}
    rule = one(render({"metrics": {"prometheusRule": values}}), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["team"] == "platform", r["alert"]
            assert r["labels"]["severity"] in ("warning", "critical")


def test_dashboard_config_map_holds_the_dashboard(render: Any) -> None:
    dashboard = {"enabled": True, "annotations": {"grafana_folder": "LLM"}}
    docs = render({"metrics": {"grafanaDashboard": dashboard}})
    cm = one(docs, "ConfigMap", NAMESPACE)
    assert cm["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    shipped = (CHART / "dashboards" / "llmconn.json").read_text()
    assert json.loads(cm["data"]["llmconn.json"]) == json.loads(shipped)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"prometheusRule": {"lagSeconds": 30}}, "/metrics/prometheusRule/lagSeconds"),
        ({"prometheusRule": {"namespaceFailingShare": 1.5}}, "namespaceFailingShare"),
        ({"prometheusRule": {"notReadyFor": "ten minutes"}}, "notReadyFor"),
        ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}, "grafana_dashboard"),
    ],
)
def test_schema_refuses_bad_alert_values(
    helm_env: dict[str, str], tmp_path: Path, values: Doc, complaint: str
) -> None:
    result = helm(
        helm_env,
        "template",
        RELEASE,
        "{chart}",
        *values_args(tmp_path, {"metrics": values}),
        check=False,
    )
    assert result.returncode != 0
    assert complaint in result.stderr


# -- sharding -----------------------------------------------------------------------------


def pod_spec(docs: list[Doc], kind: str = "StatefulSet") -> Doc:
    spec: Doc = one(docs, kind)["spec"]["template"]["spec"]
    return spec


def shard_of_pod(
    monkeypatch: pytest.MonkeyPatch, docs: list[Doc], ordinal: int
) -> tuple[int, str | None]:
    """(shard index, peering name) as the operator in the StatefulSet's pod with this ordinal
    parses its flags, with POD_ID set the way the pod's env sets it (from its name)."""
    (c,) = pod_spec(docs)["containers"]
    (pod_id,) = [e for e in c["env"] if e["name"] == "POD_ID"]
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    monkeypatch.setenv("POD_ID", f"{one(docs, 'StatefulSet')['metadata']['name']}-{ordinal}")
    config = from_args(c["args"])
    return config.shard.index, config.peering_name


def test_sharded_mode_is_a_statefulset_whose_ordinal_is_the_shard(
    render: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render({"sharding": {"shards": 3}})
    assert [d for d in docs if d["kind"] == "Deployment"] == []
    sts = one(docs, "StatefulSet", NAMESPACE)
    assert sts["metadata"]["name"] == FULLNAME
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"  # shards start side by side
    assert sts["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    (c,) = pod_spec(docs)["containers"]
    assert {"--shard-count=3", "--shard-index=pod-ordinal"} <= set(c["args"])
    assert not [a for a in c["args"] if a.startswith("--peering")]  # one pod per shard
    assert [shard_of_pod(monkeypatch, docs, i) for i in range(3)] == [
        (0, None),
        (1, None),
        (2, None),
    ]
    # The same pod as the Deployment's, hardening included.
    unsharded = pod_spec(render(), "Deployment")
    assert {k: v for k, v in pod_spec(docs).items() if k != "containers"} == {
        k: v for k, v in unsharded.items() if k != "containers"
    }
    (plain,) = unsharded["containers"]
    assert {k: v for k, v in c.items() if k != "args"} == {
        k: v for k, v in plain.items() if k != "args"
    }
    assert [a for a in c["args"] if not a.startswith("--shard-")] == plain["args"]
    assert not [d for d in docs if d["kind"].endswith("KopfPeering")]


def test_sharded_ha_has_one_peering_object_per_shard(
    render: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render({"sharding": {"shards": 3}, "replicaCount": 2})
    assert one(docs, "StatefulSet")["spec"]["replicas"] == 6
    objects = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering")
    assert objects == [f"{FULLNAME}-shard-{i}" for i in range(3)]
    pods = [shard_of_pod(monkeypatch, docs, ordinal) for ordinal in range(6)]
    # Ordinals 3..5 are the standbys of shards 0..2, each in its own shard's peering object.
    assert pods == [(i % 3, f"{FULLNAME}-shard-{i % 3}") for i in range(6)]
    rules = one(docs, "ClusterRole", name=FULLNAME)["rules"]
    assert rules[: len(OPERATOR_RULES)] == OPERATOR_RULES
    assert rules[len(OPERATOR_RULES) :] == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": objects,
            "verbs": ["get", "patch"],
        },
    ]


def test_sharded_namespaced_peering_meets_in_each_namespace(
    render: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        {"sharding": {"shards": 2}, "watch": {"namespaces": ["a", "b"]}, "replicaCount": 2}
    )
    for ns in ("a", "b"):
        names = sorted(
            d["metadata"]["name"]
            for d in docs
            if d["kind"] == "KopfPeering" and d["metadata"]["namespace"] == ns
        )
        assert names == [f"{FULLNAME}-shard-0", f"{FULLNAME}-shard-1"]
        (granted,) = [r for r in one(docs, "Role", ns)["rules"] if "resourceNames" in r]
        assert granted["resourceNames"] == names
        for ordinal in range(4):
            assert shard_of_pod(monkeypatch, docs, ordinal)[1] in names


def test_sharded_disruption_budget_is_per_shard(
    render: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shard keeps its own pods: a budget per shard, over the pods that stand in for each
    other (the ordinals the operator maps to that shard)."""
    docs = render(
        {"sharding": {"shards": 3}, "replicaCount": 2, "podDisruptionBudget": {"enabled": True}}
    )
    budgets = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert sorted(budgets) == [f"{FULLNAME}-shard-{i}" for i in range(3)]
    labels = one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    for i in range(3):
        spec = budgets[f"{FULLNAME}-shard-{i}"]
        assert spec["maxUnavailable"] == 1
        assert spec["selector"]["matchLabels"] == labels
        (expr,) = spec["selector"]["matchExpressions"]
        assert (expr["key"], expr["operator"]) == ("statefulset.kubernetes.io/pod-name", "In")
        ordinals = [int(name.rsplit("-", 1)[1]) for name in expr["values"]]
        assert {shard_of_pod(monkeypatch, docs, o)[0] for o in ordinals} == {i}
        assert len(ordinals) == 2
    unsharded = one(render({"podDisruptionBudget": {"enabled": True}}), "PodDisruptionBudget")
    assert unsharded["metadata"]["name"] == FULLNAME
    assert "matchExpressions" not in unsharded["spec"]["selector"]


def test_one_shard_is_the_plain_deployment(render: Any) -> None:
    assert render({"sharding": {"shards": 1}}) == render()


@pytest.mark.parametrize("shards", [0, -1, "3"])
def test_schema_refuses_bad_shard_counts(
    helm_env: dict[str, str], tmp_path: Path, shards: Any
) -> None:
    result = helm(
        helm_env,
        "template",
        RELEASE,
        "{chart}",
        *values_args(tmp_path, {"sharding": {"shards": shards}}),
        check=False,
    )
    assert result.returncode != 0
    assert "/sharding/shards" in result.stderr


def test_sharded_lint_strict(helm_env: dict[str, str], tmp_path: Path) -> None:
    values = {
        "sharding": {"shards": 4},
        "replicaCount": 2,
        "podDisruptionBudget": {"enabled": True},
    }
    result = helm(helm_env, "lint", "--strict", "{chart}", *values_args(tmp_path, values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout + result.stderr


def test_sharded_notes(notes: Any) -> None:
    text = notes({"sharding": {"shards": 3}, "replicaCount": 2})
    assert f"rollout status statefulset/{FULLNAME}" in text
    assert "split into 3 shards" in text
    assert f"{FULLNAME}-shard-0, {FULLNAME}-shard-1, {FULLNAME}-shard-2" in text
    assert f"rollout status deployment/{FULLNAME}" in notes()
