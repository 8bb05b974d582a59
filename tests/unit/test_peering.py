"""Kopf's peering rule as the scheduler follows it: stand by while a live peer outranks us."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmconn.controller.peering import follow, peering_paths, should_pause

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


def test_naive_lastseen_is_utc():
    status = {"b": {"priority": 20, "lifetime": 60, "lastseen": "2026-11-24T09:59:30"}}
    assert should_pause(status, "me", 10, NOW) is True


def test_peering_paths():
    assert peering_paths("p", ["a", "b"], clusterwide=False) == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings",
        "/apis/kopf.dev/v1/namespaces/b/kopfpeerings",
    ]
    assert peering_paths("p", [], clusterwide=True) == ["/apis/kopf.dev/v1/clusterkopfpeerings"]


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

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


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
