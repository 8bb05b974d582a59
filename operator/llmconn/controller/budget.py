"""Per-namespace budgets for what lands in the API server.

`WriteBudget` is a token bucket per namespace for status writes: `rate` writes a second
sustained, `burst` at once (so a namespace's own creation burst is not slowed). A write past
the budget waits for its token; it is never dropped. Waiting writes of a namespace are served
in order, a new or changed connection's (urgent) before every periodic one, so a user's change
waits for the next token at most, never behind its namespace's backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from llmconn.model.limits import NAMESPACE_WRITE_BURST, NAMESPACE_WRITE_RATE

DEFAULT_WRITE_RATE = float(NAMESPACE_WRITE_RATE)  # status writes a second, per namespace
DEFAULT_WRITE_BURST = NAMESPACE_WRITE_BURST  # status writes at once, per namespace
MAX_IDLE_BUCKETS = 1024  # full, idle buckets kept before they are dropped


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    urgent: deque[asyncio.Future[None]] = field(default_factory=deque)
    planned: deque[asyncio.Future[None]] = field(default_factory=deque)
    dispenser: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self.urgent) + len(self.planned)


class WriteBudget:
    """Token buckets by group (the operator's: namespaces). `rate` 0 means no budget."""

    def __init__(
        self,
        rate: float = DEFAULT_WRITE_RATE,
        burst: int = DEFAULT_WRITE_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    def _refill(self, bucket: _Bucket) -> None:
        now = self._clock()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now

    async def take(self, group: Hashable, *, urgent: bool = False) -> float:
        """Wait for one write of `group`'s budget; returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(group)
        if bucket is None:
            if len(self._buckets) >= MAX_IDLE_BUCKETS:
                self._prune()
            bucket = self._buckets[group] = _Bucket(float(self.burst), self._clock())
        self._refill(bucket)
        ahead = bucket.urgent if urgent else bucket.waiting
        if not ahead and bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        started = self._clock()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (bucket.urgent if urgent else bucket.planned).append(waiter)
        if bucket.dispenser is None or bucket.dispenser.done():
            bucket.dispenser = asyncio.create_task(self._dispense(bucket))
        await waiter
        return self._clock() - started

    async def _dispense(self, bucket: _Bucket) -> None:
        """Hand out `bucket`'s tokens to its waiters as they refill, urgent ones first."""
        while bucket.waiting:
            self._refill(bucket)
            if bucket.tokens < 1:
                await asyncio.sleep((1 - bucket.tokens) / self.rate)
                continue
            queue = bucket.urgent or bucket.planned
            waiter = queue.popleft()
            if waiter.done():  # its writer was cancelled: no token spent
                continue
            bucket.tokens -= 1
            waiter.set_result(None)

    def _prune(self) -> None:
        """Drop the buckets nobody waits on that have refilled (they hold nothing)."""
        for group, bucket in list(self._buckets.items()):
            self._refill(bucket)
            if not bucket.waiting and bucket.tokens >= self.burst:
                del self._buckets[group]

    def __len__(self) -> int:
        """Namespaces with a bucket."""
        return len(self._buckets)

    def waiting(self, group: Hashable) -> int:
        bucket = self._buckets.get(group)
        return bucket.waiting if bucket is not None else 0
