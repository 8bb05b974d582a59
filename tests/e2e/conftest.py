"""Fixtures for end-to-end tests: a real control plane of the session's own, with the CRD;
and, for the front-door tests, another one with a real node.

The control planes run from the binaries `make binaries` builds into .local/bin, in temp dirs
and on free ports, so they never touch the one `make cluster-up` started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cluster import ControlPlane, MissingBinariesError

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = REPO / ".local" / "bin"
# `make image`: the sandbox image and the operator's image, imported by the node at start.
IMAGES = [REPO / ".local" / "images" / name for name in ("pause.tar", "llmconn.tar")]
CRD = REPO / "crds" / "llmconnections.yaml"
CRD_NAME = "llmconnections.llmconn.dev"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver with the LLMConnection CRD installed and served."""
    # With an audit log, so tests can count the writes in their own namespace.
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), BIN_DIR, audit=True)
    try:
        plane.start()
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        plane.kubectl("apply", "-f", str(CRD))
        plane.wait_established(CRD_NAME)
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards without waiting."""
    name = cluster.create_namespace(request.node.name)
    yield name
    cluster.delete_namespace(name)


def _node_unavailable() -> str | None:
    """Why this machine cannot run the test node, or None."""
    from controlplane.node import NODE_BINARIES, missing_tools

    if os.geteuid() != 0:
        return "the test node needs root (mounts, cgroups, containerd)"
    missing = [tool for tool in missing_tools(BIN_DIR) if tool not in NODE_BINARIES]
    if missing:
        return f"the test node needs Debian's {', '.join(missing)} (see .ci/run)"
    return None


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane with a real node (containerd, kubelet, kube-controller-manager,
    kube-scheduler) and the images of `make image` imported; with an audit log. Skipped on a
    machine that cannot run it, except in CI, where it fails instead."""
    reason = _node_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the front-door tests: {reason}", pytrace=False)
        pytest.skip(reason)
    missing = [str(image) for image in IMAGES if not image.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make image` first", pytrace=False)
    from controlplane.node import machine_state

    plane = ControlPlane(
        tmp_path_factory.mktemp("node-plane"), BIN_DIR, audit=True, node=True, images=IMAGES
    )
    before = machine_state(plane.root_dir)
    try:
        plane.start()
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield plane  # without the CRDs: `helm install` brings them
    finally:
        plane.stop()
    # The node left nothing behind: no mount, cgroup, kernel setting, netns, netfilter rule,
    # path or process that was not there before it started.
    after = machine_state(plane.root_dir)
    assert {
        k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])
    } == {}
    assert after["sysctls"] == before["sysctls"]
