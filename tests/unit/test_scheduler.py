"""The central schedule: order, supersession, run-again-after, and the bound on workers.

The scheduler runs on a clock the test holds (`clock=`), and the tests wait on what the work
reports (events), never on the passing of time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from llmconn.controller.scheduler import Scheduler


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_runs_in_due_order_and_supersedes():
    ran: list[str] = []
    done = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        ran.append(key)
        if len(ran) == 3:
            done.set()

    clock = Clock(0.0)
    s: Scheduler[str] = Scheduler(work, concurrency=1, clock=clock)
    s.at("c", 3.0)
    s.at("a", 1.0)
    s.at("b", 500.0)
    s.at("b", 2.0)  # replaces the plan at 500
    clock.now = 10.0  # all three are due; the old plan of "b" is not
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert ran == ["a", "b", "c"]
    assert len(s) == 0


async def test_a_plan_in_the_future_waits_for_its_time():
    ran: list[str] = []
    ran_now = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        ran.append(key)
        ran_now.set()

    clock = Clock()
    s: Scheduler[str] = Scheduler(work, concurrency=2, clock=clock)
    s.at("later", clock.now + 3600)
    s.now("now")  # the wake-up that makes the loop look at the heap again
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(ran_now.wait(), 5)
    task.cancel()
    assert ran == ["now"]
    assert len(s) == 1 and s.queue_depth == 0
    clock.now += 3600
    assert s.queue_depth == 1  # due now, at the time it was planned for


async def test_concurrency_is_bounded_and_now_while_running_runs_again():
    active = peak = 0
    counts: dict[int, int] = {}
    release = asyncio.Event()
    three_running = asyncio.Event()
    all_done = asyncio.Event()

    async def work(key: int, urgent: bool = False) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        counts[key] = counts.get(key, 0) + 1
        if active == 3:
            three_running.set()
        await release.wait()
        active -= 1
        if sum(counts.values()) == 11 and active == 0:
            all_done.set()

    s: Scheduler[int] = Scheduler(work, concurrency=3, clock=Clock())
    for k in range(10):
        s.now(k)
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(three_running.wait(), 5)
    assert s.in_flight == 3 and s.queue_depth == 7
    assert sorted(counts) == [0, 1, 2]  # in the order they were asked for
    s.now(0)  # 0 is running: it runs once more afterwards, not twice at once
    release.set()
    await asyncio.wait_for(all_done.wait(), 5)
    task.cancel()
    assert peak == 3
    assert counts[0] == 2 and all(counts[k] == 1 for k in range(1, 10))


async def test_cancel_and_drain():
    ran: list[str] = []
    started = asyncio.Event()
    gate = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        started.set()
        await gate.wait()
        ran.append(key)

    s: Scheduler[str] = Scheduler(work, concurrency=2, clock=Clock())
    s.now("x")
    s.now("y")
    s.cancel("y")
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    gate.set()
    await s.drain(timeout=2)
    assert ran == ["x"]
    assert len(s) == 0 and s.in_flight == 0


async def test_a_group_at_its_limit_does_not_hold_back_another_group():
    # Namespace "slow" has eight due keys whose work never ends; "fast" has one, due last.
    # With four workers and two per group, "fast" runs while "slow" still waits.
    started: list[tuple[str, int]] = []
    hang = asyncio.Event()
    fast_ran = asyncio.Event()
    all_started = asyncio.Event()

    async def work(key: tuple[str, int], urgent: bool = False) -> None:
        started.append(key)
        if len(started) == 9:
            all_started.set()
        if key[0] == "fast":
            fast_ran.set()
            return
        await hang.wait()

    clock = Clock()
    s: Scheduler[tuple[str, int]] = Scheduler(
        work, concurrency=4, group=lambda key: key[0], group_limit=2, clock=clock
    )
    for i in range(8):
        s.at(("slow", i), clock.now - 10 + i)  # all overdue, and ahead of "fast"
    s.at(("fast", 0), clock.now)
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(fast_ran.wait(), 5)
    assert [k for k in started if k[0] == "slow"] == [("slow", 0), ("slow", 1)]
    assert s.in_flight == 2 and s.queue_depth == 6  # the held keys still count as due
    hang.set()  # the slow ones end: the held keys run, in their order, two at a time
    await asyncio.wait_for(all_started.wait(), 5)
    task.cancel()
    assert [k for k in started if k[0] == "slow"] == [("slow", i) for i in range(8)]


async def test_a_held_key_that_is_cancelled_or_replanned_runs_once_at_its_new_time():
    # a1 holds group "a"'s only worker, so a2, a3 and a9 are due but held aside. a2 is then
    # cancelled and a3 replanned an hour ahead: when a1 ends, the next to run is a9 (due
    # after a2 and a3's old plans), and a3 waits for its new time.
    ran: list[str] = []
    a1_running = asyncio.Event()
    a9_ran = asyncio.Event()
    release = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        ran.append(key)
        if key == "a1":
            a1_running.set()
            await release.wait()
        if key == "a9":
            a9_ran.set()

    clock = Clock()
    now = clock.now
    s: Scheduler[str] = Scheduler(
        work, concurrency=4, group=lambda key: key[0], group_limit=1, clock=clock
    )
    s.at("a1", now - 3)
    s.at("a2", now - 2)
    s.at("a3", now - 1)
    s.at("a9", now)
    task = asyncio.create_task(s.run())
    # The loop sets the other three aside in the same step that starts a1.
    await asyncio.wait_for(a1_running.wait(), 5)
    s.cancel("a2")
    s.at("a3", now + 3600)  # replanned far ahead: the held entry is stale
    release.set()
    await asyncio.wait_for(a9_ran.wait(), 5)
    task.cancel()
    assert ran == ["a1", "a9"]
    assert len(s) == 1 and s.queue_depth == 0  # a3 at its new time, nothing else
    clock.now = now + 3600
    assert s.queue_depth == 1


async def test_a_backlog_in_one_group_is_set_aside_once_not_once_per_validation():
    # 2,000 keys of one namespace are due and its limit is one worker. Each key must be looked
    # at a bounded number of times (set aside once, taken back once), not once more every time
    # a worker of its group ends: that was quadratic, most of the operator's CPU at 10,000.
    n = 2000
    looked_at = 0
    done = asyncio.Event()
    ran: list[int] = []

    def group(key: int) -> str:
        nonlocal looked_at
        looked_at += 1
        return "ns"

    async def work(key: int, urgent: bool = False) -> None:
        ran.append(key)
        if len(ran) == n:
            done.set()

    clock = Clock()
    s: Scheduler[int] = Scheduler(work, concurrency=8, group=group, group_limit=1, clock=clock)
    for i in range(n):
        s.at(i, clock.now - n + i)
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(done.wait(), 30)
    task.cancel()
    assert ran == list(range(n))  # in due order, each once
    assert looked_at <= 6 * n, looked_at


def overdue_backlog(
    work: Callable[[str, bool], Awaitable[None]], *, concurrency: int, keys: int
) -> tuple[Scheduler[str], asyncio.Task[None]]:
    """A running scheduler with `keys` periodic keys p00, p01, ... overdue by up to a minute,
    in that order."""
    clock = Clock()
    s: Scheduler[str] = Scheduler(work, concurrency=concurrency, clock=clock)
    for i in range(keys):
        s.at(f"p{i:02}", clock.now - 60 + i)
    return s, asyncio.create_task(s.run())


async def test_a_key_asked_for_now_goes_ahead_of_an_overdue_backlog():
    # One worker, 50 periodic keys overdue by up to a minute, and "new" asked for now (a new
    # or changed connection): it runs second, right after the validation already running,
    # not after the backlog. Planned keys keep their order among themselves.
    ran: list[str] = []
    first_running = asyncio.Event()
    release = asyncio.Event()
    done = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        ran.append(key)
        if len(ran) == 1:
            first_running.set()
            await release.wait()
        if len(ran) == 52:
            done.set()

    s, task = overdue_backlog(work, concurrency=1, keys=51)
    await asyncio.wait_for(first_running.wait(), 5)
    s.now("new")
    release.set()
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert ran[:3] == ["p00", "new", "p01"]
    assert ran[2:] == [f"p{i:02}" for i in range(1, 51)]


async def test_planned_keys_leave_a_worker_to_urgent_ones():
    # Eight workers and a backlog of 20 periodic keys that all block: seven run, the eighth
    # worker stays free, and a key asked for now starts at once, while all seven still run.
    running: set[str] = set()
    peak_planned = 0
    release = asyncio.Event()
    seven = asyncio.Event()
    urgent_started = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        nonlocal peak_planned
        if key == "new":
            urgent_started.set()
            return
        running.add(key)
        peak_planned = max(peak_planned, len(running))
        if len(running) == 7:
            seven.set()
        await release.wait()
        running.discard(key)

    s, task = overdue_backlog(work, concurrency=8, keys=20)
    await asyncio.wait_for(seven.wait(), 5)
    for _ in range(10):
        await asyncio.sleep(0)  # room for an eighth planned key, were it allowed to start
    assert len(running) == 7 and s.in_flight == 7
    s.now("new")
    await asyncio.wait_for(urgent_started.wait(), 5)
    assert len(running) == 7  # none of the backlog had to end first
    release.set()
    while s.in_flight or len(s):
        await asyncio.sleep(0)
    task.cancel()
    assert peak_planned == 7


async def test_one_worker_serves_planned_keys_too():
    ran: list[str] = []
    clock = Clock()
    s: Scheduler[str] = Scheduler(lambda key, urgent: _append(ran, key), concurrency=1, clock=clock)
    s.at("a", clock.now - 1)
    s.at("b", clock.now - 2)
    task = asyncio.create_task(s.run())
    while len(ran) < 2:
        await asyncio.sleep(0)
    task.cancel()
    assert ran == ["b", "a"]


async def _append(ran: list[str], key: str) -> None:
    ran.append(key)


async def test_the_work_is_told_whether_its_key_was_urgent():
    seen: dict[str, bool] = {}
    both = asyncio.Event()

    async def work(key: str, urgent: bool) -> None:
        seen[key] = urgent
        if len(seen) == 2:
            both.set()

    clock = Clock()
    s: Scheduler[str] = Scheduler(work, concurrency=4, clock=clock)
    s.at("periodic", clock.now)
    s.now("changed")
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(both.wait(), 5)
    task.cancel()
    assert seen == {"changed": True, "periodic": False}


async def test_a_change_during_its_own_run_goes_ahead_of_the_backlog_urgent():
    # Two workers, five periodic keys overdue; "k" runs (a user's change) and another change
    # arrives meanwhile: k runs once more right after, before the backlog, and urgent (its
    # status write then goes ahead of periodic ones too). It used to wait behind all five.
    ran: list[tuple[str, bool]] = []
    k_running, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def work(key: str, urgent: bool) -> None:
        ran.append((key, urgent))
        if key == "k" and not k_running.is_set():
            k_running.set()
            await release.wait()
        elif key.startswith("p") and not release.is_set():
            await release.wait()  # the other worker is busy with the backlog meanwhile
        if len(ran) == 7:
            done.set()

    clock = Clock()
    s: Scheduler[str] = Scheduler(work, concurrency=2, clock=clock)
    s.now("k")
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(k_running.wait(), 5)
    for i in range(5):
        s.at(f"p{i}", clock.now - 60 + i)
    s.now("k")  # the user changes it again while it runs
    release.set()
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert ("k", True) in ran[1:3], ran  # the re-run comes next (beside p0 in flight), urgent
    assert ran.count(("k", True)) == 2


async def test_a_paused_group_waits_aside_while_the_others_run_and_goes_on_when_resumed():
    # Namespaced peering: a namespace whose own peering object says another replica is
    # active stands by; the other namespaces' keys go on.
    ran: list[str] = []
    ran_any = asyncio.Event()

    async def work(key: str, urgent: bool = False) -> None:
        ran.append(key)
        ran_any.set()

    clock = Clock()
    s: Scheduler[str] = Scheduler(work, concurrency=4, group=lambda key: key[0], clock=clock)
    s.pause_group("t")
    s.now("t1")
    s.now("v1")
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(ran_any.wait(), 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert ran == ["v1"]  # t1 is due, and waits aside
    ran_any.clear()
    s.resume_group("t")
    await asyncio.wait_for(ran_any.wait(), 5)
    task.cancel()
    assert ran == ["v1", "t1"]
