"""Status writes and what follows them: one conditional PATCH per status, metrics, and the
transition Events (rate-limited per connection).

A write holds only if the object is still at the resourceVersion its status was computed
from; on a conflict the object is read again and the status computed afresh (see `write`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from llmconn.controller.kube import Conflict, Kube, NotFound
from llmconn.controller.memory import Conn
from llmconn.controller.metrics import Metrics
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


class StatusWriter:
    def __init__(self, kube: Kube, metrics: Metrics) -> None:
        self.kube = kube
        self.metrics = metrics
        self._events: set[asyncio.Future[None]] = set()  # transition Events being posted
        self._planned = asyncio.Semaphore(PLANNED_WRITES)

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
            self._post(conn, *lifecycle)  # a model retires: said once, when first announced
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
        now = time.monotonic()
        if (
            type_ == "Warning"
            and st.ready_status(prev) == "False"
            and conn.last_warning is not None
            and now - conn.last_warning < WARNING_EVERY
        ):
            return  # only the reason changed while not Ready (transient reasons alternate)
        if type_ == "Warning":
            conn.last_warning = now
        self._post(conn, type_, reason, f"{verdict.reason.value}: {verdict.message}")

    def _post(self, conn: Conn, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background (best-effort; `flush` waits for them)."""
        task = asyncio.ensure_future(
            self.kube.post_event(
                {"metadata": conn.meta}, type_=type_, reason=reason, message=message
            )
        )
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def flush(self, timeout: float) -> None:
        """Let transition Events still being posted reach the API before shutdown."""
        if self._events:
            await asyncio.wait(set(self._events), timeout=timeout)
