"""The central schedule: order, supersession, run-again-after, and the bound on workers."""

from __future__ import annotations

import asyncio

from llmconn.scheduler import Scheduler


async def test_runs_in_due_order_and_supersedes():
    ran: list[str] = []
    done = asyncio.Event()

    async def work(key: str) -> None:
        ran.append(key)
        if len(ran) == 3:
            done.set()

    s: Scheduler[str] = Scheduler(work, concurrency=1)
    loop = asyncio.get_running_loop().time
    s.at("c", loop() + 0.06)
    s.at("a", loop() + 0.02)
    s.at("b", loop() + 5.0)
    s.at("b", loop() + 0.04)  # replaces the plan at +5s
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert ran == ["a", "b", "c"]
    assert len(s) == 0


async def test_concurrency_is_bounded_and_now_while_running_runs_again():
    active = peak = 0
    counts: dict[int, int] = {}
    release = asyncio.Event()

    async def work(key: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        counts[key] = counts.get(key, 0) + 1
        await release.wait()
        active -= 1

    s: Scheduler[int] = Scheduler(work, concurrency=3)
    for k in range(10):
        s.now(k)
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.05)
    assert s.in_flight == 3 and s.queue_depth == 7
    s.now(0)  # 0 is running: it runs once more afterwards, not twice at once
    release.set()
    for _ in range(100):
        if sum(counts.values()) == 11:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert peak == 3
    assert counts[0] == 2 and all(counts[k] == 1 for k in range(1, 10))


async def test_cancel_and_drain():
    ran: list[str] = []
    gate = asyncio.Event()

    async def work(key: str) -> None:
        await gate.wait()
        ran.append(key)

    s: Scheduler[str] = Scheduler(work, concurrency=2)
    s.now("x")
    s.now("y")
    s.cancel("y")
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.02)
    task.cancel()
    gate.set()
    await s.drain(timeout=2)
    assert ran == ["x"]


async def test_a_group_at_its_limit_does_not_hold_back_another_group():
    # Namespace "slow" has eight due keys whose work never ends; "fast" has one, due last.
    # With four workers and two per group, "fast" runs while "slow" still waits.
    started: list[tuple[str, int]] = []
    hang = asyncio.Event()
    fast_ran = asyncio.Event()

    async def work(key: tuple[str, int]) -> None:
        started.append(key)
        if key[0] == "fast":
            fast_ran.set()
            return
        await hang.wait()

    s: Scheduler[tuple[str, int]] = Scheduler(
        work, concurrency=4, group=lambda key: key[0], group_limit=2
    )
    now = asyncio.get_running_loop().time()
    for i in range(8):
        s.at(("slow", i), now - 10 + i)  # all overdue, and ahead of "fast"
    s.at(("fast", 0), now)
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(fast_ran.wait(), 5)
    assert [k for k in started if k[0] == "slow"] == [("slow", 0), ("slow", 1)]
    assert s.in_flight == 2 and s.queue_depth == 6  # the held keys still count as due
    hang.set()  # the slow ones end: the held keys run, in their order, two at a time
    while len(started) < 9:
        await asyncio.sleep(0.01)
    task.cancel()
    assert [k for k in started if k[0] == "slow"] == [("slow", i) for i in range(8)]


async def test_a_held_key_that_is_cancelled_or_replanned_runs_once_at_its_new_time():
    ran: list[str] = []
    release = asyncio.Event()

    async def work(key: str) -> None:
        ran.append(key)
        if key == "a1":
            await release.wait()

    s: Scheduler[str] = Scheduler(work, concurrency=4, group=lambda key: key[0], group_limit=1)
    now = asyncio.get_running_loop().time()
    s.at("a1", now - 3)
    s.at("a2", now - 2)
    s.at("a3", now - 1)
    task = asyncio.create_task(s.run())
    while s.in_flight < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a2 and a3 are held behind a1
    s.cancel("a2")
    s.at("a3", now + 3600)  # replanned far ahead: the held entry is stale
    release.set()
    await asyncio.sleep(0.1)
    task.cancel()
    assert ran == ["a1"]
    assert len(s) == 1  # a3 at its new time, nothing else
