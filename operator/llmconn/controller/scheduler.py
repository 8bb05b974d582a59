"""One central schedule of due validations, feeding a bounded pool of workers.

A heap of (due time, key) instead of a task or timer per connection: 10,000 connections cost
10,000 heap entries and a handful of tasks, and the pool bounds probes in flight. Re-scheduling
a key supersedes its older entry (lazy deletion), so the heap never needs searching.

Two heaps, in fact: keys asked for `now` (new facts: a new or changed connection, a rotated
Secret, a request) go ahead of every planned key, however overdue the planned ones are. A
backlog of periodic validations delays periodic validations, never a user's change: planned
keys may hold all workers but a reserve (an eighth), so an urgent key never waits for one of
them to end. The work function is told how its key was dispatched (`work(key, urgent)`), so
what a run does next (its status write) can go ahead of planned keys' work too.

Keys belong to groups (the operator's: namespaces), and one group holds at most `group_limit`
workers: a due key whose group is at its limit waits aside, keeping its place in time, and the
next due key of another group runs. So one tenant's slow endpoints never hold every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
_Entry = tuple[float, int, K]  # (due, sequence, key): the sequence breaks ties, marks a plan

URGENT, PLANNED = 0, 1  # the heaps, in the order they are served


def urgent_reserve(concurrency: int) -> int:
    """Workers planned keys leave to urgent ones: an eighth, none when there is one worker."""
    return min(max(1, concurrency // 8), concurrency - 1)


class Scheduler(Generic[K]):
    def __init__(
        self,
        work: Callable[[K, bool], Awaitable[None]],
        *,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        on_lag: Callable[[float], None] | None = None,
        group: Callable[[K], Hashable] = lambda _key: None,
        group_limit: int | None = None,
        floor: Callable[[K], float] = lambda _key: 0.0,
    ) -> None:
        self._work = work
        self._clock = clock
        self._heaps: tuple[list[_Entry[K]], list[_Entry[K]]] = ([], [])  # URGENT, PLANNED
        self._due: dict[K, tuple[float, int]] = {}  # the live entry of each key
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._active = asyncio.Event()  # cleared while this replica stands by
        self._active.set()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[K, asyncio.Task[None]] = {}
        # Asked for while running: run once more right after, urgent (True) if a user's change
        # or request asked, planned (False) if its plan fell due.
        self._again: dict[K, bool] = {}
        self.concurrency = concurrency
        self._on_lag = on_lag  # told how late each validation starts against its plan
        self._group = group
        self._floor = floor  # the earliest time a key may run (a Retry-After, say)
        self._group_limit = group_limit or concurrency
        self._group_running: Counter[Hashable] = Counter()
        self._planned_limit = concurrency - urgent_reserve(concurrency)
        self._planned_running = 0
        # Due keys whose group was at its limit or paused, by group: heaps of (rank, heap entry).
        self._held: dict[Hashable, list[tuple[int, float, int, K]]] = {}
        self._paused_groups: set[Hashable] = set()

    # --- scheduling ----------------------------------------------------------------
    def at(self, key: K, due: float, *, urgent: bool = False) -> None:
        """Run `key` at monotonic time `due`, replacing any earlier plan for it; an `urgent`
        key goes ahead of every planned one once due."""
        entry = (due, next(self._seq))
        self._due[key] = entry
        heap = self._heaps[URGENT if urgent else PLANNED]
        heapq.heappush(heap, (*entry, key))
        if heap[0][2] == key:
            self._wake.set()

    def now(self, key: K) -> None:
        """Run as soon as a worker is free and the key's floor allows; if it is running, once
        more when it ends (at its floor then, which that run may have raised)."""
        if key in self._running:
            self._again[key] = True
            return
        self.at(key, max(self._clock(), self._floor(key)), urgent=True)

    def clear(self) -> None:
        """Forget every plan (running validations finish)."""
        self._due.clear()
        for heap in self._heaps:
            heap.clear()
        self._again.clear()
        self._held.clear()

    def pause(self) -> None:
        """Stop starting validations (a standby replica); those running finish."""
        self._active.clear()

    def resume(self) -> None:
        self._active.set()

    def pause_group(self, group: Hashable) -> None:
        """Stop starting `group`'s keys (its due ones wait aside); those running finish."""
        self._paused_groups.add(group)

    def resume_group(self, group: Hashable) -> None:
        """Start `group`'s keys again, the ones that fell due meanwhile first."""
        self._paused_groups.discard(group)
        for rank, due, seq, key in self._held.pop(group, []):
            if self._due.get(key) == (due, seq):
                heapq.heappush(self._heaps[rank], (due, seq, key))
        self._wake.set()

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)
        self._again.pop(key, None)

    def running(self, key: K) -> bool:
        return key in self._running

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queue_depth(self) -> int:
        """Validations already due but waiting for a worker."""
        now = self._clock()
        return sum(1 for due, _ in self._due.values() if due <= now)

    def __len__(self) -> int:
        return len(self._due)

    # --- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Dispatch due keys to workers until cancelled (running validations go on)."""
        while True:
            await self._active.wait()
            await self._slots.acquire()  # a free worker first, so due keys stay counted
            try:
                key, rank = await self._next_due()
            except BaseException:
                self._slots.release()
                raise
            if not self._active.is_set():  # paused while waiting: keep the key for later
                self._slots.release()
                self.at(key, self._clock(), urgent=rank == URGENT)
                continue
            self._group_running[self._group(key)] += 1
            if rank == PLANNED:
                self._planned_running += 1
            task = asyncio.create_task(self._run_one(key, rank), name=f"validate {key}")
            self._running[key] = task

    async def drain(self, timeout: float) -> None:
        """Let validations in flight finish (graceful shutdown: no half-written status);
        cancel what is still running after `timeout` seconds."""
        tasks = list(self._running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def _next_due(self) -> tuple[K, int]:
        while True:
            picked = self._pick()
            if picked is not None:
                return picked
            self._wake.clear()
            # Planned keys at their limit wait for a worker to end (a wake), not for a time.
            heads = [heap[0][0] for heap in self._heaps[: self._ranks_open()] if heap]
            timeout = (min(heads) - self._clock()) if heads else None
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
            # arrives as the event is set (the loop would then wait forever at shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _ranks_open(self) -> int:
        """How many heaps may give a key now: both, or the urgent one alone while planned
        keys hold all the workers they may."""
        return 2 if self._planned_running < self._planned_limit else 1

    def _pick(self) -> tuple[K, int] | None:
        """The next key to run now and its heap, urgent ones first; None if none may run
        yet."""
        now = self._clock()
        for rank, heap in enumerate(self._heaps[: self._ranks_open()]):
            while heap:
                due, seq, key = heap[0]
                if self._due.get(key) != (due, seq):
                    heapq.heappop(heap)  # superseded or cancelled
                    continue
                if due > now:
                    break
                heapq.heappop(heap)
                if key in self._running:
                    # Due while its last run goes on: once more when that ends. (A plan still
                    # in the future stays a plan: it is not pulled forward.)
                    del self._due[key]
                    self._again[key] = self._again.get(key, False) or rank == URGENT
                    continue
                group = self._group(key)
                if self._group_running[group] >= self._group_limit or group in self._paused_groups:
                    # Its group has all the workers it may have, or stands by: aside until
                    # one ends, or it resumes.
                    heapq.heappush(self._held.setdefault(group, []), (rank, due, seq, key))
                    continue
                del self._due[key]
                if self._on_lag is not None:
                    self._on_lag(now - due)
                return key, rank
        return None

    async def _run_one(self, key: K, rank: int) -> None:
        try:
            await self._work(key, rank == URGENT)
        finally:
            self._running.pop(key, None)
            if rank == PLANNED:
                self._planned_running -= 1
            group = self._group(key)
            self._group_running[group] -= 1
            if not self._group_running[group]:
                del self._group_running[group]
            self._release_held(group)
            self._wake.set()
            self._slots.release()
            if key in self._again:
                # A change that arrived during the run goes ahead of the backlog, as it would
                # have had the key been idle.
                urgent = self._again.pop(key)
                self.at(key, max(self._clock(), self._floor(key)), urgent=urgent)

    def _release_held(self, group: Hashable) -> None:
        """One worker of `group` ended: its earliest live held key goes back to the heap. Only
        one: putting them all back would move each one aside again at once, which costs the
        whole backlog on every validation (10,000 keys in one namespace: most of the CPU)."""
        if group in self._paused_groups:
            return
        held = self._held.get(group)
        while held:
            rank, due, seq, key = heapq.heappop(held)
            if self._due.get(key) == (due, seq):  # else superseded or cancelled: dropped
                heapq.heappush(self._heaps[rank], (due, seq, key))
                break
        if not held:
            self._held.pop(group, None)
