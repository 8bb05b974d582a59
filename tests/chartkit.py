"""What the chart's tests share: helm (built into .local/bin), rendering the chart with given
values, and picking objects out of the rendered documents."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "llmconn"
HELM = ROOT / ".local" / "bin" / "helm"
RELEASE = "llmconn"
NAMESPACE = "llmconn-system"
FULLNAME = "llmconn"  # the release name already holds the chart name

Doc = dict[str, Any]


def helm(
    env: dict[str, str], *args: str, check: bool = True, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    argv = [str(HELM), *(str(chart) if a == "{chart}" else a for a in args)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def values_args(tmp_path: Path, values: Doc | None) -> list[str]:
    if not values:
        return []
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def template(
    env: dict[str, str],
    tmp_path: Path,
    values: Doc | None = None,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> list[Doc]:
    """The documents `helm template` prints."""
    out = helm(
        env,
        "template",
        release,
        "{chart}",
        "--namespace",
        namespace,
        *values_args(tmp_path, values),
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kinds(docs: list[Doc]) -> list[tuple[str, str | None]]:
    return sorted((d["kind"], d["metadata"].get("namespace")) for d in docs)


def one(docs: list[Doc], kind: str, namespace: str | None = None, name: str | None = None) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (namespace is None or d["metadata"].get("namespace") == namespace)
        and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''} in {namespace}: {len(found)} found"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def args(docs: list[Doc]) -> list[str]:
    return list(container(docs)["args"])
