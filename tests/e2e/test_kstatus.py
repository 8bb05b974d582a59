"""What Flux's kstatus (the real cli-utils library, in a small Go checker) makes of our status.

No cluster: the checker computes from the object's JSON alone, as Flux does from a watch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gitops_samples import cond, connection

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / ".local" / "bin" / "kstatus-check"


@pytest.fixture(scope="module")
def kstatus(build_env: dict[str, str]) -> Path:
    """The checker binary, built by `make kstatus-check` from its committed go.mod/go.sum."""
    subprocess.run(["make", "-s", "kstatus-check"], cwd=ROOT, check=True, env=build_env)
    assert CHECKER.exists()
    return CHECKER


def compute(checker: Path, obj: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [str(checker)], input=json.dumps(obj), capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


READY = cond("Ready", "True", "Validated", "The connection is reachable.")
PENDING = [
    cond("Ready", "Unknown", "Pending", "Not validated yet"),
    cond("Reconciling", "True", "Pending", "Validating generation 3"),
]


def test_ready_for_current_generation_is_current(kstatus: Path) -> None:
    obj = connection(READY, result="success", reason="Validated", latencyMs=142)
    assert compute(kstatus, obj)["status"] == "Current"


def test_stalled_is_failed(kstatus: Path) -> None:
    obj = connection(
        cond("Ready", "False", "InvalidAPIKey", "The provider rejected the API key."),
        cond("Stalled", "True", "InvalidAPIKey", "The provider rejected the API key."),
        result="failed",
        reason="InvalidAPIKey",
    )
    got = compute(kstatus, obj)
    assert got["status"] == "Failed"
    assert got["message"] == "The provider rejected the API key."
    assert [c["reason"] for c in got["conditions"]] == ["InvalidAPIKey"]


def test_pending_is_in_progress(kstatus: Path) -> None:
    got = compute(kstatus, connection(*PENDING))
    assert got["status"] == "InProgress"
    assert got["message"] == "Validating generation 3"


def test_old_observed_generation_is_in_progress(kstatus: Path) -> None:
    got = compute(kstatus, connection(READY, generation=4, observed=3))
    assert got["status"] == "InProgress"
    assert "generation is 4" in got["message"]


def test_ready_false_without_stalled_is_in_progress(kstatus: Path) -> None:
    # A transient failure past failureThreshold may heal: kstatus waits instead of failing.
    obj = connection(cond("Ready", "False", "Timeout", "3 failures in a row: Timeout"))
    assert compute(kstatus, obj)["status"] == "InProgress"


def test_suspended_is_in_progress(kstatus: Path) -> None:
    obj = connection(cond("Ready", "Unknown", "Suspended", "Validation is suspended"))
    assert compute(kstatus, obj)["status"] == "InProgress"


def test_deleted_is_terminating(kstatus: Path) -> None:
    obj = connection(READY)
    obj["metadata"]["deletionTimestamp"] = "2026-11-22T10:31:00Z"
    assert compute(kstatus, obj)["status"] == "Terminating"


def test_checker_refuses_non_objects(kstatus: Path) -> None:
    proc = subprocess.run([str(kstatus)], input="[1, 2]", capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not a Kubernetes object" in proc.stderr
