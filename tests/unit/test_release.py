"""The version agrees everywhere it is written (tests/releasekit.py, `make release-check`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from releasekit import ROOT, TAGGED_DOCS, problems, versions


def test_every_place_names_the_same_version() -> None:
    assert problems() == []
    found = versions()
    assert len(set(found.values())) == 1, found
    # Every tagged document names the image tag, so a release cannot skip one.
    assert {f"{name} image tag" for name in TAGGED_DOCS} <= set(found)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in ["pyproject.toml", "charts/llmconn/Chart.yaml", "docs/CHANGELOG.md", *TAGGED_DOCS]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_chart_behind_pyproject_is_found(copy: Path) -> None:
    version = versions(copy)["pyproject.toml version"]
    _edit(copy / "charts/llmconn/Chart.yaml", f'appVersion: "{version}"', 'appVersion: "0.0.1"')
    assert problems(copy) == ["Chart.yaml appVersion is 0.0.1, pyproject.toml says " + version]


def test_a_changelog_without_the_release_is_found(copy: Path) -> None:
    version = versions(copy)["pyproject.toml version"]
    _edit(copy / "docs/CHANGELOG.md", f"## {version} — ", "## 9.9.9 — ")
    assert problems(copy) == [
        f"CHANGELOG.md newest dated section is 9.9.9, pyproject.toml says {version}"
    ]


def test_a_stale_image_tag_in_the_readme_is_found(copy: Path) -> None:
    version = versions(copy)["pyproject.toml version"]
    _edit(copy / "README.md", f"llmconn:{version}", "llmconn:0.0.1")
    assert problems(copy) == ["README.md image tag is (several), pyproject.toml says " + version]


def test_a_changelog_without_unreleased_on_top_is_found(copy: Path) -> None:
    _edit(copy / "docs/CHANGELOG.md", "## Unreleased\n", "")
    assert problems(copy) == ["CHANGELOG.md: its first section is not Unreleased"]
