"""Suite-wide pytest hooks: everything under tests/e2e/ carries the `e2e` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # So `pytest -m "not e2e"` runs without a control plane, with no marker to forget.
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
