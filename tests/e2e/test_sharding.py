"""Shards on the real control plane: three operator processes, each with --shard-count 3 and
its own --shard-index, as the chart's StatefulSet runs them.

The loopback provider's request log is the record of validations: every connection has a
model of its own, and each validation asks for it once (GET /v1/models/<model>), so the
times of those requests are the times each connection was validated, whichever process did
it. Exactly once per interval means: between two validations of one connection lies about
one interval (the schedule jitters it by 10%), never about half of one (two shards on their
own schedules) and never two (nobody's).
"""

from __future__ import annotations

import itertools
import secrets as pysecrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opkit import Api, ControlledProvider, OperatorProcess, condition, manifest, secret, wait_for
from prometheus_client.parser import text_string_to_metric_families

from controlplane.cluster import ControlPlane
from llmconn.controller.peering import Shard
from servers.serve import serve

KEY = "sk-shards-" + pysecrets.token_hex(12)
INTERVAL = 6.0  # seconds: long enough for a loaded machine to keep to it, short for the test
CONNECTIONS = 18  # about six a shard
DOUBLE = 0.6 * INTERVAL  # validated again sooner than this: two shards validate it
MISSED = 1.5 * INTERVAL  # not validated again within this: no shard validates it


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[ControlledProvider, str]]:
    p = ControlledProvider(keys={KEY}, models=[model(i) for i in range(CONNECTIONS)])
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sharding-logs")


@pytest.fixture
def processes() -> Iterator[dict[int, OperatorProcess]]:
    """The shards running now, by index; whatever still runs at the end is stopped."""
    running: dict[int, OperatorProcess] = {}
    yield running
    for op in running.values():
        op.stop(signal.SIGKILL, timeout=10)


def model(i: int) -> str:
    return f"m-{i}"


class Fleet:
    """One namespace of connections and the shards validating them."""

    def __init__(
        self,
        cluster: ControlPlane,
        provider: tuple[ControlledProvider, str],
        logs: Path,
        running: dict[int, OperatorProcess],
    ) -> None:
        self.cluster, self.logs, self.running = cluster, logs, running
        self.provider, url = provider
        self.api = Api(cluster)
        self.ns = cluster.create_namespace("shards")
        spec = {
            "provider": "openai",
            "endpoint": url,
            "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
            "validation": {"interval": f"{INTERVAL:g}s"},
        }
        docs = [secret(self.ns, "creds", {"apiKey": KEY})]
        docs += [
            manifest(self.ns, model(i), {**spec, "model": model(i)}) for i in range(CONNECTIONS)
        ]
        cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        self.uids = {
            model(i): (self.api.conn(self.ns, model(i)) or {})["metadata"]["uid"]
            for i in range(CONNECTIONS)
        }

    def owned(self, index: int, count: int) -> set[str]:
        return {name for name, uid in self.uids.items() if Shard(index, count).owns(uid)}

    def shard(self, index: int, count: int) -> OperatorProcess:
        return OperatorProcess(
            self.cluster,
            self.logs,
            "-n",
            self.ns,
            "--shard-count",
            str(count),
            "--shard-index",
            str(index),
            name=f"shard-{index}-of-{count}",
        )

    def start(self, count: int, *indexes: int) -> None:
        """Start these shards side by side (a StatefulSet's Parallel pod management)."""
        ops = {i: self.shard(i, count) for i in indexes}
        self.running.update(ops)
        with ThreadPoolExecutor(len(ops)) as pool:
            for future in [pool.submit(op.start) for op in ops.values()]:
                future.result()

    def stop(self, index: int) -> None:
        """Stop a shard as Kubernetes stops a pod (SIGTERM); it must exit cleanly."""
        op = self.running.pop(index)
        assert op.stop() == 0, op.log()[-3000:]

    def roll(self, count: int, indexes: list[int]) -> None:
        """Replace these shards one at a time with ones of `count` shards, highest ordinal
        first, each stopped before its successor starts: a StatefulSet's rolling update."""
        for i in indexes:
            self.stop(i)
            self.start(count, i)

    def all_ready(self) -> None:
        def check() -> list[str]:
            waiting = [
                name
                for name in self.uids
                if condition(self.api.status(self.ns, name), "Ready").get("status") != "True"
            ]
            return [] if waiting else ["ready"]

        wait_for("every connection Ready", check, timeout=60)

    def validations(self) -> dict[str, list[float]]:
        """Each connection's validation times, from the provider's request log."""
        times: dict[str, list[float]] = {name: [] for name in self.uids}
        for t, path in list(self.provider.hits):
            name = path.removeprefix("/v1/models/")
            if name in times:
                times[name].append(t)
        return times

    def status_writes(self) -> int:
        return self.cluster.writes(self.ns, subresource="status")


def gaps(times: list[float], start: float, end: float) -> tuple[list[float], float]:
    """The gaps between validations that end inside [start, end], and the open one from the
    last validation to `end` (where a connection that nobody validates shows)."""
    closed = [b - a for a, b in itertools.pairwise(times) if start <= b <= end]
    before = [t for t in times if t <= end]
    return closed, end - (before[-1] if before else start)


def steady(fleet: Fleet, start: float, end: float) -> dict[str, list[float]]:
    """Gaps that break once-per-interval between `start` and `end`, by connection."""
    bad = {}
    for name, times in fleet.validations().items():
        closed, open_ = gaps(times, start, end)
        wrong = [g for g in closed if not DOUBLE <= g <= MISSED]
        if open_ > MISSED:
            wrong.append(open_)
        if wrong:
            bad[name] = [round(g, 2) for g in wrong]
    return bad


def exported(op: OperatorProcess, ns: str) -> set[str]:
    """The connections whose readiness this process exports: the ones it validates."""
    return {
        s.labels["name"]
        for fam in text_string_to_metric_families(op.metrics())
        for s in fam.samples
        if s.name == "llmconn_connection_ready" and s.labels.get("namespace") == ns
    }


def settle_for(seconds: float) -> None:
    """Let the schedule run (the assertions that follow are about what happened meanwhile)."""
    time.sleep(seconds)


def test_three_shards_validate_every_connection_exactly_once_per_interval(
    cluster: ControlPlane,
    provider: tuple[ControlledProvider, str],
    logs: Path,
    processes: dict[int, OperatorProcess],
) -> None:
    fleet = Fleet(cluster, provider, logs, processes)
    try:
        slices = [fleet.owned(i, 3) for i in range(3)]
        assert all(slices), slices  # 18 UIDs over 3 slices: an empty one is a broken hash
        fleet.start(3, 0, 1, 2)
        fleet.all_ready()
        settle_for(0.5)  # every first validation has written (the next is an interval away)
        writes, hits = fleet.status_writes(), sum(map(len, fleet.validations().values()))
        start = time.monotonic()
        settle_for(4 * INTERVAL)
        end = time.monotonic()
        assert steady(fleet, start + INTERVAL, end) == {}
        counts = {
            name: sum(start <= t <= end for t in ts) for name, ts in fleet.validations().items()
        }
        assert all(3 <= n <= 5 for n in counts.values()), counts  # four intervals, jittered
        # Each process validates its slice and no other connection.
        assert [exported(processes[i], fleet.ns) for i in range(3)] == slices
        for i in range(3):
            fleet.stop(i)
        # One status write per validation, whichever shard made it.
        total = sum(map(len, fleet.validations().values()))
        assert fleet.status_writes() - writes == total - hits
    finally:
        cluster.delete_namespace(fleet.ns)


def test_a_shard_removed_and_added_back_rebalances_within_one_interval(
    cluster: ControlPlane,
    provider: tuple[ControlledProvider, str],
    logs: Path,
    processes: dict[int, OperatorProcess],
) -> None:
    """As `helm upgrade --set sharding.shards=2` and back to 3 roll the StatefulSet: pod 2
    goes (comes), then pods 1 and 0 are replaced one at a time with the new shard count.
    While pods of both counts run, a connection may have two owners or none: at most one
    extra validation each, and once the roll is done every connection is validated within
    one interval and exactly once per interval from then on."""
    fleet = Fleet(cluster, provider, logs, processes)
    try:
        fleet.start(3, 0, 1, 2)
        fleet.all_ready()
        began = time.monotonic()
        settle_for(2 * INTERVAL)
        problems: dict[str, Any] = {"3 shards": steady(fleet, began + INTERVAL, time.monotonic())}

        def transition(label: str, change: Any) -> None:
            rolled_from = time.monotonic()
            change()
            done = time.monotonic()
            settle_for(3.2 * INTERVAL)
            # Within one interval (and the jitter) of the roll's end, everyone is validated...
            late = {
                name: round(min((t for t in ts if t > done), default=float("inf")) - done, 2)
                for name, ts in fleet.validations().items()
            }
            problems[f"{label}: first validation later than an interval"] = {
                name: wait for name, wait in late.items() if wait > MISSED
            }
            # ... then exactly once per interval, by the new shards alone ...
            problems[f"{label}: steady after"] = steady(
                fleet, done + 1.2 * INTERVAL, time.monotonic()
            )
            # ... and while the roll ran, at most one extra validation per connection.
            doubles = {
                name: n
                for name, ts in fleet.validations().items()
                if (n := sum(g < DOUBLE for g in gaps(ts, rolled_from, done + INTERVAL)[0])) > 1
            }
            problems[f"{label}: more than one extra validation"] = doubles

        def down() -> None:
            fleet.stop(2)
            fleet.roll(2, [1, 0])

        def up() -> None:
            fleet.start(3, 2)
            fleet.roll(3, [1, 0])

        transition("3 -> 2", down)
        assert {i: fleet.owned(i, 2) for i in range(2)} == {
            i: exported(processes[i], fleet.ns) for i in range(2)
        }
        transition("2 -> 3", up)
        assert {i: fleet.owned(i, 3) for i in range(3)} == {
            i: exported(processes[i], fleet.ns) for i in range(3)
        }
        assert {k: v for k, v in problems.items() if v} == {}
    finally:
        cluster.delete_namespace(fleet.ns)
