"""Fixtures for end-to-end tests: a real control plane of the session's own, with the CRD.

The control plane runs from the binaries `make binaries` builds into .local/bin, in a temp
dir and on free ports, so it never touches the one `make cluster-up` started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cluster import ControlPlane, MissingBinariesError

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = REPO / ".local" / "bin"
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
