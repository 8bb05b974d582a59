"""The soak's judgement (tests/soakkit.py) on made-up statuses and Events: each check finds
what it is there to find, so `make soak` and its e2e test can fail."""

from __future__ import annotations

from typing import Any

from soakkit import Record, Writes, check_events, fresh_at, judge, regressions


def rec(seen: float, rv: int, validated: float | None, ready: str, reason: str, name: str = "a"):
    result = "success" if ready == "True" and reason == "Validated" else "failed"
    return Record(seen, name, f"uid-{name}", rv, validated, ready, reason, result)


def event(rv: int, reason: str, name: str = "a") -> dict[str, Any]:
    return {"reason": reason, "involvedObject": {"name": name, "resourceVersion": str(rv)}}


# a: Ready, then InvalidAPIKey (False), then Ready again; each status at its own version.
FLAP = [
    rec(1.0, 10, 1.0, "True", "Validated"),
    rec(2.0, 11, 2.0, "False", "InvalidAPIKey"),
    rec(3.0, 12, 3.0, "True", "Validated"),
    rec(4.0, 13, 4.0, "True", "Validated"),  # a periodic validation: no transition
]


def test_one_event_per_transition_is_no_duplicate() -> None:
    events = [event(10, "Validated"), event(11, "ValidationFailed"), event(12, "Validated")]
    found = check_events(events, FLAP, 0.0, 10.0, watch_gaps=False)
    assert found.duplicates == []
    assert found.missing == 0
    assert found.transitions == {"Validated": 2, "ValidationFailed": 1}


def test_a_second_event_for_one_write_is_a_duplicate() -> None:
    events = [event(11, "ValidationFailed"), event(11, "ValidationFailed")]
    found = check_events(events, FLAP, 1.5, 2.5, watch_gaps=False)
    assert [d["why"] for d in found.duplicates] == ["second Event for this write"]


def test_an_event_for_a_write_without_a_transition_is_a_duplicate() -> None:
    found = check_events([event(13, "Validated")], FLAP, 3.5, 4.5, watch_gaps=False)
    assert [d["why"] for d in found.duplicates] == ["no transition"]


def test_an_event_the_operator_did_not_post_is_missing_not_duplicate() -> None:
    found = check_events([event(12, "Validated")], FLAP, 1.5, 3.5, watch_gaps=False)
    assert (found.duplicates, found.missing) == ([], 1)


def test_an_event_for_a_version_the_watch_skipped_is_unverified_only_after_a_gap() -> None:
    assert check_events([event(99, "Validated")], FLAP, 0, 9, watch_gaps=True).unverified == 1
    assert len(check_events([event(99, "Validated")], FLAP, 0, 9, watch_gaps=False).duplicates) == 1


def test_a_status_older_than_the_one_before_is_a_regression() -> None:
    went_back = [*FLAP, rec(5.0, 14, 3.5, "True", "Validated")]
    assert [r["after"] for r in regressions(went_back)] == [3.5]
    lost = [*FLAP, rec(5.0, 14, None, "True", "Validated")]
    assert len(regressions(lost)) == 1
    assert regressions(FLAP) == []


def test_fresh_means_validated_after_the_fault_with_the_right_verdict() -> None:
    statuses = [
        rec(5.0, 20, 4.0, "True", "Validated", "old"),  # written after the end, validated before
        rec(6.0, 21, 5.5, "False", "InvalidAPIKey", "wrong"),  # after, but not Ready
        rec(7.0, 22, 5.5, "True", "Validated", "ok"),
    ]
    assert fresh_at(statuses, ["old", "wrong", "ok"], 5.0) == {"ok": 7.0}


def test_more_patches_than_validations_beyond_the_margin_is_a_storm() -> None:
    assert not Writes(1000, {"200": 1090}, boundary=64).storm
    assert Writes(1000, {"200": 1000, "409": 200}, boundary=64).storm
    assert not Writes(10, {"200": 60}, boundary=64).storm  # within what the boundary explains


def test_judge_fails_a_fault_for_each_check() -> None:
    verdict = judge(
        fault="x",
        what="x",
        origin=0.0,
        start=1.5,
        end=2.5,
        window_end=10.0,
        deadline_s=0.1,
        names=["a", "b"],
        records=[*FLAP, rec(5.0, 14, 3.5, "True", "Validated")],
        events=[event(13, "Validated")],
        watch_gaps=False,
        writes=Writes(100, {"200": 300}, boundary=1),
        operator_exits=1,
        healthy_after=False,
    )
    assert verdict.not_fresh == 1  # b never had a status
    assert len(verdict.failures) == 6, verdict.failures
    assert not verdict.passed
