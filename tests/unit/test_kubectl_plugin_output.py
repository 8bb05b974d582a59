"""The kubectl plugin's pure parts: what it says a reason means, the annotation value it sets,
and how it reads a status. Its commands run through the real kubectl in
tests/e2e/test_kubectl_plugin.py."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from docskit import section
from llmconn.cli import kubectl_plugin as plugin
from llmconn.model.reasons import Reason


def documented_reasons() -> dict[str, tuple[str, str]]:
    """reason -> (meaning, what to do) from the Reasons table of the reference, as plain text."""
    table = section("Reasons").split("\n\n| reason |", 1)[1].split("\n\n", 1)[0]
    plain: dict[str, tuple[str, str]] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]

        def text(cell: str) -> str:
            return re.sub(r"\[([^]]+)\]\([^)]+\)", r"\1", cell).replace("`", "")

        plain[cells[0].strip("`")] = (text(cells[2]), text(cells[5]))
    return plain


def test_reason_help_is_the_reasons_table() -> None:
    assert documented_reasons() == plugin.REASONS


def test_every_reason_has_help() -> None:
    assert set(plugin.REASONS) == {r.value for r in Reason}


def test_request_value_is_utc_to_the_millisecond() -> None:
    now = dt.datetime(2026, 11, 30, 10, 2, 7, 514_999, tzinfo=dt.UTC)
    assert plugin.request_value(now, None) == "2026-11-30T10:02:07.514Z"


def test_request_value_never_repeats_the_previous_one() -> None:
    """The operator acts only on a value it has not handled yet."""
    now = dt.datetime(2026, 11, 30, 10, 2, 7, 514_000, tzinfo=dt.UTC)
    assert plugin.request_value(now, "2026-11-30T10:02:07.514Z") == "2026-11-30T10:02:07.515Z"


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


META = {"name": "c", "namespace": "ns", "generation": 2}
SPEC = {"provider": "openai", "model": "gpt-4o"}


def test_no_status_says_no_verdict_yet() -> None:
    lines = plugin.verdict_lines(META, SPEC, {})
    assert lines[0] == "  target      provider openai, model gpt-4o"
    assert lines[1].startswith("  verdict     none yet")


def test_a_tolerated_failure_is_explained_by_the_latest_probe() -> None:
    status = {
        "observedGeneration": 2,
        "result": "failed",
        "reason": "Timeout",
        "consecutiveFailures": 1,
        "conditions": [
            cond("Ready", "True", "Validated", "Last probe: Timeout, 1 of 3 tolerated.")
        ],
    }
    lines = plugin.verdict_lines(META, SPEC, status)
    assert "Timeout" in lines
    assert "  means       No complete answer within spec.validation.timeout." in lines
    assert any(
        line.startswith("  latest      failed Timeout, 1 failure in a row") for line in lines
    )


@pytest.mark.parametrize("reason", ["Suspended", "Pending"])
def test_ready_only_reasons_win_over_an_old_probe(reason: str) -> None:
    status = {
        "observedGeneration": 2,
        "result": "success",
        "reason": "Validated",
        "conditions": [cond("Ready", "Unknown", reason)],
    }
    assert reason in plugin.verdict_lines(META, SPEC, status)


def test_a_verdict_about_an_older_generation_says_so() -> None:
    status = {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Validated")]}
    lines = plugin.verdict_lines(META, SPEC, status)
    assert (
        "  note        this verdict is about generation 1; generation 2 (the spec now) is not "
        "validated yet"
    ) in lines


def test_verdict_table_has_llmconn_validates_columns() -> None:
    status = {"provider": "openai", "result": "success", "reason": "Validated", "latencyMs": 12}
    header, row = plugin.verdict_table("c", {**status, "message": "ok"}).splitlines()
    assert header.split() == ["NAME", "PROVIDER", "RESULT", "REASON", "LATENCY", "MESSAGE"]
    assert row.split() == ["c", "openai", "success", "Validated", "12ms", "ok"]
