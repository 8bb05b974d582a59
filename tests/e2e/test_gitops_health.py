"""What GitOps tools make of a connection, each computed by the tool's own code on the same
sample objects (tests/gitops_samples.py): Flux's kstatus (no configuration), Flux's CEL
health checks with the healthCheckExprs we ship (charts/llmconn/flux/kustomization.yaml),
and Argo CD's health check in gopher-lua, the VM Argo CD embeds (and in lupa, Lua 5.1).

Also Argo CD's own test layout (health_test.yaml, action_test.yaml) run the way Argo CD's
util/lua tests run it. The checkers compute from the object alone; only the documented Argo CD
install command runs against the control plane.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from controlplane.cluster import ControlPlane
from docskit import section
from gitops_samples import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".local" / "bin"
KUSTOMIZATION = ROOT / "charts" / "llmconn" / "flux" / "kustomization.yaml"
ARGOCD = ROOT / "charts" / "llmconn" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations"
KIND_DIR = CUSTOMIZATIONS / "llmconn.dev" / "LLMConnection"
HEALTH_LUA = KIND_DIR / "health.lua"


@pytest.fixture(scope="module")
def tools(build_env: dict[str, str]) -> Path:
    """The checkers, built by make from their committed go.mod/go.sum."""
    subprocess.run(
        ["make", "-s", "kstatus-check", "flux-cel-check", "argocd-lua"],
        cwd=ROOT,
        check=True,
        env=build_env,
    )
    return BIN


def run(tool: Path, *args: str, obj: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [str(tool), *args], input=json.dumps(obj), capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def lupa_health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    hs = lua.execute(HEALTH_LUA.read_text())
    return {"status": str(hs["status"]), "message": str(hs["message"])}


# sample: (kstatus alone, Flux with our healthCheckExprs, Argo CD)
EXPECTED = {
    # kstatus calls these Current although nothing has been validated: the gap the CEL
    # expressions close. With no status at all, CEL cannot read one and Flux says Unknown
    # (with the error), which it waits on like InProgress: never Current.
    "no-status": ("Current", "Unknown", "Progressing"),
    "empty-status": ("Current", "InProgress", "Progressing"),
    "no-conditions": ("Current", "InProgress", "Progressing"),
    "ready-condition-of-old-spec": ("Current", "InProgress", "Progressing"),
    "ready": ("Current", "Current", "Healthy"),
    "ready-tolerating-a-failure": ("Current", "Current", "Healthy"),
    "first-validation-running": ("InProgress", "InProgress", "Progressing"),
    "pending": ("InProgress", "InProgress", "Progressing"),
    "rate-limited-before-a-verdict": ("InProgress", "InProgress", "Progressing"),
    "stalled": ("Failed", "Failed", "Degraded"),
    "stalled-while-ready": ("Failed", "Failed", "Degraded"),
    # A transient failure may heal: Flux waits, Argo CD shows it.
    "not-ready-transient": ("InProgress", "InProgress", "Degraded"),
    "spec-changed": ("InProgress", "InProgress", "Progressing"),
    "stalled-on-old-spec": ("InProgress", "InProgress", "Progressing"),
    "suspended": ("InProgress", "InProgress", "Suspended"),
    "deleting": ("Terminating", "InProgress", "Progressing"),
}


def test_every_sample_has_an_expectation() -> None:
    assert set(EXPECTED) == set(SAMPLES)


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_what_each_tool_makes_of_a_sample(tools: Path, sample: str) -> None:
    obj = SAMPLES[sample]
    kstatus = run(tools / "kstatus-check", obj=obj)
    flux = run(tools / "flux-cel-check", str(KUSTOMIZATION), obj=obj)
    argocd = run(tools / "argocd-lua", "health", str(HEALTH_LUA), obj=obj)
    assert (kstatus["status"], flux["status"], argocd["status"]) == EXPECTED[sample]
    # Lua 5.1 (lupa) and gopher-lua agree to the message.
    assert lupa_health(obj) == {"status": argocd["status"], "message": argocd.get("message", "")}


def test_flux_never_calls_a_connection_without_a_verdict_current(tools: Path) -> None:
    """The status-less object: kstatus says Current; with the expressions Flux cannot say
    Current, and the error names the missing status."""
    obj = SAMPLES["no-status"]
    assert run(tools / "kstatus-check", obj=obj)["status"] == "Current"
    flux = run(tools / "flux-cel-check", str(KUSTOMIZATION), obj=obj)
    assert flux["status"] == "Unknown"
    assert "no such attribute(s): status.observedGeneration" in flux["error"]


def test_flux_checker_refuses_a_misspelt_kustomization(tools: Path, tmp_path: Path) -> None:
    """The example is decoded strictly into Flux's own Kustomization type."""
    broken = tmp_path / "kustomization.yaml"
    broken.write_text(KUSTOMIZATION.read_text().replace("healthCheckExprs:", "healthChecksExprs:"))
    done = subprocess.run(
        [str(tools / "flux-cel-check"), str(broken)],
        input=json.dumps(SAMPLES["ready"]),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert 'unknown field "healthChecksExprs"' in done.stderr


def test_flux_example_waits_for_llm_connections() -> None:
    ks = yaml.safe_load(KUSTOMIZATION.read_text())
    assert ks["spec"]["wait"] is True
    [check] = ks["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("llmconn.dev/v1alpha1", "LLMConnection")
    assert set(check) == {"apiVersion", "kind", "inProgress", "failed", "current"}


# -- Argo CD's layout, as Argo CD's util/lua tests run it -----------------------------------


def layout_cases() -> list[str]:
    """Case names the harness reports, from the test files themselves."""
    health = yaml.safe_load((KIND_DIR / "health_test.yaml").read_text())["tests"]
    actions = yaml.safe_load((KIND_DIR / "actions" / "action_test.yaml").read_text())
    kind = "llmconn.dev/LLMConnection"
    return (
        [f"{kind}/health/{t['inputPath']}" for t in health]
        + [f"{kind}/discovery/{t['inputPath']}" for t in actions["discoveryTests"]]
        + [f"{kind}/actions/{t['action']}/{t['inputPath']}" for t in actions["actionTests"]]
    )


@pytest.fixture(scope="module")
def gopher_lua_results(tools: Path) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [str(tools / "argocd-lua"), "test", str(CUSTOMIZATIONS)], capture_output=True, text=True
    )
    assert done.returncode in (0, 1), done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    return {r["name"]: r for r in results}


def test_gopher_lua_ran_every_case(gopher_lua_results: dict[str, dict[str, Any]]) -> None:
    assert sorted(gopher_lua_results) == sorted(layout_cases())


@pytest.mark.parametrize("case", layout_cases())
def test_argocd_layout_case_in_gopher_lua(
    gopher_lua_results: dict[str, dict[str, Any]], case: str
) -> None:
    result = gopher_lua_results[case]
    assert result["ok"], result


def test_gopher_lua_harness_reports_a_wrong_expectation(tools: Path, tmp_path: Path) -> None:
    copy = tmp_path / "resource_customizations"
    shutil.copytree(CUSTOMIZATIONS, copy)
    tests = copy / "llmconn.dev" / "LLMConnection" / "health_test.yaml"
    tests.write_text(tests.read_text().replace("status: Degraded", "status: Healthy", 1))
    action = copy / "llmconn.dev" / "LLMConnection" / "actions" / "validate" / "action.lua"
    action.write_text(action.read_text().replace('os.date("!%Y-%m-%dT%XZ")', '"yesterday"'))
    done = subprocess.run(
        [str(tools / "argocd-lua"), "test", str(copy)], capture_output=True, text=True
    )
    assert done.returncode == 1
    failed = {
        r["name"]: r for line in done.stdout.splitlines() if not (r := json.loads(line))["ok"]
    }
    kind = "llmconn.dev/LLMConnection"
    assert sorted(failed) == [
        f"{kind}/actions/validate/testdata/connection-requested-before.yaml",
        f"{kind}/actions/validate/testdata/connection.yaml",
        f"{kind}/health/testdata/degraded_stalled.yaml",
    ]
    assert (
        "not a UTC time to the second"
        in failed[f"{kind}/actions/validate/testdata/connection.yaml"]["error"]
    )
    assert failed[f"{kind}/health/testdata/degraded_stalled.yaml"]["got"]["status"] == "Degraded"


def test_gopher_lua_refuses_what_argocd_cm_scripts_cannot_use(tools: Path, tmp_path: Path) -> None:
    """Scripts from argocd-cm run without the string library and with a safe os: a check
    that used them would fail in Argo CD, so it fails here too."""
    for body, complaint in [
        ('return {status = string.upper("healthy")}', "with key 'upper'"),
        ('os.execute("true") return {status = "Healthy"}', "attempt to call a non-function"),
    ]:
        script = tmp_path / "health.lua"
        script.write_text(body)
        done = subprocess.run(
            [str(tools / "argocd-lua"), "health", str(script)],
            input=json.dumps(SAMPLES["ready"]),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2
        assert complaint in done.stderr


# -- the documented setups, as a user would copy them ----------------------------------------


def gitops_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section("GitOps"), flags=re.M | re.S)


def test_docs_show_the_flux_kustomization() -> None:
    [block] = gitops_blocks("yaml")
    assert yaml.safe_load(block) == yaml.safe_load(KUSTOMIZATION.read_text())


def test_docs_argocd_command_installs_both_customizations(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    [command] = gitops_blocks("sh")
    assert command.startswith("kubectl -n argocd patch configmap argocd-cm")
    cluster.kubectl("create", "namespace", "argocd")
    try:
        cluster.kubectl("create", "configmap", "argocd-cm", "-n", "argocd")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=ROOT,
            env=cluster.env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        data = json.loads(
            cluster.kubectl("get", "cm", "argocd-cm", "-n", "argocd", "-o", "json").stdout
        )["data"]
        assert (
            data["resource.customizations.health.llmconn.dev_LLMConnection"]
            == HEALTH_LUA.read_text()
        )
        actions = yaml.safe_load(data["resource.customizations.actions.llmconn.dev_LLMConnection"])
        assert actions == {
            "discovery.lua": (KIND_DIR / "actions" / "discovery.lua").read_text(),
            "definitions": [
                {
                    "name": "validate",
                    "action.lua": (KIND_DIR / "actions" / "validate" / "action.lua").read_text(),
                }
            ],
        }
    finally:
        cluster.delete_namespace("argocd")
