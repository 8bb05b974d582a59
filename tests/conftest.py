"""Suite-wide pytest hooks: everything under tests/e2e/ carries the `e2e` marker, the
adversarial suite (tests/security/ and tests/e2e/test_security.py) the `security` marker; in
CI, property tests run a fixed series of examples so that a run is repeatable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

E2E_DIR = Path(__file__).parent / "e2e"
SECURITY = (Path(__file__).parent / "security", E2E_DIR / "test_security.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # So `pytest -m "not e2e"` runs without a control plane, with no marker to forget.
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        if any(item.path.is_relative_to(path) for path in SECURITY):
            item.add_marker(pytest.mark.security)
