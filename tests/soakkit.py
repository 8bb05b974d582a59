"""Faults under load, judged: what `make soak` (tests/bench/soak.py) and its small e2e version
(tests/e2e/test_soak_faults.py) share.

`StatusLog` watches the connections of one namespace and records every status it sees,
reconnecting through API server restarts and a frozen etcd (and listing again after 410
Gone). `judge` reads that record, the namespace's Events and two readings of the write
counters, and says for one fault:

- recovery: seconds from the fault's end until every connection has a fresh, correct status:
  `lastValidationTime` at or after the fault's end, `Ready=True` and result `success` (the
  provider is healthy again, so that is the right verdict);
- regressions: a connection whose `lastValidationTime` went back, or vanished, from one
  status to the next (a status older than its last validation), over the whole run;
- duplicate Events: each Event posted in the window is matched to the status write it names
  (its `involvedObject.resourceVersion`: the operator posts it right after the write that
  made the transition). A duplicate is a second Event for one write, or an Event for a write
  that made no transition. Transitions without their Event are counted as missing, not as a
  failure (an operator killed between its write and its Event, the 5-minute Warning limit);
- writes: status PATCHes the API server received (whatever it answered) per validation the
  operator wrote, and whether that is a write storm (below).

A transition calls for an Event as docs/reference.md says: `Validated` when Ready turns True,
`ValidationFailed` when Ready turns False or its reason changes while it is False. A
connection's transitions are read from consecutive statuses on the watch; an Event naming a
version the watch skipped (it had to list again) is counted as unverified.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx2

from llmconn.controller.triggers import parse_time

API = "/apis/llmconn.dev/v1alpha1"
STORM_SHARE = 0.1  # PATCHes beyond one per validation tolerated: 10% (or the boundary)


@dataclass(frozen=True)
class Record:
    """One status of one connection, as the watch (or a list) delivered it."""

    seen: float  # wall time (time.time) when it arrived
    name: str
    uid: str
    rv: int
    validated: float | None  # status.lastValidationTime
    ready: str | None
    reason: str | None  # the Ready condition's reason
    result: str | None

    @property
    def fresh_and_right(self) -> bool:
        return self.ready == "True" and self.result == "success"


def _record(obj: Mapping[str, Any], seen: float) -> Record:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return Record(
        seen=seen,
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        rv=int(meta.get("resourceVersion") or 0),
        validated=parse_time(status.get("lastValidationTime")),
        ready=ready.get("status"),
        reason=ready.get("reason"),
        result=status.get("result"),
    )


class _Gone(Exception):
    pass


class StatusLog(threading.Thread):
    """Every status of the namespace's connections, in the order the API server gave them."""

    def __init__(self, client_args: Mapping[str, Any], namespace: str) -> None:
        super().__init__(daemon=True, name=f"status log {namespace}")
        self.client_args = dict(client_args)
        self.path = f"{API}/namespaces/{namespace}/llmconnections"
        self.records: list[Record] = []
        self.relists = 0  # lists after the first: a watch gap (410 Gone) was bridged
        self.reconnects = 0
        self._last_rv: dict[str, int] = {}
        self._halt = threading.Event()
        self._listed = threading.Event()

    def start_and_wait(self, timeout: float = 30) -> StatusLog:
        self.start()
        if not self._listed.wait(timeout):
            raise RuntimeError("the status log could not list the connections")
        return self

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        timeout = httpx2.Timeout(10.0, read=90.0)
        with httpx2.Client(**self.client_args, timeout=timeout) as client:
            rv: str | None = None
            while not self._halt.is_set():
                try:
                    if rv is None:
                        rv = self._list(client)
                    rv = self._watch(client, rv)
                except _Gone:
                    rv = None
                    self.relists += 1
                except (httpx2.HTTPError, ValueError):
                    self.reconnects += 1
                    self._halt.wait(0.5)  # the API server is away (restarting, or etcd frozen)

    def _keep(self, obj: Mapping[str, Any]) -> None:
        rec = _record(obj, time.time())
        if rec.rv > self._last_rv.get(rec.uid, 0):  # a list repeats what the watch gave
            self._last_rv[rec.uid] = rec.rv
            self.records.append(rec)

    def _list(self, client: httpx2.Client) -> str:
        cont: str | None = None
        while True:
            params = {"limit": "500", **({"continue": cont} if cont else {})}
            r = client.get(self.path, params=params)
            if r.status_code == 410:
                cont = None
                continue
            r.raise_for_status()
            body = r.json()
            for obj in body.get("items") or []:
                self._keep(obj)
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                self._listed.set()
                return str(body["metadata"]["resourceVersion"])

    def _watch(self, client: httpx2.Client, rv: str) -> str:
        params = {
            "watch": "1",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "60",
        }
        with client.stream("GET", self.path, params=params) as resp:
            if resp.status_code == 410:
                raise _Gone
            resp.raise_for_status()
            for line in resp.iter_lines():
                if self._halt.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ValueError(f"watch error: {obj.get('message')}")
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._keep(obj)
        return rv

    # --- what it recorded ----------------------------------------------------------------
    def snapshot(self) -> list[Record]:
        return list(self.records)

    def current(self) -> dict[str, Record]:
        """The latest status of each connection."""
        return {r.name: r for r in self.snapshot()}


def fresh_at(records: Iterable[Record], names: Iterable[str], since: float) -> dict[str, float]:
    """When each connection first showed a fresh, correct status (validated at or after
    `since`), by name; connections that have not yet are missing."""
    wanted, first = set(names), {}
    for r in records:
        if (
            r.name in wanted
            and r.name not in first
            and r.validated is not None
            and r.validated >= since
            and r.fresh_and_right
        ):
            first[r.name] = r.seen
    return first


def regressions(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Statuses whose lastValidationTime is older than (or lost since) the one before."""
    last: dict[str, float] = {}
    found = []
    for r in records:
        before = last.get(r.uid)
        if before is not None and (r.validated is None or r.validated < before):
            found.append({"name": r.name, "before": before, "after": r.validated, "rv": r.rv})
        if r.validated is not None:
            last[r.uid] = max(r.validated, before or r.validated)
    return found


def calls(records: Iterable[Record]) -> dict[tuple[str, int], tuple[str, float]]:
    """The statuses that call for an Event: (name, resourceVersion) -> (reason, when seen)."""
    state: dict[str, tuple[str | None, str | None]] = {}
    found: dict[tuple[str, int], tuple[str, float]] = {}
    for r in records:
        old = state.get(r.uid, (None, None))
        new = state[r.uid] = (r.ready, r.reason)
        if new == old:
            continue
        if r.ready == "True" and old[0] != "True":
            found[(r.name, r.rv)] = ("Validated", r.seen)
        elif r.ready == "False":
            found[(r.name, r.rv)] = ("ValidationFailed", r.seen)
    return found


@dataclass(frozen=True)
class EventCheck:
    """The Events posted in a window, each matched to the status write it names (its
    involvedObject.resourceVersion: the operator posts an Event right after the write that
    made the transition, naming the version it wrote)."""

    posted: dict[str, int]  # by reason
    transitions: dict[str, int]  # by reason: statuses seen in the window that call for one
    duplicates: list[dict[str, Any]]  # a second Event for one write, or one for no transition
    missing: int  # transitions in the window without their Event
    unverified: int  # Events naming a version the watch skipped (it listed again)


def check_events(
    events: Iterable[Mapping[str, Any]],
    records: Iterable[Record],
    start: float,
    end: float,
    *,
    watch_gaps: bool,
) -> EventCheck:
    called = calls(records)
    matched: set[tuple[str, int]] = set()
    seen_versions = {(r.name, r.rv) for r in records}
    posted: Counter[str] = Counter()
    duplicates, unverified = [], 0
    for ev in events:
        obj = ev.get("involvedObject") or {}
        key = (str(obj.get("name")), int(obj.get("resourceVersion") or 0))
        reason = str(ev.get("reason"))
        posted[reason] += 1
        if key in called and called[key][0] == reason and key not in matched:
            matched.add(key)
        elif key not in seen_versions and watch_gaps:
            unverified += 1
        else:
            why = "second Event for this write" if key in matched else "no transition"
            duplicates.append({"name": key[0], "rv": key[1], "reason": reason, "why": why})
    in_window = {k: v for k, v in called.items() if start <= v[1] <= end}
    return EventCheck(
        posted=dict(sorted(posted.items())),
        transitions=dict(sorted(Counter(reason for reason, _ in in_window.values()).items())),
        duplicates=duplicates,
        missing=sum(1 for k in in_window if k not in matched),
        unverified=unverified,
    )


def list_events(client: httpx2.Client, namespace: str) -> dict[str, dict[str, Any]]:
    """The namespace's Events about LLMConnections, by Event name."""
    found: dict[str, dict[str, Any]] = {}
    cont: str | None = None
    while True:
        params = {"fieldSelector": "involvedObject.kind=LLMConnection", "limit": "500"}
        if cont:
            params["continue"] = cont
        r = client.get(f"/api/v1/namespaces/{namespace}/events", params=params)
        r.raise_for_status()
        body = r.json()
        for ev in body.get("items") or []:
            found[ev["metadata"]["name"]] = ev
        cont = (body.get("metadata") or {}).get("continue")
        if not cont:
            return found


def posted(before: Mapping[str, Any], after: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The Events in `after` that were not in `before`."""
    return [ev for name, ev in after.items() if name not in before]


@dataclass(frozen=True)
class Writes:
    """Two readings of the counters, subtracted: status PATCHes the API server received, by
    HTTP code, and validations the operator wrote. `boundary` is how many writes can be in
    flight between the readings of the two counters (the operator's --concurrency)."""

    validations: int
    patches_by_code: dict[str, int]
    boundary: int

    @property
    def patches(self) -> int:
        return sum(self.patches_by_code.values())

    @property
    def per_validation(self) -> float | None:
        return round(self.patches / self.validations, 3) if self.validations else None

    @property
    def storm(self) -> bool:
        """More PATCHes than one per validation, beyond 10% (or the boundary, if larger)."""
        return self.patches - self.validations > max(self.boundary, STORM_SHARE * self.validations)


@dataclass
class Verdict:
    """One fault's result. `passed` is false when any check failed (`failures` says which)."""

    fault: str
    what: str
    started: float  # seconds since the run began
    ended: float
    deadline_s: float  # every connection fresh by then (from the fault's end), or it fails
    recovery_s: float | None  # fault end -> every connection fresh and right (None: never)
    first_fresh_s: float | None  # fault end -> the first fresh status
    not_fresh: int
    not_fresh_examples: list[str]
    regressions: int
    regression_examples: list[dict[str, Any]]
    events: dict[str, int]  # by reason, posted in the window
    transitions: dict[str, int]  # by reason, status transitions that call for an Event
    duplicate_events: int
    duplicate_examples: list[dict[str, Any]]
    missing_events: int
    unverified_events: int
    writes: dict[str, Any]
    operator_exits: int  # unexpected exits of the operator during the window
    healthy_after: bool
    extra: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def judge(
    *,
    fault: str,
    what: str,
    origin: float,
    start: float,
    end: float,
    window_end: float,
    deadline_s: float,
    names: Iterable[str],
    records: list[Record],
    events: list[dict[str, Any]],
    watch_gaps: bool,
    writes: Writes,
    operator_exits: int,
    healthy_after: bool,
    extra: Mapping[str, Any] | None = None,
) -> Verdict:
    """The checks for one fault that ran from `start` to `end` (wall times; `origin` is the
    run's start), with Events and writes counted until `window_end`."""
    names = sorted(names)
    first = fresh_at(records, names, end)
    stale = [n for n in names if n not in first]
    recovery = max(first.values()) - end if not stale else None
    back = regressions(records)
    ev = check_events(events, records, start, window_end, watch_gaps=watch_gaps)
    verdict = Verdict(
        fault=fault,
        what=what,
        started=round(start - origin, 1),
        ended=round(end - origin, 1),
        deadline_s=round(deadline_s, 1),
        recovery_s=None if recovery is None else round(recovery, 2),
        first_fresh_s=round(min(first.values()) - end, 2) if first else None,
        not_fresh=len(stale),
        not_fresh_examples=stale[:5],
        regressions=len(back),
        regression_examples=back[:5],
        events=ev.posted,
        transitions=ev.transitions,
        duplicate_events=len(ev.duplicates),
        duplicate_examples=ev.duplicates[:5],
        missing_events=ev.missing,
        unverified_events=ev.unverified,
        writes={
            "validations": writes.validations,
            "status_patches": writes.patches,
            "status_patches_by_code": writes.patches_by_code,
            "per_validation": writes.per_validation,
            "boundary": writes.boundary,
            "storm": writes.storm,
        },
        operator_exits=operator_exits,
        healthy_after=healthy_after,
        extra=dict(extra or {}),
    )
    if stale:
        verdict.failures.append(f"{len(stale)} connections without a fresh, correct status")
    elif recovery is not None and recovery > deadline_s:
        verdict.failures.append(f"recovery {recovery:.1f}s is over the {deadline_s:.1f}s allowed")
    if back:
        verdict.failures.append(f"{len(back)} statuses older than the one before")
    if ev.duplicates:
        verdict.failures.append(f"{len(ev.duplicates)} duplicate Events")
    if writes.storm:
        verdict.failures.append(f"write storm: {writes.patches} PATCHes for {writes.validations}")
    if operator_exits:
        verdict.failures.append(f"the operator exited {operator_exits} times on its own")
    if not healthy_after:
        verdict.failures.append("the operator's /healthz did not answer after the fault")
    return verdict


def table(verdicts: Iterable[Verdict]) -> str:
    """One line per fault."""
    head = (
        f"{'fault':<22} {'recovery':>9} {'allowed':>8} {'first':>6} {'stale':>5} "
        f"{'back':>4} {'events':>7} {'dups':>4} {'miss':>4} {'PATCH/val':>9} {'exits':>5}  result"
    )
    lines = [head, "-" * len(head)]
    for v in verdicts:
        rec = "never" if v.recovery_s is None else f"{v.recovery_s:.1f}s"
        first = "-" if v.first_fresh_s is None else f"{v.first_fresh_s:.1f}s"
        per = v.writes["per_validation"]
        lines.append(
            f"{v.fault:<22} {rec:>9} {v.deadline_s:>7.0f}s {first:>6} {v.not_fresh:>5} "
            f"{v.regressions:>4} {sum(v.events.values()):>7} {v.duplicate_events:>4} "
            f"{v.missing_events:>4} {'-' if per is None else per:>9} {v.operator_exits:>5}  "
            + ("ok" if v.passed else "FAIL: " + "; ".join(v.failures))
        )
    return "\n".join(lines)


@dataclass
class Harness:
    """What one fault's run needs to see: the namespace's statuses and Events, the write
    counters, and the operator (exits it made on its own, /healthz). `supervise` is called
    while waiting (to start a crashed operator again); `extra` is added to each verdict."""

    api: httpx2.Client
    namespace: str
    log: StatusLog
    names: list[str]
    writes: Callable[[], tuple[dict[str, int], int]]  # (status PATCHes by code, validations)
    boundary: int
    operator_exits: Callable[[], int]
    healthy: Callable[[], bool]
    supervise: Callable[[], None] = lambda: None
    extra: Callable[[], dict[str, Any]] = dict
    settle: float = 5.0
    origin: float = field(default_factory=time.time)

    def run(
        self,
        fault: str,
        what: str,
        inject: Callable[[], tuple[float, dict[str, Any]]],
        *,
        deadline_s: float,
        wait_s: float,
    ) -> Verdict:
        """`inject` makes the fault and returns (the wall time it ended, figures of its own).
        Then wait until every connection is fresh and right (at most `wait_s` seconds from
        the fault's end, so that a late recovery is still measured) and judge the window."""
        events_before = list_events(self.api, self.namespace)
        exits_before = self.operator_exits()
        start = time.time()
        end, extra = inject()
        self.supervise()
        codes0, done0 = self.writes()
        while time.time() < end + wait_s:
            self.supervise()
            if len(fresh_at(self.log.snapshot(), self.names, end)) == len(self.names):
                break
            time.sleep(0.5)
        codes1, done1 = self.writes()
        extra = {"recovery_wait_s": round(time.time() - end, 1), **extra, **self.extra()}
        time.sleep(self.settle)  # the Events of the last writes
        events_after = list_events(self.api, self.namespace)
        writes = Writes(
            validations=done1 - done0,
            patches_by_code={
                c: n - codes0.get(c, 0) for c, n in codes1.items() if n - codes0.get(c, 0)
            },
            boundary=self.boundary,
        )
        return judge(
            fault=fault,
            what=what,
            origin=self.origin,
            start=start,
            end=end,
            window_end=time.time(),
            deadline_s=deadline_s,
            names=self.names,
            records=self.log.snapshot(),
            events=posted(events_before, events_after),
            watch_gaps=self.log.relists > 0,
            writes=writes,
            operator_exits=self.operator_exits() - exits_before,
            healthy_after=self.healthy(),
            extra=extra,
        )


@contextlib.contextmanager
def status_log(client_args: Mapping[str, Any], namespace: str) -> Iterator[StatusLog]:
    log = StatusLog(client_args, namespace).start_and_wait()
    try:
        yield log
    finally:
        log.stop()
