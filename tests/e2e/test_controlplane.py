"""The local control plane the e2e tests and the demo run on: version, identities, the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from controlplane.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "tests" / "controlplane" / "cluster.py"


def kubernetes_version() -> str:
    """The k8s.io/kubernetes version the wrapper module pins: what the binaries must report."""
    go_mod = (REPO / "tests" / "controlplane" / "kube" / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", go_mod, re.MULTILINE)
    assert match, "k8s.io/kubernetes is not required in the wrapper go.mod"
    return match.group(1)


def test_kubectl_and_server_report_the_pinned_version(cluster: ControlPlane) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    expected = kubernetes_version()
    assert versions["serverVersion"]["gitVersion"] == expected
    assert versions["clientVersion"]["gitVersion"] == expected
    major, minor = expected.removeprefix("v").split(".")[:2]
    assert (versions["serverVersion"]["major"], versions["serverVersion"]["minor"]) == (
        major,
        minor,
    )


def test_admin_is_cluster_admin_and_kubeconfig_trusts_the_serving_cert(
    cluster: ControlPlane,
) -> None:
    # No insecure-skip-tls-verify anywhere: kubectl verified the apiserver's own certificate.
    assert "insecure" not in cluster.kubeconfig.read_text()
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == "admin"
    assert "system:masters" in who["status"]["userInfo"]["groups"]
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_service_account_tokens_work_and_rbac_applies(
    cluster: ControlPlane, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    as_reader = ("--token", token, "--user", "")  # the token alone, not the admin's
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", *as_reader).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    denied = cluster.kubectl("get", "llmconnections", "-n", namespace, *as_reader, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr

    cluster.kubectl(
        "create", "role", "read-llmc", "-n", namespace,
        "--verb=get,list", "--resource=llmconnections.llmconn.dev",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=read-llmc", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    allowed = cluster.kubectl("get", "llmconnections", "-n", namespace, *as_reader)
    assert allowed.returncode == 0


def test_apiserver_metrics_count_writes(cluster: ControlPlane, namespace: str) -> None:
    def configmap_creates() -> int:
        return cluster.apiserver_metrics().total(resource="configmaps", verb="POST", code="201")

    before = configmap_creates()
    for i in range(3):
        cluster.kubectl("create", "configmap", f"c{i}", "-n", namespace)
    assert configmap_creates() - before == 3


def test_audit_counts_writes_per_namespace_without_secret_data(
    cluster: ControlPlane, namespace: str
) -> None:
    other = cluster.create_namespace("audit-other")
    cluster.kubectl("create", "configmap", "mine", "-n", namespace)
    cluster.kubectl("label", "configmap", "mine", "-n", namespace, "a=b")
    cluster.kubectl("create", "configmap", "theirs", "-n", other)
    cluster.kubectl(
        "create", "secret", "generic", "s", "-n", namespace, "--from-literal=k=v4lue-x9"
    )
    cluster.kubectl("get", "configmap", "mine", "-n", namespace)  # reads are not counted
    assert cluster.writes(namespace, "configmaps") == 2
    assert cluster.writes(namespace, "configmaps", username="admin") == 2
    assert cluster.writes(namespace, "configmaps", username="someone-else") == 0
    assert cluster.writes(other, "configmaps") == 1
    assert cluster.writes(namespace, "secrets") == 1
    verbs = [
        e["verb"]
        for e in cluster.audit_events()
        if e["objectRef"].get("namespace") == namespace
        and e["objectRef"]["resource"] == "configmaps"
    ]
    assert verbs == ["create", "patch"]
    assert "v4lue-x9" not in cluster.audit_log.read_text()


def test_namespaces_are_fresh_and_unique(cluster: ControlPlane) -> None:
    first = cluster.create_namespace("Same Hint_here")
    second = cluster.create_namespace("Same Hint_here")
    assert first != second
    assert re.fullmatch(r"same-hint-here-[0-9a-f]{6}", first)
    names = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert f"namespace/{first}" in names and f"namespace/{second}" in names


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def launcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, timeout=180
    )


def test_cli_up_is_idempotent_and_down_leaves_no_process(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    flags = ("--dir", str(tmp_path), "--bin-dir", str(cluster.bin_dir))
    assert launcher("status", *flags).returncode == 1
    up = launcher("up", *flags)
    assert up.returncode == 0, up.stderr
    assert "ready at https://127.0.0.1:" in up.stdout
    assert f"export KUBECONFIG={tmp_path / 'kubeconfig'}" in up.stdout

    again = launcher("up", *flags)
    assert again.returncode == 0 and "already running" in again.stdout
    status = launcher("status", *flags)
    assert status.returncode == 0

    plane = ControlPlane(tmp_path, cluster.bin_dir)
    assert plane.healthy()
    # The demo records its operator and servers in run/ too; `down` must stop those as well.
    helper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (tmp_path / "run" / "helper.pid").write_text(f"{helper.pid}\n")
    pids = plane.pids()
    assert set(pids) == {"etcd", "kube-apiserver", "helper"}

    down = launcher("down", *flags)
    assert down.returncode == 0, down.stderr
    helper.wait(timeout=10)  # reap it: it was our child
    deadline = time.monotonic() + 5  # init reaps the daemons a moment later
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert not list((tmp_path / "run").glob("*.pid"))
    assert not plane.healthy()
    assert launcher("down", *flags).stdout.strip() == "nothing was running"


def test_down_never_signals_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        pid_file = run / "old-operator.pid"
        pid_file.write_text(f"{stranger.pid}\n")
        an_hour_ago = time.time() - 3600  # the file predates the process: the pid was reused
        os.utime(pid_file, (an_hour_ago, an_hour_ago))
        plane = ControlPlane(tmp_path, tmp_path / "bin")
        assert plane.pids() == {}
        plane.stop()
        assert stranger.poll() is None
        assert not pid_file.exists()  # a stale record is cleared all the same
    finally:
        stranger.kill()
        stranger.wait()
