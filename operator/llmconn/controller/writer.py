"""Status writes and what follows them: one conditional PATCH per status, metrics, and the
transition Events (rate-limited per connection).

A write holds only if the object is still at the resourceVersion its status was computed
from; on a conflict the object is read again and the status computed afresh (see `write`).

Budgets for what lands in the API server: each namespace's status writes take a token of its
`WriteBudget` (budget.py) first, waiting when it is spent (never dropped; a new or changed
connection's first); and one connection posts at most one Event per EVENT_EVERY. Transitions
within that minute (a flapping connection) are held and told in one summary Event when it
ends, as Kubernetes' own event correlator folds repeated Events into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from llmconn.controller.budget import WriteBudget
from llmconn.controller.kube import Conflict, Kube, NotFound
from llmconn.controller.memory import Conn, HeldEvents, Key
from llmconn.controller.metrics import Metrics
from llmconn.model import limits
from llmconn.model import status as st
from llmconn.model.lifecycle import retirement_timestamp
from llmconn.model.verdict import Verdict

log = logging.getLogger("llmconn")

# Periodic validations' status writes in flight at most, of the API client's 16 connections.
# One takes milliseconds, so a few carry hundreds a second. When the API server slows down
# (while a burst of creates is validated again, say), the rest wait here, and a new or changed
# connection's write (urgent) neither queues behind them nor shares the API server with sixteen
# of them, as the scheduler keeps workers for urgent keys. Measured at 10,000 connections
# (reaction p99): 0.41-0.93 s with no limit, 0.22-0.27 s with 12, 0.04-0.12 s with 6; schedule
# lag p99 then rises from 0.1 s to 2 s, periodic validations waiting their turn
# (docs/development.md).
PLANNED_WRITES = 6
WRITE_ATTEMPTS = 3  # conditional writes of one status, each after reading the object again
WARNING_EVERY = 300.0  # seconds between Warning Events of one connection that stays not Ready
# One connection's Events: EVENT_BURST at once, then one per EVENT_EVERY seconds; what happens
# meanwhile is told in one Event then. (The operator only creates Events, one write each, and
# never updates a count.) Two at once: a new connection's verdict and its model's deprecation.
EVENT_EVERY = float(limits.EVENT_EVERY_SECONDS)
EVENT_BURST = limits.EVENT_BURST


class StatusWriter:
    def __init__(self, kube: Kube, metrics: Metrics, budget: WriteBudget | None = None) -> None:
        self.kube = kube
        self.metrics = metrics
        self.budget = budget if budget is not None else WriteBudget()
        self._events: set[asyncio.Future[None]] = set()  # transition Events being posted
        self._planned = asyncio.Semaphore(PLANNED_WRITES)
        # Connections with held Events, and the timer that posts their summary.
        self._held: dict[Key, tuple[Conn, asyncio.TimerHandle]] = {}

    async def write(
        self,
        conn: Conn,
        compute: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        urgent: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Write the status `compute` makes of the object's status, in one PATCH that holds
        only if the object is still at the resourceVersion that status came from. On a
        conflict (the object moved on: another writer, a newer spec, a replacement) the
        object is read again and the status computed afresh from it; a replaced object
        (another UID) is not this connection's any more. Returns (previous, written), or
        None when `compute` declined. An `urgent` write (a new or changed connection's) does
        not queue behind periodic ones (PLANNED_WRITES)."""
        for _attempt in range(WRITE_ATTEMPTS):
            prev = conn.status
            new = compute(prev)
            if new is None:
                return None
            # The namespace's budget first: its waiting writes hold none of the API client's.
            waited = await self.budget.take(conn.namespace, urgent=urgent)
            if waited > 0:
                self.metrics.write_delayed(conn.namespace, waited)
            try:
                async with contextlib.nullcontext() if urgent else self._planned:
                    obj = await self.kube.patch_status(
                        conn.namespace, conn.name, st.merge_patch(prev, new), conn.resource_version
                    )
            except Conflict:
                fresh = await self.kube.get_connection(conn.namespace, conn.name)
                if fresh is None or (fresh.get("metadata") or {}).get("uid") != conn.uid:
                    raise NotFound(f"{conn.namespace}/{conn.name}") from None
                conn.status = dict(fresh.get("status") or {})
                conn.resource_version = (fresh.get("metadata") or {}).get("resourceVersion")
                continue
            conn.status = dict(obj.get("status") or {})
            conn.resource_version = (obj.get("metadata") or {}).get("resourceVersion")
            return prev, new
        raise Conflict(f"{conn.namespace}/{conn.name}: the object kept changing")

    def observe(
        self, conn: Conn, prev: dict[str, Any], new: dict[str, Any], verdict: Verdict, took: float
    ) -> None:
        provider = verdict.provider
        self.metrics.validation(provider, verdict.result.value, verdict.reason.value, took)
        self.metrics.set_ready(conn.namespace, conn.name, provider, st.ready_status(new))
        self.metrics.last_validation(conn.namespace, conn.name, provider, time.time())
        self.metrics.model_retirement(conn.namespace, conn.name, retirement_timestamp(new))
        if (lifecycle := st.lifecycle_event(prev, new)) is not None:
            self._event(conn, *lifecycle)  # a model retires: said once, when first announced
        log.debug(
            "validated %s/%s: %s %s in %sms",
            conn.namespace,
            conn.name,
            verdict.result.value,
            verdict.reason.value,
            verdict.latency_ms,
        )
        change = st.transition(prev, new)
        if change is None:
            return
        type_, reason = change
        log.info(
            "%s/%s is now %s: %s",
            conn.namespace,
            conn.name,
            "Ready" if type_ == "Normal" else f"not Ready ({verdict.reason.value})",
            verdict.message,
        )
        message = f"{verdict.reason.value}: {verdict.message}"
        failure = verdict.reason.value if type_ == "Warning" else None
        now = time.monotonic()
        if conn.held is None and (
            type_ == "Warning"
            and st.ready_status(prev) == "False"
            and conn.last_warning is not None
            and now - conn.last_warning < WARNING_EVERY
        ):
            return  # only the reason changed while not Ready (transient reasons alternate)
        if type_ == "Warning":
            conn.last_warning = now
        self._event(conn, type_, reason, message, failure)

    def _event(
        self, conn: Conn, type_: str, reason: str, message: str, failure: str | None = None
    ) -> None:
        """Post an Event now if the connection's budget allows (one per EVENT_EVERY), else
        hold it for the summary posted when the budget allows again."""
        now = time.monotonic()
        tokens = _event_tokens(conn, now)
        if conn.held is None and tokens >= 1:
            conn.event_tokens = tokens - 1
            self._post(conn, type_, reason, message)
            return
        if conn.held is None:
            conn.held = HeldEvents(since=now)
            timer = asyncio.get_running_loop().call_later(
                (1 - tokens) * EVENT_EVERY, self._tell_held, conn.key
            )
            self._held[conn.key] = (conn, timer)
        conn.held.add(type_, reason, message, failure)
        self.metrics.event_held(conn.namespace)

    def _tell_held(self, key: Key) -> None:
        """The connection's Event budget allows again: one Event tells what was held."""
        entry = self._held.pop(key, None)
        if entry is None:
            return
        conn, _timer = entry
        held, conn.held = conn.held, None
        if held is None:
            return
        now = time.monotonic()
        conn.event_tokens = max(0.0, _event_tokens(conn, now) - 1)
        self._post(conn, *held.summary(now - held.since))

    def forget(self, key: Key) -> None:
        """The connection is gone from memory (deleted, replaced, standing by): nothing held
        about it is told."""
        entry = self._held.pop(key, None)
        if entry is not None:
            entry[0].held = None
            entry[1].cancel()

    def _post(self, conn: Conn, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background (best-effort; `flush` waits for them)."""
        self.metrics.event_posted(type_)
        task = asyncio.ensure_future(
            self.kube.post_event(
                {"metadata": conn.meta}, type_=type_, reason=reason, message=message
            )
        )
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def flush(self, timeout: float) -> None:
        """Tell what is held, and let transition Events still being posted reach the API
        before shutdown."""
        for key, (_conn, timer) in list(self._held.items()):
            timer.cancel()
            self._tell_held(key)
        if self._events:
            await asyncio.wait(set(self._events), timeout=timeout)


def _event_tokens(conn: Conn, now: float) -> float:
    """The connection's Events left now (refilled since it last spent one)."""
    if conn.event_tokens is None:
        tokens = float(EVENT_BURST)
    else:
        tokens = min(EVENT_BURST, conn.event_tokens + (now - conn.event_stamp) / EVENT_EVERY)
    conn.event_tokens, conn.event_stamp = tokens, now
    return tokens
