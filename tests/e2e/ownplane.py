"""A control plane of a test module's own, for tests that stop, restart or freeze its parts:
the module-scoped fixtures (`plane`, `api`, `provider`, `logs`), an API client that makes no
request a test did not ask for (so the apiserver's counters are exact), keys for a loopback
provider, and kube-apiserver killed, started and restarted (`make soak` uses those too). A
module imports the fixtures it uses by name."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets as pysecrets
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opkit import ControlledProvider, condition, wait_for

from controlplane.cluster import ControlPlane, MissingBinariesError
from servers.serve import serve

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = REPO / ".local" / "bin"
CRD = REPO / "crds" / "llmconnections.yaml"
CRD_NAME = "llmconnections.llmconn.dev"
GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
BAD_KEY = "sk-bad-" + pysecrets.token_hex(12)
ROTATED_KEY = "sk-rotated-" + pysecrets.token_hex(12)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path_factory.mktemp("own-plane"), BIN_DIR)
    try:
        cp.start()
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        cp.kubectl("apply", "-f", str(CRD))
        cp.wait_established(CRD_NAME)
        yield cp
    finally:
        for pid in cp.pids().values():  # a part a test froze must not hang stop()
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        cp.stop()


def kill_apiserver(cp: ControlPlane) -> list[str]:
    """SIGKILL kube-apiserver (no goodbye to its clients); returns its flags for a restart."""
    pid = cp.pids()["kube-apiserver"]
    args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:-1]]
    cp._signal(pid, signal.SIGKILL)
    wait_for("kube-apiserver gone", lambda: not cp._alive(pid))
    return args


def start_apiserver(cp: ControlPlane, args: list[str]) -> None:
    """Start kube-apiserver again with the same flags (port, certificates, etcd); returns
    once it answers /readyz with ok."""
    proc = cp._spawn("kube-apiserver", args)
    cp._wait("kube-apiserver", proc, cp.healthy)


def restart_apiserver(cp: ControlPlane) -> None:
    """Stop kube-apiserver and start it again with the same flags (port, certificates,
    etcd): clients see their connections drop, then the same server come back."""
    pid = cp.pids()["kube-apiserver"]
    args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:-1]]
    cp._terminate([pid])
    proc = cp._spawn("kube-apiserver", args)
    cp._wait("kube-apiserver", proc, cp.healthy)


class Api:
    """Direct requests with the admin token: unlike kubectl apply, no GET before a write, so
    the only Secret reads the apiserver counts are the operator's."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.client = httpx2.Client(
            base_url=cp.server,
            headers={"Authorization": f"Bearer {cp.token}"},
            verify=ssl.create_default_context(cafile=str(cp.ca_file)),
            timeout=30,
        )

    def namespace(self, hint: str) -> str:
        name = f"{hint}-{pysecrets.token_hex(3)}"
        self.client.post("/api/v1/namespaces", json={"metadata": {"name": name}}).raise_for_status()
        return name

    def secret(
        self, ns: str, name: str, data: dict[str, str], labels: dict[str, str] | None = None
    ) -> str:
        """Create or replace; returns the new resourceVersion."""
        body = {
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        r = self.client.post(f"/api/v1/namespaces/{ns}/secrets", json=body)
        if r.status_code == 409:
            r = self.client.put(f"/api/v1/namespaces/{ns}/secrets/{name}", json=body)
        r.raise_for_status()
        return str(r.json()["metadata"]["resourceVersion"])

    def delete_secret(self, ns: str, name: str) -> None:
        self.client.delete(f"/api/v1/namespaces/{ns}/secrets/{name}").raise_for_status()

    def connection(
        self, ns: str, name: str, url: str, secret: str = "creds", interval: str = "1h"
    ) -> None:
        body = {
            "apiVersion": "llmconn.dev/v1alpha1",
            "kind": "LLMConnection",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "provider": "openai-compatible",
                "endpoint": url,
                "model": "gpt-4o",
                "apiKeySecretRef": {"name": secret, "key": "apiKey"},
                "validation": {"interval": interval},
            },
        }
        path = f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections"
        self.client.post(path, json=body).raise_for_status()

    def status(self, ns: str, name: str) -> dict[str, Any]:
        path = f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections/{name}"
        return dict(self.client.get(path).json().get("status") or {})

    def request_validation(self, ns: str, name: str, value: str) -> None:
        path = f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections/{name}"
        patch = {"metadata": {"annotations": {"llmconn.dev/validate-requested-at": value}}}
        headers = {"Content-Type": "application/merge-patch+json"}
        self.client.patch(path, json=patch, headers=headers).raise_for_status()

    def ready(self, ns: str, name: str, want: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(ns, name)
            return status if condition(status, "Ready").get("status") == want else None

        return wait_for(f"{ns}/{name} Ready={want}", check, timeout=timeout)

    def secret_reads(self) -> int:
        return self.cp.apiserver_metrics().total(resource="secrets", verb="GET")


@pytest.fixture(scope="module")
def api(plane: ControlPlane) -> Iterator[Api]:
    a = Api(plane)
    yield a
    a.client.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    p = ControlledProvider(keys={GOOD_KEY, ROTATED_KEY})
    with serve(p.app()) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("own-plane-logs")
