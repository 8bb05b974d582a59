"""The Argo CD health check and resource actions, run by a real Lua 5.1 runtime (Argo CD's
dialect) on sample objects and on the test files of Argo CD's layout (gopher-lua, the VM
Argo CD embeds, runs the same files in tests/e2e/test_gitops_health.py)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from gitops_samples import cond, connection

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "llmconn" / "argocd"
KIND_DIR = ARGOCD / "resource_customizations" / "llmconn.dev" / "LLMConnection"
HEALTH_LUA = (KIND_DIR / "health.lua").read_text()
DISCOVERY_LUA = (KIND_DIR / "actions" / "discovery.lua").read_text()
VALIDATE_LUA = (KIND_DIR / "actions" / "validate" / "action.lua").read_text()
HEALTH_KEY = "resource.customizations.health.llmconn.dev_LLMConnection"
ACTIONS_KEY = "resource.customizations.actions.llmconn.dev_LLMConnection"
REQUESTED_AT = "llmconn.dev/validate-requested-at"


def to_lua(lua: Any, value: Any) -> Any:
    """Python JSON values as Lua values, lists as 1-based sequences (as Argo CD converts)."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def from_lua(value: Any) -> Any:
    """A Lua table as JSON values: sequences as lists, other tables as dicts."""
    if lua51.lua_type(value) != "table":
        return value
    items = dict(value.items())
    if items and list(items) == list(range(1, len(items) + 1)):
        return [from_lua(v) for v in items.values()]
    return {k: from_lua(v) for k, v in items.items()}


def execute(script: str, obj: dict[str, Any]) -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    return from_lua(lua.execute(script))


def health(obj: dict[str, Any]) -> tuple[str, str]:
    hs = execute(HEALTH_LUA, obj)
    return str(hs["status"]), str(hs["message"])


READY = cond("Ready", "True", "Validated", "The connection is reachable; model deepseek-chat ok.")


def test_ready_for_current_generation_is_healthy() -> None:
    assert health(connection(READY)) == (
        "Healthy",
        "Validated: The connection is reachable; model deepseek-chat ok.",
    )


def test_tolerated_transient_failure_stays_healthy() -> None:
    damped = cond("Ready", "True", "Validated", "last probe: Timeout, 1 of 3 tolerated")
    assert health(connection(damped))[0] == "Healthy"


@pytest.mark.parametrize(
    "conditions",
    [
        [
            cond("Ready", "False", "InvalidAPIKey", "The provider rejected the API key."),
            cond("Stalled", "True", "InvalidAPIKey", "The provider rejected the API key."),
        ],
        # Stalled wins even if Ready were still True.
        [READY, cond("Stalled", "True", "QuotaExceeded", "Out of credits.")],
    ],
)
def test_stalled_is_degraded(conditions: list[dict[str, Any]]) -> None:
    status, message = health(connection(*conditions))
    assert status == "Degraded"
    assert message.startswith(conditions[-1]["reason"] + ": ")


def test_ready_false_is_degraded() -> None:
    not_ready = cond("Ready", "False", "Timeout", "3 failures in a row: Timeout")
    assert health(connection(not_ready)) == ("Degraded", "Timeout: 3 failures in a row: Timeout")


def test_ready_false_without_message_names_the_reason() -> None:
    assert health(connection(cond("Ready", "False", "ConnectionFailed"))) == (
        "Degraded",
        "ConnectionFailed",
    )


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(connection(status=False), id="no-status"),
        pytest.param(connection(observed=None), id="no-conditions-or-generation"),
        pytest.param(
            connection(
                cond("Ready", "Unknown", "Pending", "Not validated yet"),
                cond("Reconciling", "True", "Pending", "Validating"),
            ),
            id="reconciling",
        ),
        pytest.param(
            connection(cond("Ready", "Unknown", "Pending", "Not validated yet")), id="pending"
        ),
        pytest.param(
            connection(cond("Ready", "Unknown", "RateLimited", "rate limited")),
            id="unknown-result",
        ),
        pytest.param(connection(READY, generation=4), id="old-observedGeneration"),
        pytest.param(
            connection({**READY, "observedGeneration": 2}, observed=3),
            id="old-ready-condition",
        ),
        pytest.param(
            connection(
                cond("Ready", "False", "InvalidAPIKey", gen=2),
                cond("Stalled", "True", "InvalidAPIKey", gen=2),
                generation=3,
                observed=2,
            ),
            id="stalled-on-old-spec",
        ),
    ],
)
def test_anything_else_is_progressing(obj: dict[str, Any]) -> None:
    assert health(obj)[0] == "Progressing"


def test_waiting_message_names_the_generation() -> None:
    assert health(connection(READY, generation=4)) == (
        "Progressing",
        "Waiting for the validation of generation 4",
    )


def test_suspended_follows_argocd_flux_convention() -> None:
    suspended = cond("Ready", "Unknown", "Suspended", "Validation is suspended")
    assert health(connection(suspended, suspend=True))[0] == "Suspended"
    # spec.suspend decides, even before the operator has written the status.
    assert health(connection(READY, suspend=True))[0] == "Suspended"
    assert health(connection(READY, suspend=False))[0] == "Healthy"


def test_being_deleted_is_progressing() -> None:
    obj = connection(READY)
    obj["metadata"]["deletionTimestamp"] = "2026-11-22T10:31:00Z"
    assert health(obj) == ("Progressing", "Pending deletion")


def test_no_generation_in_metadata_uses_conditions_alone() -> None:
    obj = connection(READY)
    del obj["metadata"]["generation"]
    assert health(obj)[0] == "Healthy"


def test_readme_snippet_is_the_scripts() -> None:
    readme = (ARGOCD / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    configmaps = [yaml.safe_load(b) for b in blocks]
    snippet = [c for c in configmaps if c.get("kind") == "ConfigMap"]
    assert len(snippet) == 1
    assert snippet[0]["metadata"]["name"] == "argocd-cm"
    assert snippet[0]["data"].keys() == {HEALTH_KEY, ACTIONS_KEY}
    assert snippet[0]["data"][HEALTH_KEY] == HEALTH_LUA
    assert yaml.safe_load(snippet[0]["data"][ACTIONS_KEY]) == {
        "discovery.lua": DISCOVERY_LUA,
        "definitions": [{"name": "validate", "action.lua": VALIDATE_LUA}],
    }


# -- Argo CD's layout: the same test files gopher-lua runs ------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


HEALTH_TESTS = load(KIND_DIR / "health_test.yaml")["tests"]
ACTION_TESTS = load(KIND_DIR / "actions" / "action_test.yaml")


@pytest.mark.parametrize("case", HEALTH_TESTS, ids=[t["inputPath"] for t in HEALTH_TESTS])
def test_health_test_yaml(case: dict[str, Any]) -> None:
    status, message = health(load(KIND_DIR / case["inputPath"]))
    assert {"status": status, "message": message} == case["healthStatus"]


@pytest.mark.parametrize(
    "case",
    ACTION_TESTS["discoveryTests"],
    ids=[t["inputPath"] for t in ACTION_TESTS["discoveryTests"]],
)
def test_action_discovery(case: dict[str, Any]) -> None:
    offered = execute(DISCOVERY_LUA, load(KIND_DIR / "actions" / case["inputPath"]))
    assert [{"name": name, **settings} for name, settings in offered.items()] == case["result"]


@pytest.mark.parametrize(
    "case", ACTION_TESTS["actionTests"], ids=[t["inputPath"] for t in ACTION_TESTS["actionTests"]]
)
def test_validate_action(case: dict[str, Any]) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    changed = execute(VALIDATE_LUA, load(KIND_DIR / "actions" / case["inputPath"]))
    after = dt.datetime.now(dt.UTC)
    stamp = changed["metadata"]["annotations"][REQUESTED_AT]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert before <= dt.datetime.fromisoformat(stamp) <= after
    # As Argo CD's tests do: the time of the run becomes the zero time the expected file holds.
    changed["metadata"]["annotations"][REQUESTED_AT] = "0001-01-01T00:00:00Z"
    assert changed == load(KIND_DIR / "actions" / case["expectedOutputPath"])


def test_validate_action_keeps_other_annotations() -> None:
    obj = load(KIND_DIR / "actions" / "testdata" / "connection-requested-before.yaml")
    changed = execute(VALIDATE_LUA, obj)
    assert changed["metadata"]["annotations"]["team"] == "agents"
    assert changed["metadata"]["annotations"][REQUESTED_AT] != "2026-11-29T16:40:00Z"


def test_deprecated_model_is_healthy_with_the_deprecation_message() -> None:
    deprecated = cond("Deprecated", "True", "ModelDeprecated", "Model m retires in 81 days.")
    assert health(connection(READY, deprecated)) == (
        "Healthy",
        "ModelDeprecated: Model m retires in 81 days.",
    )
