"""Status computation: Ready damping, Stalled, Reconciling, transition times, events."""

from __future__ import annotations

import datetime as dt

import pytest

from llmconn.model import lifecycle
from llmconn.model import status as st
from llmconn.model.reasons import Reason
from llmconn.model.spec import ValidationType
from llmconn.model.verdict import Effective, Lifecycle, Verdict

T0 = dt.datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=dt.UTC)


def verdict(reason: Reason, minute: int = 0, threshold: int = 3) -> Verdict:
    return Verdict(
        reason=reason,
        message=f"probe said {reason.value}",
        provider="openai",
        endpoint="https://api.openai.com/v1",
        model="gpt-4o",
        validation=Effective(ValidationType.MODEL, 300.0, 10.0, threshold),
        finished_at=T0 + dt.timedelta(minutes=minute),
        latency_ms=12,
    )


def run(reasons: list[Reason], threshold: int = 3) -> list[dict]:
    statuses, prev = [], None
    for i, reason in enumerate(reasons):
        prev = st.next_status(
            prev,
            verdict(reason, i, threshold),
            generation=1,
            requested_at=None,
            secret_grace_over=True,
        )
        statuses.append(prev)
    return statuses


def ready(status: dict) -> dict:
    cond = st.find(status["conditions"], "Ready")
    assert cond is not None
    return cond


def test_success_sets_ready_and_latest_probe_fields():
    (s,) = run([Reason.VALIDATED])
    assert s["result"] == "success" and s["reason"] == "Validated"
    assert ready(s)["status"] == "True" and ready(s)["observedGeneration"] == 1
    assert s["lastSuccessTime"] == s["lastValidationTime"] == "2026-11-22T10:00:00.123Z"
    assert s["consecutiveFailures"] == 0
    assert st.find(s["conditions"], "Stalled") is None


def test_transient_failures_are_damped_until_threshold():
    s = run([Reason.VALIDATED, Reason.TIMEOUT, Reason.TIMEOUT, Reason.TIMEOUT], threshold=3)
    assert [ready(x)["status"] for x in s] == ["True", "True", "True", "False"]
    assert "Timeout, 1 of 3 tolerated" in ready(s[1])["message"]
    assert s[1]["result"] == "failed" and s[1]["reason"] == "Timeout"  # latest probe is honest
    assert s[3]["consecutiveFailures"] == 3 and ready(s[3])["reason"] == "Timeout"
    # lastTransitionTime moves only on the flip
    assert ready(s[2])["lastTransitionTime"] == ready(s[0])["lastTransitionTime"]
    assert ready(s[3])["lastTransitionTime"] != ready(s[0])["lastTransitionTime"]
    assert s[3]["lastSuccessTime"] == s[0]["lastSuccessTime"]


def test_non_transient_failure_flips_at_once_and_stalls():
    s = run([Reason.VALIDATED, Reason.INVALID_API_KEY])
    assert ready(s[1])["status"] == "False" and ready(s[1])["reason"] == "InvalidAPIKey"
    stalled = st.find(s[1]["conditions"], "Stalled")
    assert stalled is not None and stalled["status"] == "True"


def test_success_after_failures_resets():
    s = run([Reason.INVALID_API_KEY, Reason.VALIDATED])
    assert ready(s[1])["status"] == "True" and s[1]["consecutiveFailures"] == 0
    assert st.find(s[1]["conditions"], "Stalled") is None


@pytest.mark.parametrize("before", [None, Reason.INVALID_API_KEY])
def test_rate_limited_never_moves_ready_by_itself(before):
    reasons = ([before] if before else []) + [Reason.RATE_LIMITED]
    s = run(reasons)
    assert s[-1]["result"] == "unknown"
    assert ready(s[-1])["status"] == ("False" if before else "Unknown")


def test_rate_limited_counts_toward_damping_when_ready():
    s = run([Reason.VALIDATED] + [Reason.RATE_LIMITED] * 3)
    assert [ready(x)["status"] for x in s] == ["True", "True", "True", "False"]


def test_missing_secret_stalls_only_after_grace():
    v = verdict(Reason.SECRET_NOT_FOUND)
    early = st.next_status(None, v, generation=1, requested_at=None, secret_grace_over=False)
    late = st.next_status(None, v, generation=1, requested_at=None, secret_grace_over=True)
    assert st.find(early["conditions"], "Stalled") is None
    assert st.find(late["conditions"], "Stalled")["status"] == "True"
    assert ready(early)["status"] == "False"


def test_requested_at_is_echoed_and_kept():
    v = verdict(Reason.VALIDATED)
    s1 = st.next_status(None, v, generation=2, requested_at="now-1", secret_grace_over=True)
    s2 = st.next_status(s1, v, generation=2, requested_at=None, secret_grace_over=True)
    assert s1["lastHandledRequestedAt"] == s2["lastHandledRequestedAt"] == "now-1"
    assert s2["observedGeneration"] == 2


def test_pending_then_verdict_drops_reconciling():
    pending = st.pending_status(1, T0)
    assert ready(pending)["status"] == "Unknown" and ready(pending)["reason"] == "Pending"
    assert st.find(pending["conditions"], "Reconciling")["status"] == "True"
    after = st.next_status(
        pending, verdict(Reason.VALIDATED), generation=1, requested_at=None, secret_grace_over=True
    )
    assert st.find(after["conditions"], "Reconciling") is None


def test_merge_patch_nulls_fields_that_no_longer_apply():
    prev = {"httpStatus": 401, "code": "invalid_api_key", "reason": "InvalidAPIKey"}
    patch = st.merge_patch(prev, {"reason": "Validated"})
    assert patch == {"reason": "Validated", "httpStatus": None, "code": None}


def test_events_only_on_transitions():
    s = run(
        [
            Reason.VALIDATED,
            Reason.VALIDATED,
            Reason.INVALID_API_KEY,
            Reason.INVALID_API_KEY,
            Reason.QUOTA_EXCEEDED,
            Reason.VALIDATED,
        ]
    )
    events = [st.transition(a, b) for a, b in zip([None, *s[:-1]], s, strict=True)]
    assert events == [
        ("Normal", "Validated"),
        None,
        ("Warning", "ValidationFailed"),
        None,
        ("Warning", "ValidationFailed"),  # the failure reason changed
        ("Normal", "Validated"),
    ]


def test_suspended_status():
    s = st.suspended_status(run([Reason.VALIDATED])[0], 2, T0)
    assert ready(s)["status"] == "Unknown" and ready(s)["reason"] == "Suspended"
    assert s["observedGeneration"] == 2


def with_secrets(v: Verdict, *versions: tuple[str, str]) -> Verdict:
    import dataclasses

    from llmconn.model.verdict import ObservedSecret

    return dataclasses.replace(
        v, observed_secrets=tuple(ObservedSecret(n, rv) for n, rv in versions)
    )


def test_a_spec_change_is_judged_afresh_not_damped():
    # Ready at generation 1; the endpoint is then mistyped (generation 2): DNSFailure is a
    # transient reason, but nothing about generation 2 was ever proven.
    prev = st.next_status(
        None, verdict(Reason.VALIDATED), generation=1, requested_at=None, secret_grace_over=False
    )
    now = st.next_status(
        prev,
        verdict(Reason.DNS_FAILURE, 1),
        generation=2,
        requested_at=None,
        secret_grace_over=False,
    )
    assert ready(now)["status"] == "False" and ready(now)["reason"] == "DNSFailure"
    assert now["consecutiveFailures"] == 1 and now["observedGeneration"] == 2


def test_new_secret_data_is_judged_afresh_the_same_data_is_damped():
    first = with_secrets(verdict(Reason.VALIDATED), ("creds", "10"))
    prev = st.next_status(None, first, generation=1, requested_at=None, secret_grace_over=False)
    same = with_secrets(verdict(Reason.TIMEOUT, 1), ("creds", "10"))
    damped = st.next_status(prev, same, generation=1, requested_at=None, secret_grace_over=False)
    assert ready(damped)["status"] == "True"  # one flaky probe of what was proven
    rotated = with_secrets(verdict(Reason.TIMEOUT, 2), ("creds", "11"))
    fresh = st.next_status(
        damped, rotated, generation=1, requested_at=None, secret_grace_over=False
    )
    assert ready(fresh)["status"] == "False" and fresh["consecutiveFailures"] == 1


def test_could_not_judge_a_new_generation_is_unknown_not_the_old_ready():
    prev = st.next_status(
        None, verdict(Reason.VALIDATED), generation=1, requested_at=None, secret_grace_over=False
    )
    now = st.next_status(
        prev,
        verdict(Reason.RATE_LIMITED, 1),
        generation=2,
        requested_at=None,
        secret_grace_over=False,
    )
    assert ready(now)["status"] == "Unknown"


def test_the_patch_nulls_stale_keys_inside_nested_maps():
    prev = {"details": {"modelCount": "42", "rateLimitRemainingRequests": "9"}, "code": "x"}
    new = {"details": {"dnsMs": "3"}}
    patch = st.merge_patch(prev, new)
    assert patch == {
        "details": {"dnsMs": "3", "modelCount": None, "rateLimitRemainingRequests": None},
        "code": None,
    }


# --- model lifecycle: Deprecated, modelLifecycle, the retirement gauge's source -------------


def lifecycle_verdict(reason: Reason, stage: str | None, minute: int = 0) -> Verdict:
    life = (
        Lifecycle(stage, deprecated_at="2026-10-28T00:00:00Z", retires_at="2027-02-19T00:00:00Z")
        if stage
        else None
    )
    return Verdict(
        reason=reason,
        message=f"probe said {reason.value}",
        provider="anthropic",
        endpoint="https://api.anthropic.com",
        model="claude-3-7-sonnet-20250219",
        validation=Effective(ValidationType.MODEL, 300.0, 10.0, 3),
        finished_at=T0 + dt.timedelta(minutes=minute),
        latency_ms=12,
        lifecycle=life,
    )


def next_of(prev: dict | None, v: Verdict) -> dict:
    return st.next_status(prev, v, generation=1, requested_at=None, secret_grace_over=True)


def test_a_deprecated_model_stays_ready_with_a_deprecated_condition_counting_days():
    s = next_of(None, lifecycle_verdict(Reason.VALIDATED, "deprecated"))
    assert ready(s)["status"] == "True"
    assert s["modelLifecycle"] == {
        "stage": "deprecated",
        "deprecatedAt": "2026-10-28T00:00:00Z",
        "retiresAt": "2027-02-19T00:00:00Z",
    }
    cond = st.find(s["conditions"], "Deprecated")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "ModelDeprecated"
    # T0 is 2026-11-22T10:00Z: 88 whole days before 2027-02-19T00:00Z.
    assert "retires on 2027-02-19T00:00:00Z, in 88 days" in cond["message"]
    assert lifecycle.retirement_timestamp(s) == dt.datetime(2027, 2, 19, tzinfo=dt.UTC).timestamp()
    assert st.lifecycle_event(None, s) == ("Warning", "ModelDeprecated", cond["message"])
    # Once: the next probe that says the same emits nothing, and keeps the transition time.
    again = next_of(s, lifecycle_verdict(Reason.VALIDATED, "deprecated", minute=5))
    assert st.lifecycle_event(s, again) is None
    assert (
        st.find(again["conditions"], "Deprecated")["lastTransitionTime"]
        == cond["lastTransitionTime"]
    )


def test_a_probe_that_did_not_reach_the_model_keeps_its_lifecycle():
    s = next_of(None, lifecycle_verdict(Reason.VALIDATED, "deprecated"))
    timeout = next_of(s, lifecycle_verdict(Reason.TIMEOUT, None, minute=5))
    assert timeout["modelLifecycle"]["stage"] == "deprecated"
    assert st.find(timeout["conditions"], "Deprecated") is not None
    # A success that says nothing of a lifecycle: the model is active again (or was moved).
    active = next_of(timeout, lifecycle_verdict(Reason.VALIDATED, None, minute=10))
    assert "modelLifecycle" not in active
    assert st.find(active["conditions"], "Deprecated") is None
    assert lifecycle.retirement_timestamp(active) is None
    assert st.merge_patch(timeout, active)["modelLifecycle"] is None


def test_a_retired_model_is_failed_and_stalled_with_its_lifecycle():
    s = next_of(None, lifecycle_verdict(Reason.MODEL_RETIRED, "retired"))
    assert s["result"] == "failed" and ready(s)["status"] == "False"
    assert ready(s)["reason"] == "ModelRetired"
    assert st.find(s["conditions"], "Stalled")["status"] == "True"
    assert s["modelLifecycle"]["stage"] == "retired"
    assert st.find(s["conditions"], "Deprecated") is None


def test_an_overdue_retirement_says_so():
    life = {"stage": "deprecated", "retiresAt": "2026-11-01"}
    message = lifecycle.deprecation_message("m", life, T0)
    assert "overdue by 21 days" in message
