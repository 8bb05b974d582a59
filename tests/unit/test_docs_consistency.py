"""Where the documentation (README.md and docs/) is checked against the code.

Tables, each against its source of truth wherever the section lives: providers (the probe
registry and the CRD's enum), reasons (llmconn.model.reasons), `llmconn run` options
(llmconn.controller.config), chart values (values.yaml), metrics (llmconn.controller.metrics),
spec and status fields and printer columns (the CRD), make targets (the Makefile) and tenant
limits (llmconn.model.limits). Numbers in prose: each phrase in FACTS that states a constant, a
default or a limit is read against the code. Links: every link from one document to another
(or to a heading) arrives somewhere. Other prose is not checked. No cluster needed.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
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
        for block in code_blocks(section("Reading a verdict with kubectl"))
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


FIGURES_CONTEXT = ["date", "CPU model, cores", "Python, Kopf", "command"]


def test_every_figure_names_its_context() -> None:
    """Each measured figure says when, on what and with what it was made, or that the run did
    not record it: never an empty cell."""
    rows = first_table(section("Figures"))
    assert rows
    for row in rows:
        assert list(row)[-len(FIGURES_CONTEXT) :] == FIGURES_CONTEXT
        for column in FIGURES_CONTEXT:
            assert row[column].strip(), (row["measurement"], column)
        assert re.search(r"\d{4}-\d{2}-\d{2}|not recorded|estimate", row["date"]), row["date"]


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


# --- numbers in prose ------------------------------------------------------------------
#
# Each number the documents state about a constant, a default or a limit, read from the code.
# A Fact is a phrase of one document, whose groups are what the code says they are; a space
# in the phrase matches any run of white space (the prose wraps). A Fact fails when the
# phrase is gone from its document (reworded: update the Fact) and when a group differs from
# the code (the code or the document changed: make them agree).

ENGLISH_SHARES = {2: "half", 4: "a quarter", 8: "an eighth"}


@dataclass(frozen=True)
class Fact:
    doc: str  # relative to the repository's root
    phrase: str  # a regular expression; a space matches any white space
    code: Callable[[], tuple[object, ...]]  # the values the groups must read as (str() each)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.phrase.replace(" ", r"\s+"))


def share(function: Callable[[int], int]) -> str:
    """The English share `function` takes of a number ("a quarter" for n // 4)."""
    whole = 8 * 9 * 5 * 7 * 64
    return ENGLISH_SHARES[round(whole / function(whole))]


def run_default(option: str) -> str:
    """`llmconn run`'s default for `option`, as its parser holds it (LLMCONN_* unset)."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("LLMCONN_")}
    try:
        (action,) = [a for a in config.parser()._actions if option in a.option_strings]
        return str(action.default)
    finally:
        os.environ.update(saved)


def seconds(value: float) -> str:
    """Whole seconds as a duration: `60s`."""
    assert value.is_integer(), value
    return f"{int(value)}s"


def mib(size: int) -> str:
    assert size % (1024 * 1024) == 0, size
    return f"{size // (1024 * 1024)} MiB"


def thousands(number: float) -> str:
    return f"{int(number):,}"


def pool_default(name: str) -> object:
    from llmconn.net.pool import ClientPool

    return inspect.signature(ClientPool.__init__).parameters[name].default


def _facts() -> list[Fact]:
    from llmconn.cli import kubectl_plugin
    from llmconn.controller import engine, kube, reconciler, scheduler, triggers, watches, writer
    from llmconn.model import fields, limits, redact
    from llmconn.model import status as st
    from llmconn.net import bodies, exchange
    from llmconn.validation import validate

    urgent = scheduler.urgent_reserve
    per_namespace = reconciler.default_namespace_concurrency
    concurrency = lambda: int(run_default("--concurrency"))  # noqa: E731
    kib = lambda size: size // limits.KIB  # noqa: E731
    return [
        # The scheduler's urgent reserve and the namespace share.
        Fact(
            "docs/operations.md",
            r"Periodic validations use all but (an? \w+) of them \((\d+) of (\d+)\)",
            lambda: (share(urgent), urgent(concurrency()), concurrency()),
        ),
        Fact(
            "docs/design.md",
            r"periodic validations leave them (an? \w+) of the workers",
            lambda: (share(urgent),),
        ),
        Fact(
            "docs/development.md",
            r"leaves new and changed connections (an? \w+) of the workers",
            lambda: (share(urgent),),
        ),
        Fact(
            "docs/operations.md",
            r"\| (an? \w+) of `--concurrency`; all of it when `-n` names a single namespace \|",
            lambda: (share(per_namespace),),
        ),
        Fact(
            "docs/operations.md",
            r"`0` means (an? \w+) of `config.concurrency`",
            lambda: (share(per_namespace),),
        ),
        Fact(
            "docs/security.md",
            r"workers \((an? \w+) of `--concurrency` by default",
            lambda: (share(per_namespace),),
        ),
        Fact(
            "docs/development.md",
            r"the operator's own default is (\d+)\)",
            lambda: (concurrency(),),
        ),
        # Periodic status writes and the API client's connections.
        Fact(
            "docs/operations.md",
            r"periodic status writes hold at most (\d+) of the operator's (\d+) connections to"
            r" the API server, leaving (\d+)",
            lambda: (
                writer.PLANNED_WRITES,
                kube.API_CONNECTIONS,
                kube.API_CONNECTIONS - writer.PLANNED_WRITES,
            ),
        ),
        Fact(
            "docs/design.md",
            r"holds periodic writes to (\d+) in flight",
            lambda: (writer.PLANNED_WRITES,),
        ),
        Fact(
            "docs/design.md",
            r"hold at most (\d+) of the (\d+) connections to the API server",
            lambda: (writer.PLANNED_WRITES, kube.API_CONNECTIONS),
        ),
        Fact(
            "docs/development.md",
            r"hold at most (\d+) of the (\d+) connections \(`PLANNED_WRITES`\)",
            lambda: (writer.PLANNED_WRITES, kube.API_CONNECTIONS),
        ),
        # Retry-After, Warning Events, retries and the schedule.
        Fact(
            "docs/reference.md",
            r"at most the longer of its interval and (\d+) hour",
            lambda: (triggers.RETRY_AFTER_FLOOR_CAP / 3600,),
        ),
        Fact(
            "docs/design.md",
            r"at most max\(interval, (\d+) hour\)",
            lambda: (triggers.RETRY_AFTER_FLOOR_CAP / 3600,),
        ),
        Fact(
            "docs/reference.md",
            r"at most one Warning every (\d+) minutes",
            lambda: (writer.WARNING_EVERY / 60,),
        ),
        Fact(
            "docs/design.md",
            r"at most one Warning every (\d+) minutes",
            lambda: (writer.WARNING_EVERY / 60,),
        ),
        Fact(
            "docs/development.md",
            r"the (\d+)-minute Warning limit",
            lambda: (writer.WARNING_EVERY / 60,),
        ),
        Fact(
            "docs/design.md",
            r"retried, after (\d+) s, then doubling up to (\d+) minutes",
            lambda: (reconciler.RETRY_API, reconciler.MAX_WRITE_BACKOFF / 60),
        ),
        Fact(
            "docs/reference.md",
            r"with ±(\d+)% jitter",
            lambda: (triggers.JITTER * 100,),
        ),
        Fact(
            "docs/reference.md",
            r"come ([\d.]+) to ([\d.]+) intervals apart",
            lambda: (1 - triggers.JITTER, 1 + triggers.JITTER),
        ),
        Fact(
            "docs/reference.md",
            r"spread at random over the next (\d+) seconds",
            lambda: (triggers.RESUME_SPREAD,),
        ),
        Fact(
            "docs/reference.md",
            r"Secrets are listed, up to (\d+) s\)",
            lambda: (watches.FIRST_LIST_WAIT,),
        ),
        Fact(
            "docs/design.md",
            r"lists the connections in pages of (\d+) \(`settings.watching.chunk_size`\)",
            lambda: (watches.PAGE,),
        ),
        Fact(
            "docs/operations.md",
            r"Probes in flight get up to (\d+) s of it",
            lambda: (engine.SHUTDOWN_GRACE,),
        ),
        # The defaults a connection gets.
        Fact(
            "docs/reference.md",
            r"A field left out takes the operator's default \((\w+), (\w+), (\d+) unless",
            lambda: (
                run_default("--default-interval"),
                run_default("--default-timeout"),
                run_default("--default-failure-threshold"),
            ),
        ),
        Fact(
            "docs/reference.md",
            r"\(default (\w+)\), with ±",
            lambda: (run_default("--default-interval"),),
        ),
        Fact(
            "README.md",
            r"until `failureThreshold` \(default (\d+)\)",
            lambda: (run_default("--default-failure-threshold"),),
        ),
        Fact(
            "docs/reference.md",
            r"`--inference-min-interval` \(default (\w+);",
            lambda: (run_default("--inference-min-interval"),),
        ),
        Fact(
            "docs/reference.md",
            r"`--missing-secret-grace` \(default (\w+)\)",
            lambda: (run_default("--missing-secret-grace"),),
        ),
        Fact(
            "docs/reference.md",
            r"it asks again every (\d+) s during the grace period",
            lambda: (reconciler.SERVICE_ACCOUNT_POLL,),
        ),
        Fact(
            "docs/cli.md",
            r"With `--wait` it waits \(default (\w+)\)",
            lambda: (kubectl_plugin.parser().parse_args(["validate", "x"]).timeout,),
        ),
        # Identity.
        Fact(
            "docs/reference.md",
            r"`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`\), valid (\d+) minutes",
            lambda: (kube.TOKEN_SECONDS / 60,),
        ),
        Fact(
            "docs/security.md",
            r"mints a (\d+)-minute token",
            lambda: (kube.TOKEN_SECONDS / 60,),
        ),
        # What a probe reads and follows.
        Fact(
            "docs/reference.md",
            r"Redirects within the same origin are followed \(at most (\d+)\)",
            lambda: (exchange.MAX_REDIRECTS,),
        ),
        Fact(
            "docs/reference.md",
            r"Bodies are read up to (\d+ MiB)",
            lambda: (mib(bodies.MAX_BODY_BYTES),),
        ),
        Fact(
            "docs/security.md",
            r"A probe reads at most (\d+ MiB) of any answer",
            lambda: (mib(bodies.MAX_BODY_BYTES),),
        ),
        # The status's own limits.
        Fact(
            "docs/security.md",
            r"A status stays under (\d+) KiB whatever the provider sends: `message` and"
            r" condition messages at most ([\d,]+) characters, `code` and `requestId` (\d+),"
            r" `details` at most (\d+) entries of at most (\d+) characters \(keys (\d+)\)",
            lambda: (
                kib(st.MAX_STATUS_BYTES),
                thousands(st.MAX_MESSAGE),
                st.MAX_CODE,
                st.MAX_DETAILS,
                st.MAX_DETAIL_VALUE,
                st.MAX_DETAIL_KEY,
            ),
        ),
        Fact(
            "docs/security.md",
            r"`spec.validation.timeout` is at most (\w+)",
            lambda: (seconds(fields.MAX_TIMEOUT),),
        ),
        # Tenant limits in prose (the table of security.md is checked above).
        Fact(
            "docs/reference.md",
            r"a credentials file is at most (\d+) KiB \(([\d,]+) bytes\), all the credential"
            r" values of one connection together at most (\d+) KiB, and a CA bundle at most"
            r" (\d+) KiB and (\d+) certificates",
            lambda: (
                kib(limits.MAX_CREDENTIAL_BYTES),
                thousands(limits.MAX_CREDENTIAL_BYTES),
                kib(limits.MAX_CONNECTION_SECRET_BYTES),
                kib(limits.MAX_CA_BUNDLE_BYTES),
                limits.MAX_CA_CERTIFICATES,
            ),
        ),
        Fact(
            "docs/security.md",
            r"refuses a `private_key` of more than (\d+) bytes of PEM",
            lambda: (limits.MAX_PRIVATE_KEY_PEM_BYTES,),
        ),
        Fact(
            "docs/security.md",
            r"refuses more than (\d+) bits",
            lambda: (limits.MAX_RSA_BITS,),
        ),
        Fact(
            "docs/security.md",
            r"one namespace holds at most (\d+) such clients of the pool's (\d+)",
            lambda: (pool_default("max_tenant_clients"), pool_default("max_clients")),
        ),
        Fact(
            "docs/security.md",
            r"values over ([\d,]+) characters are prepared in a worker thread",
            lambda: (thousands(validate.OFF_LOOP_CHARS),),
        ),
        Fact(
            "docs/security.md",
            r"For each value of (\d+) or more characters",
            lambda: (redact.MIN_LENGTH,),
        ),
        Fact(
            "docs/security.md",
            r"Any run of (\d+) or more characters of any form",
            lambda: (redact.WINDOW,),
        ),
    ]


FACTS = _facts()


def as_doc(value: object) -> str:
    """A code value as prose writes it: 3600.0 s / 3600 is `1`, 0.9 stays `0.9`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def mismatches(fact: Fact, text: str) -> list[str]:
    """What in `text` disagrees with the code, or that the phrase is missing."""
    found = list(fact.pattern.finditer(text))
    if not found:
        return [f"{fact.doc}: no phrase {fact.phrase!r}"]
    want = tuple(as_doc(v) for v in fact.code())
    return [
        f"{fact.doc}: {match.group(0)!r} says {match.groups()}, the code {want}"
        for match in found
        if match.groups() != want
    ]


@pytest.mark.parametrize("fact", FACTS, ids=lambda f: f"{f.doc}:{f.phrase[:40]}")
def test_documented_number_is_the_codes(fact: Fact) -> None:
    assert mismatches(fact, (ROOT / fact.doc).read_text()) == []


@pytest.mark.parametrize("fact", FACTS, ids=lambda f: f"{f.doc}:{f.phrase[:40]}")
def test_a_changed_number_is_noticed(fact: Fact) -> None:
    """The check itself: the document with its first stated value changed no longer passes."""
    text = (ROOT / fact.doc).read_text()
    match = fact.pattern.search(text)
    assert match is not None
    start, end = match.span(1)
    changed = text[:start] + "9" + text[start:end] + text[end:]
    assert mismatches(fact, changed) != []
