"""The per-namespace status-write budget (controller/budget.py): a token bucket per namespace
whose waiting writes are served in order, a new or changed connection's first."""

from __future__ import annotations

import asyncio

from llmconn.controller.budget import WriteBudget


async def test_the_burst_passes_at_once_and_the_next_write_waits_for_its_token() -> None:
    budget = WriteBudget(rate=50, burst=3)
    assert [await budget.take("team") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await budget.take("team") > 0  # the fourth waited for the bucket to refill


async def test_one_namespaces_spent_budget_does_not_slow_another() -> None:
    budget = WriteBudget(rate=0.001, burst=1)
    await budget.take("noisy")
    stuck = asyncio.ensure_future(budget.take("noisy"))
    await asyncio.sleep(0)
    assert await budget.take("quiet") == 0.0
    assert budget.waiting("noisy") == 1
    stuck.cancel()


async def test_a_users_change_is_served_before_the_periodic_backlog() -> None:
    budget = WriteBudget(rate=100, burst=1)
    await budget.take("team")
    order: list[str] = []

    async def write(name: str, urgent: bool) -> None:
        await budget.take("team", urgent=urgent)
        order.append(name)

    periodic = [asyncio.ensure_future(write(f"p{i}", False)) for i in range(5)]
    await asyncio.sleep(0)  # they queue first
    change = asyncio.ensure_future(write("change", True))
    await asyncio.gather(*periodic, change)
    assert order == ["change", "p0", "p1", "p2", "p3", "p4"]


async def test_a_cancelled_writer_spends_no_token_and_blocks_no_one() -> None:
    budget = WriteBudget(rate=100, burst=1)
    await budget.take("team")
    gone = asyncio.ensure_future(budget.take("team"))
    await asyncio.sleep(0)
    gone.cancel()
    await budget.take("team")  # served in the cancelled writer's place
    assert budget.waiting("team") == 0


async def test_rate_zero_is_no_budget() -> None:
    budget = WriteBudget(rate=0, burst=1)
    assert [await budget.take("team") for _ in range(100)] == [0.0] * 100


async def test_idle_full_buckets_are_dropped_when_there_are_many() -> None:
    budget = WriteBudget(rate=1e9, burst=1)
    for i in range(3000):
        await budget.take(f"ns-{i}")
    assert len(budget) <= 1025
