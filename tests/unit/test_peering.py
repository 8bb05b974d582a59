"""Kopf's peering rule as the scheduler follows it: stand by while a live peer outranks us."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmconn.controller.peering import (
    MAX_LIFETIME,
    MAX_PRIORITY,
    follow,
    peering_paths,
    peering_scopes,
    repair,
    should_pause,
)

NOW = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict:
    seen = NOW - dt.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("others", "pause"),
    [
        ({}, False),
        ({"b": peer(5, 1)}, False),  # lower priority: we are active
        ({"b": peer(20, 1)}, True),  # higher and alive: stand by
        ({"b": peer(10, 1)}, True),  # the same priority: Kopf freezes both
        ({"b": peer(20, 61)}, False),  # higher but its keep-alive expired
        ({"b": peer(20, 5, lifetime=10)}, True),
        ({"b": peer(20, 11, lifetime=10)}, False),
        ({"b": {"priority": "x", "lastseen": "garbage"}}, False),  # unreadable: ignored
        ({"b": peer(5, 1), "c": peer(30, 2)}, True),
    ],
)
def test_should_pause(others, pause):
    status = {"me": peer(10, 0), **others}
    assert should_pause(status, "me", 10, NOW) is pause


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (peer(20, 1, lifetime=10**18), "lifetime"),  # past what a datetime can add
        (peer(20, 1, lifetime=int(MAX_LIFETIME) + 1), "lifetime"),
        (peer(20, 1, lifetime=-5), "lifetime"),
        ({**peer(20, 1), "lifetime": "nan"}, "lifetime"),
        (peer(10**30, 1), "priority"),
        (peer(MAX_PRIORITY + 1, 1), "priority"),
        ({**peer(20, 1), "lastseen": "9999-12-31T23:59:59+00:00"}, "future"),
        ({**peer(20, 1), "priority": True}, "number"),
        ("a string", "mapping"),
    ],
)
def test_an_absurd_peer_is_ignored_and_said(entry, why):
    said: list[tuple[str, str]] = []
    status = {"me": peer(10, 0), "b": entry}
    assert should_pause(status, "me", 10, NOW, lambda p, w: said.append((p, w))) is False
    assert len(said) == 1 and said[0][0] == "b" and why in said[0][1]


def test_the_largest_sane_priority_still_counts():
    assert should_pause({"b": peer(MAX_PRIORITY, 1)}, "me", 10, NOW) is True


def test_naive_lastseen_is_utc():
    status = {"b": {"priority": 20, "lifetime": 60, "lastseen": "2026-11-24T09:59:30"}}
    assert should_pause(status, "me", 10, NOW) is True


def test_peering_paths():
    assert peering_paths("p", ["a", "b"], clusterwide=False) == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings",
        "/apis/kopf.dev/v1/namespaces/b/kopfpeerings",
    ]
    assert peering_paths("p", [], clusterwide=True) == ["/apis/kopf.dev/v1/clusterkopfpeerings"]
    assert peering_scopes(["a"], clusterwide=False) == {
        "a": "/apis/kopf.dev/v1/namespaces/a/kopfpeerings"
    }
    assert peering_scopes([], clusterwide=True) == {None: "/apis/kopf.dev/v1/clusterkopfpeerings"}


# --- follow: the reconciler pauses and resumes with the verdict ----------------------------


class Peers:
    """The peering object's status, as a watch yields it; each change is one yield."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield {"status": await self.changes.get()}


class Target:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self, namespace: str | None = None) -> None:
        self.calls.append("pause" if namespace is None else f"pause {namespace}")

    def resume(self, namespace: str | None = None) -> None:
        self.calls.append("resume" if namespace is None else f"resume {namespace}")


def alive(priority: int) -> dict[str, Any]:
    return peer(priority, 0) | {"lastseen": dt.datetime.now(dt.UTC).isoformat()}


async def test_follow_pauses_and_resumes_but_never_resumes_a_replica_that_is_active() -> None:
    peers, target = Peers(), Target()
    task = asyncio.create_task(follow(peers, ["/p"], "llmconn", "me", 5, target))

    async def judged(status: dict[str, Any]) -> list[str]:
        await peers.changes.put(status)
        for _ in range(50):
            await asyncio.sleep(0)
        return list(target.calls)

    # First judgement: active. The reconciler started active: no resume (a full re-list).
    assert await judged({"me": alive(5)}) == []
    assert await judged({"me": alive(5), "other": alive(9)}) == ["pause"]
    assert await judged({"me": alive(5), "other": alive(1)}) == ["pause", "resume"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class PeersByPath:
    """Each collection's peering object, as its watch yields it."""

    def __init__(self) -> None:
        self.changes: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def queue(self, path: str) -> asyncio.Queue[dict[str, Any]]:
        return self.changes.setdefault(path, asyncio.Queue())

    async def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield {"status": await self.queue(path).get()}


async def spin() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_in_namespaced_mode_a_tenants_peering_object_pauses_its_namespace_only() -> None:
    peers, target = PeersByPath(), Target()
    scopes = peering_scopes(["tenant", "victim"], clusterwide=False)
    task = asyncio.create_task(follow(peers, scopes, "llmconn", "me", 5, target))
    await peers.queue(scopes["victim"]).put({"me": alive(5)})
    await peers.queue(scopes["tenant"]).put({"me": alive(5), "evil": alive(2**31)})
    await spin()
    assert target.calls == ["pause tenant"]
    await peers.queue(scopes["tenant"]).put({"me": alive(5)})
    await spin()
    assert target.calls == ["pause tenant", "resume tenant"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_follower_outlives_an_absurd_peer_and_says_so_once(caplog) -> None:
    peers, target = Peers(), Target()
    task = asyncio.create_task(follow(peers, ["/p"], "llmconn", "me", 5, target))
    forever = alive(9) | {"lifetime": 10**18}
    for _ in range(3):
        await peers.changes.put({"me": alive(5), "evil": forever, "boss": alive(10**30)})
        await spin()
    assert not task.done()  # an OverflowError ended it before
    assert target.calls == []
    said = [r.getMessage() for r in caplog.records if "ignoring the peer" in r.getMessage()]
    assert len(said) == 2 and any("'evil'" in m for m in said)
    # A sane peer with a higher priority is still heeded.
    await peers.changes.put({"me": alive(5), "evil": forever, "other": alive(9)})
    await spin()
    assert target.calls == ["pause"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class PeeringObjects:
    """The API as `repair` asks it: the peering object of each path, and the patches sent."""

    def __init__(self, statuses: dict[str, Any], fail: bool = False) -> None:
        self.statuses = statuses
        self.dropped: list[tuple[str, str, list[str]]] = []
        self.fail = fail

    async def get_peering(self, path: str, name: str) -> dict[str, Any] | None:
        if self.fail:
            raise ConnectionError("the API server is away")
        return {"status": self.statuses[path]} if path in self.statuses else None

    async def drop_peers(self, path: str, name: str, peers: list[str]) -> None:
        self.dropped.append((path, name, peers))


async def test_repair_removes_the_entries_kopf_cannot_read_and_keeps_the_replicas(caplog) -> None:
    objects = PeeringObjects(
        {
            "/a": {"me": alive(5), "other": alive(9), "forever": alive(9) | {"lifetime": 10**18}},
            "/b": {"me": alive(5)},
        }
    )
    await repair(objects, ["/a", "/b", "/missing"], "llmconn")
    assert objects.dropped == [("/a", "llmconn", ["forever"])]
    assert any("'forever'" in r.getMessage() for r in caplog.records)


async def test_repair_never_raises() -> None:
    await repair(PeeringObjects({}, fail=True), ["/a"], "llmconn")


async def test_the_follower_asks_for_a_repair_when_it_sees_an_absurd_entry() -> None:
    peers, target = Peers(), Target()
    asked: list[str] = []

    async def repair_path(path: str) -> None:
        asked.append(path)

    task = asyncio.create_task(
        follow(peers, ["/p"], "llmconn", "me", 5, target, repair_path=repair_path)
    )
    await peers.changes.put({"me": alive(5), "evil": alive(9) | {"lifetime": 10**18}})
    await spin()
    assert asked == ["/p"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
