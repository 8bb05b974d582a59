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
