"""The documentation (README.md and docs/) agrees with the code: each documented list is checked
against its source of truth, wherever the section lives.

Providers (the probe registry and the CRD's enum), reasons (llmconn.model.reasons), `llmconn run`
options (llmconn.controller.config), chart values (values.yaml), metrics (llmconn.controller.metrics), spec and status
fields and printer columns (the CRD), and make targets (the Makefile); every link from one
document to another (or to a heading) arrives somewhere. No cluster needed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from docskit import (
    ROOT,
    Row,
    anchors,
    code_blocks,
    codes,
    documents,
    first_table,
    only_code,
    section,
)
from llmconn.controller import config
from llmconn.controller.metrics import Metrics
from llmconn.model.blocks import McpTransport
from llmconn.model.reasons import MISSING_REFERENCE, STALLING, TRANSIENT, Reason, Result, result_of
from llmconn.model.spec import ValidationType
from llmconn.probes import registry
from llmconn.probes.base import Auth

CRD = yaml.safe_load((ROOT / "crds" / "llmconnections.yaml").read_text())
VALUES = yaml.safe_load((ROOT / "charts" / "llmconn" / "values.yaml").read_text())

# Kubernetes structs documented as one row each (as the chart's own documentation test does).
WHOLE_VALUES = {"resources", "podSecurityContext", "securityContext"}
# Of those, the ones whose default the docs describe in words rather than as YAML.
PROSE_DEFAULTS = {"podSecurityContext", "securityContext"}
# Reasons that only the Ready condition carries: they are never a probe's result.
READY_ONLY = {Reason.PENDING, Reason.SUSPENDED}


# --- the CRD ---------------------------------------------------------------------------


def crd_version() -> dict[str, Any]:
    (version,) = CRD["spec"]["versions"]
    return dict(version)


def crd_schema(*path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd_version()["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return node


# --- providers -------------------------------------------------------------------------


def provider_rows() -> dict[str, Row]:
    rows = first_table(section("Providers"))
    named = {codes(row["provider"])[0]: row for row in rows}
    assert len(named) == len(rows), "a provider is listed twice"
    return named


def test_registry_crd_enum_and_readme_name_the_same_providers() -> None:
    names = set(registry.names())
    assert len(names) == len(registry.names())
    assert set(crd_schema("spec", "provider")["enum"]) == names
    assert set(provider_rows()) == names


AUTH_CELL = {
    Auth.BEARER: "Authorization: Bearer",
    Auth.X_API_KEY: "x-api-key",
    Auth.GOOG: "x-goog-api-key",
    Auth.AZURE: "api-key",
}


@pytest.mark.parametrize("name", registry.names())
def test_provider_row_states_the_probes_endpoint_auth_and_inference(name: str) -> None:
    info = registry.get(name)
    row = provider_rows()[name]
    endpoint = row["default endpoint"]
    if info.default_endpoint is None:
        assert endpoint.startswith("none, required"), endpoint
    else:
        assert codes(endpoint)[0] == info.default_endpoint
    assert AUTH_CELL[info.auth] in codes(row["API key header"])
    assert ("not supported" in row["Inference"]) == (not info.inference)


def test_validation_types_are_each_described() -> None:
    described = re.findall(r"^- `(\w+)`:", section("Validation types"), flags=re.MULTILINE)
    assert sorted(described) == sorted(t.value for t in ValidationType)
    assert set(crd_schema("spec", "validation", "type")["enum"]) == {
        t.value for t in ValidationType
    }


def test_crd_mcp_transports_are_the_spec_models() -> None:
    assert set(crd_schema("spec", "mcp", "transport")["enum"]) == {t.value for t in McpTransport}


# --- reasons ---------------------------------------------------------------------------


def reason_rows() -> dict[Reason, Row]:
    rows = first_table(section("Reasons"))
    named = {Reason(codes(row["reason"])[0]): row for row in rows}
    assert len(named) == len(rows), "a reason is listed twice"
    return named


def test_reasons_table_lists_every_reason() -> None:
    assert set(reason_rows()) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_reason_row_matches_reasons_module(reason: Reason) -> None:
    row = reason_rows()[reason]
    assert row["result"] == ("—" if reason in READY_ONLY else result_of(reason).value)
    assert row["transient"] == ("yes" if reason in TRANSIENT else "")
    if reason in STALLING:
        stalled = "yes"
    elif reason in MISSING_REFERENCE:
        stalled = "after grace period"
    else:
        stalled = ""
    assert row["Stalled"] == stalled


def test_crd_takes_every_reason_and_result() -> None:
    # status.reason is free text in the CRD (a new reason needs no schema change); should it
    # ever become an enum, it must hold exactly the reasons.
    reason = crd_schema("status", "reason")
    assert reason["type"] == "string"
    if "enum" in reason:
        assert set(reason["enum"]) == {r.value for r in Reason}
    assert set(crd_schema("status", "result")["enum"]) == {r.value for r in Result}
    # Every reason also goes into conditions, whose reason field has a pattern.
    pattern = crd_schema("status", "conditions")["items"]["properties"]["reason"]["pattern"]
    for value in [*(r.value for r in Reason), "Validating"]:
        assert re.fullmatch(pattern, value), value


# --- status and spec -------------------------------------------------------------------


def test_status_table_lists_every_status_field() -> None:
    documented = [codes(row["field"])[0] for row in first_table(section("Status reference"))]
    assert sorted(documented) == sorted(crd_schema("status")["properties"])


def test_spec_table_lists_every_spec_field() -> None:
    documented = [codes(row["field"])[0] for row in first_table(section("Spec"))]
    assert sorted(documented) == sorted(crd_schema("spec")["properties"])


def test_printer_columns_match_the_kubectl_examples() -> None:
    columns = crd_version()["additionalPrinterColumns"]
    default = ["NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]
    wide = default + [c["name"].upper() for c in columns if c.get("priority")]
    headers = [
        re.split(r"\s{2,}", line.strip())
        for block in code_blocks(section("A first connection"))
        for line in block.splitlines()
        if line.startswith("NAME ")
    ]
    assert default in headers
    assert wide in headers
    assert all(header in (default, wide) for header in headers), headers


# --- the operator's command line -------------------------------------------------------


@pytest.fixture
def run_parser(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`llmconn run`'s parser with no LLMCONN_* variable set (they change its defaults)."""
    for name in [n for n in os.environ if n.startswith("LLMCONN_")]:
        monkeypatch.delenv(name)
    return config.parser()


def long_options(parser: Any) -> dict[str, Any]:
    return {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def option_rows() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for row in first_table(section("Operator command line")):
        for option in codes(row["option"]):
            if option.startswith("--"):
                assert option not in rows, f"{option} is listed twice"
                rows[option] = row
    return rows


def test_every_run_option_is_documented(run_parser: Any) -> None:
    assert set(option_rows()) == set(long_options(run_parser))


def test_documented_environment_variables_are_read(run_parser: Any) -> None:
    source = (ROOT / "operator" / "llmconn" / "controller" / "config.py").read_text()
    rows = option_rows()
    for option in long_options(run_parser):
        name = option.removeprefix("--")
        assert codes(rows[option]["environment"]) == [
            "LLMCONN_" + name.upper().replace("-", "_")
        ], option
        assert f'_env("{name}"' in source, f"config.py does not read the variable of {option}"


def test_documented_option_defaults_are_the_parsers(run_parser: Any) -> None:
    rows = option_rows()
    for option, action in long_options(run_parser).items():
        cell = rows[option]["default"]
        if action.default is False:
            assert cell == "off", option
        elif action.default is not None:
            assert only_code(cell) == str(action.default), option


# --- the chart -------------------------------------------------------------------------


def value_leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of values.yaml down to scalars, lists, empty maps and whole structs."""
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in WHOLE_VALUES:
            leaves.update(value_leaves(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def config_rows() -> dict[str, Row]:
    rows = first_table(section("Configuration"))
    named = {only_code(row["key"]): row for row in rows}
    assert len(named) == len(rows), "a value is listed twice"
    return named


def test_configuration_table_lists_every_chart_value() -> None:
    assert sorted(config_rows()) == sorted(value_leaves(VALUES))


def test_configuration_table_defaults_are_the_charts() -> None:
    rows = config_rows()
    for path, value in value_leaves(VALUES).items():
        if path in PROSE_DEFAULTS:
            continue
        assert yaml.safe_load(only_code(rows[path]["default"])) == value, path


# --- metrics ---------------------------------------------------------------------------


def exposed_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names), from a Metrics registry with one of each series."""
    metrics = Metrics()
    metrics.validation("openai", "success", "Validated", 0.1)
    metrics.set_ready("ns", "conn", "openai", "True")
    metrics.last_validation("ns", "conn", "openai", 1.0)
    metrics.model_retirement("ns", "conn", 1.0)
    metrics.schedule_lag(0.1)
    metrics.write_delayed("ns", 0.1)
    metrics.event_posted("Warning")
    metrics.event_held("ns")
    found: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        found[name] = (family.type, labels)
    return found


def test_metrics_table_matches_the_metrics_module() -> None:
    documented = {
        only_code(row["metric"]): (row["type"], set(codes(row["labels"])))
        for row in first_table(section("Metrics"))
    }
    assert documented == exposed_metrics()


# --- development -----------------------------------------------------------------------


def test_every_make_target_is_documented() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):[^\n]*## ", makefile, flags=re.MULTILINE)
    documented = [
        only_code(row["target"]).removeprefix("make ")
        for row in first_table(section("Make targets"))
    ]
    assert sorted(documented) == sorted(targets)


def test_local_quickstart_is_exactly_two_commands() -> None:
    first_block = code_blocks(section("Local quickstart"))[0]
    assert first_block.split("\n")[:-1] == ["make demo", "make test"]


def test_docs_name_no_machine_paths() -> None:
    for path, text in documents().items():
        found = re.findall(r"(?<![\w.$])/(?:work|home|Users|root|tmp)/\S*", text)
        assert found == [], path


# --- links -----------------------------------------------------------------------------


def test_links_between_documents_arrive() -> None:
    """Every relative link (to a file of the repository, or to a heading of a document) points
    at something that exists."""
    docs = documents()
    for path, text in docs.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.relative_to(ROOT)}: {target} (no such file)"
            if anchor:
                assert dest in docs, f"{path.relative_to(ROOT)}: {target} (not a document)"
                assert anchor in anchors(docs[dest]), f"{path.relative_to(ROOT)}: {target}"


def test_every_document_is_linked_from_the_readme() -> None:
    readme = documents()[ROOT / "README.md"]
    for path in documents():
        if path.parent.name == "docs":
            assert f"](docs/{path.name}" in readme, path.name


def test_tenant_limits_table_is_the_limits_module() -> None:
    from llmconn.model import limits

    rows = {only_code(row["limit"]): row for row in first_table(section("Tenant limits"))}
    assert sorted(rows) == sorted(limit.name for limit in limits.LIMITS)
    for limit in limits.LIMITS:
        row = rows[limit.name]
        assert row["default"] == f"{limit.value} {limit.unit}", limit.name
        assert row["applies to"] == limit.what, limit.name
        assert row["who can change it"] == limit.who, limit.name
