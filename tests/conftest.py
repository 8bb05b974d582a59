"""Suite-wide pytest hooks and fixtures: everything under tests/e2e/ carries the `e2e` marker,
the adversarial suite (tests/security/ and tests/e2e/test_security.py) the `security` marker;
in CI, property tests run a fixed series of examples so that a run is repeatable. The tests run
without the machine's proxy and LLMCONN_* settings, and helm renders the chart for any test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from chartkit import HELM, NAMESPACE, RELEASE, ROOT, Doc, template

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

E2E_DIR = Path(__file__).parent / "e2e"
SECURITY = (Path(__file__).parent / "security", E2E_DIR / "test_security.py")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Read before the session fixture below clears them: the builds of test tools may need them.
MACHINE_PROXIES = {k: v for k, v in os.environ.items() if k.upper() in PROXY_VARIABLES}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # So `pytest -m "not e2e"` runs without a control plane, with no marker to forget.
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        if any(item.path.is_relative_to(path) for path in SECURITY):
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="session", autouse=True)
def _machine_settings_cleared() -> Iterator[None]:
    """The code under test (HTTP clients, the CLI, the SDKs, the operator's own process) reads
    HTTP(S)_PROXY, ALL_PROXY and NO_PROXY, and `llmconn run` reads LLMCONN_*: a machine's
    settings would send loopback traffic to a proxy or change the operator's options. Tests
    of those set their own."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper() in PROXY_VARIABLES or name.startswith("LLMCONN_"):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def build_env() -> dict[str, str]:
    """The environment for `make` building a test tool from Go modules: with the machine's
    proxy, which downloads may need."""
    return {**os.environ, **MACHINE_PROXIES}


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory, build_env: dict[str, str]) -> dict[str, str]:
    """Environment for helm: its caches and config in a temp dir, never the user's."""
    home = tmp_path_factory.mktemp("helm-home")
    if not HELM.exists():
        subprocess.run(["make", "-s", "helm"], cwd=ROOT, check=True, env=build_env)
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture
def render(helm_env: dict[str, str], tmp_path: Path) -> Any:
    """render(values, namespace, release) -> the documents `helm template` prints."""

    def _render(
        values: Doc | None = None, namespace: str = NAMESPACE, release: str = RELEASE
    ) -> list[Doc]:
        return template(helm_env, tmp_path, values, namespace, release)

    return _render
