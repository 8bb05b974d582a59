"""The release's version, as each place that names it says it: pyproject.toml's version, the
chart's `version` and `appVersion`, the changelog's newest dated section, and the image tag
the README and docs/operations.md tell an administrator to build (`llmconn:X.Y.Z`).

`make release-check` runs `python tests/releasekit.py`, which prints each and exits 1 when they
disagree; tests/unit/test_release.py runs the same check within `make test`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# `## 0.2.0 — 2026-12-07`: a released section (an em dash, then an ISO date).
DATED = re.compile(r"^## (\d+\.\d+\.\d+) — (\d{4}-\d{2}-\d{2})$", re.MULTILINE)
IMAGE_TAG = re.compile(r"\bllmconn:(\d+\.\d+\.\d+)\b")
TAGGED_DOCS = ("README.md", "docs/operations.md", "operator/Dockerfile")


def versions(root: Path = ROOT) -> dict[str, str]:
    """Where the version is written -> what it says there."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    chart = yaml.safe_load((root / "charts" / "llmconn" / "Chart.yaml").read_text())
    found = {
        "pyproject.toml version": str(pyproject["project"]["version"]),
        "Chart.yaml version": str(chart["version"]),
        "Chart.yaml appVersion": str(chart["appVersion"]),
    }
    changelog = (root / "docs" / "CHANGELOG.md").read_text()
    dated = DATED.search(changelog)
    found["CHANGELOG.md newest dated section"] = dated.group(1) if dated else "(none)"
    for name in TAGGED_DOCS:
        for tag in sorted(set(IMAGE_TAG.findall((root / name).read_text()))):
            found[f"{name} image tag"] = tag if f"{name} image tag" not in found else "(several)"
    return found


def problems(root: Path = ROOT) -> list[str]:
    """Each place whose version is not pyproject's, and a changelog whose Unreleased section
    is not above its newest release."""
    found = versions(root)
    want = found["pyproject.toml version"]
    wrong = [
        f"{where} is {value}, pyproject.toml says {want}"
        for where, value in found.items()
        if value != want
    ]
    changelog = (root / "docs" / "CHANGELOG.md").read_text()
    heads = re.findall(r"^## (.+)$", changelog, flags=re.MULTILINE)
    if not heads or heads[0] != "Unreleased":
        wrong.append("CHANGELOG.md: its first section is not Unreleased")
    return wrong


def main() -> int:
    for where, value in versions().items():
        print(f"{where}: {value}")
    wrong = problems()
    for line in wrong:
        print(f"release-check: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
