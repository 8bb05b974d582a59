"""The operator's core: which connection to validate when, and one status write per verdict.

Kopf's watch of the connections hands each event's object to `connection_event` (through
handlers.py and the engine), and the Secret watch (watches.py) hands Secret metadata to the
Secret cache; they only update memory and the schedule, and read a referenced Secret whose
resourceVersion moved. Validations run from
the scheduler's bounded pool, call the plain `validate()` core, and write the status in
exactly one PATCH. The operator's own writes come back as MODIFIED events and change nothing
here: a validation is triggered by a new generation, a new
`llmconn.dev/validate-requested-at` value, changed Secret data, or the interval, never by a
status.

Its length: it is the one owner of connection state and the sequence of I/O around a
validation (events in, schedule, probe, conditional write). Its decisions are pure functions
in triggers.py; memory, the status writer and the Secret cache are modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Protocol

import httpx2
import pydantic

from llmconn.controller import triggers as tr
from llmconn.controller.budget import WriteBudget
from llmconn.controller.kube import Conflict, Kube, NotFound, ServiceAccountTokens
from llmconn.controller.memory import (
    Conn,
    Key,
    Unwritten,
    digest,
    first_error,
    invalid_verdict,
    observed_rv,
)
from llmconn.controller.metrics import Metrics
from llmconn.controller.peering import Shard
from llmconn.controller.scheduler import Scheduler
from llmconn.controller.secretcache import SecretCache
from llmconn.controller.writer import StatusWriter
from llmconn.model import status as st
from llmconn.model.lifecycle import retirement_timestamp
from llmconn.model.reasons import MISSING_REFERENCE, Reason
from llmconn.model.spec import LLMConnectionSpec, ValidationType
from llmconn.model.verdict import (
    Defaults,
    Effective,
    SecretData,
    SecretSource,
    TokenSource,
    Verdict,
    effective,
)
from llmconn.net.pool import TENANT, ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate

log = logging.getLogger("llmconn")

REQUESTED_AT = tr.REQUESTED_AT
# A new connection gets Ready=Unknown, Reconciling=True at once unless its first verdict is
# already there: a GitOps health check sees "in progress" from the first moment, never a
# status-less object it could call current. (At most two writes for a new connection.)
PENDING_AFTER = 0.0
RETRY_API = 10.0  # seconds before retrying a validation whose Kubernetes call failed
MAX_WRITE_BACKOFF = 300.0  # a kept verdict's write is retried at most this far apart
# A missing ServiceAccount is asked for this often during the grace: the operator may mint
# tokens but not watch ServiceAccounts, so nothing tells it when one appears.
SERVICE_ACCOUNT_POLL = 10.0
# UIDs of objects known to be gone (deleted, or replaced by a newer object of the same name),
# kept so that their late events (Kopf orders events per UID only) are not taken for a
# replacement of the replacement.
GONE_KEPT = 4096


class Validator(Protocol):
    """`llmconn.validation.validate.validate`, or a stand-in in tests."""

    def __call__(
        self,
        spec: LLMConnectionSpec,
        secrets: SecretSource,
        pool: ClientPool,
        defaults: Defaults,
        *,
        tokens: TokenSource | None = None,
    ) -> Awaitable[Verdict]: ...


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        pool: ClientPool,
        defaults: Defaults,
        metrics: Metrics,
        *,
        concurrency: int = 32,
        namespace_concurrency: int | None = None,
        shard: Shard | None = None,
        validator: Validator = validate,
        write_budget: WriteBudget | None = None,
    ) -> None:
        self.kube = kube
        self.validator = validator
        self.pool = pool
        self.defaults = defaults
        self.metrics = metrics
        self.shard = shard or Shard()
        self.conns: dict[Key, Conn] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self.secret_cache = SecretCache(kube, self._secret_changed)
        self.writer = StatusWriter(kube, metrics, write_budget)
        self.scheduler: Scheduler[Key] = Scheduler(
            self._work,
            concurrency=concurrency,
            on_lag=metrics.schedule_lag,
            # One namespace's slow endpoints must not hold every worker.
            group=_namespace,
            group_limit=namespace_concurrency or default_namespace_concurrency(concurrency),
            floor=self._floor,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Connections whose verdict waits for a write the API server did not take: written
        # as soon as another write succeeds (it is back), not after their backoff.
        self._kept: set[Key] = set()

    # --- watch events (fast: memory and schedule only) --------------------------------
    def connection_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """One watch event (type None: an object of a list, at a start or a resume). While
        this replica stands by, Kopf's stream is paused and brings none; one that comes as the
        replica turns goes to memory and the schedule, which waits for `resume`."""
        seen = tr.observe(event_type, body)
        if seen.uid in self._gone:
            return  # a late event of an object that is gone
        if seen.deleted:
            self._bury(seen.uid)
        conn = self.conns.get(seen.key)
        if conn is not None and tr.created_before(seen, conn.created):
            self._bury(seen.uid)  # the tracked object replaced this one: it is gone
            return
        known = conn.known if conn is not None else None
        sighting = tr.sighting(known, seen, self.shard.owns(seen.uid))
        if sighting is tr.Sighting.IGNORE:
            return
        if sighting is tr.Sighting.FORGET:
            self._forget(seen.key)
            return
        if sighting is tr.Sighting.NEW:
            if conn is not None:
                self._forget(seen.key)  # replaced: the old object's state goes with it
                if conn.created and conn.created < seen.created:
                    self._bury(conn.uid)  # by a newer object (in the same second: unknown)
            conn = Conn(namespace=seen.namespace, name=seen.name, uid=seen.uid)
            conn.created = seen.created
            conn.seen_at = time.monotonic()
            self.conns[seen.key] = conn
            self.metrics.set_connections(len(self.conns))
            known = None
        assert conn is not None
        if sighting in (tr.Sighting.NEW, tr.Sighting.SPEC):
            self._set_spec(conn, seen)
        # Memory follows the object: the status and resourceVersion are what the next write
        # is based on (and conditional on).
        conn.status, conn.resource_version = dict(seen.status), seen.resource_version
        conn.requested_at = seen.requested_at
        conn.handled_generation, conn.handled_requested_at = tr.handled(known, seen)
        if sighting is tr.Sighting.NEW:
            self._export_ready(conn)
        handled_generation, handled_requested_at = tr.covered(
            conn.covering, conn.handled_generation, conn.handled_requested_at, seen
        )
        action = tr.action(
            seen,
            first_sight=sighting is tr.Sighting.NEW,
            handled_generation=handled_generation,
            handled_requested_at=handled_requested_at,
            suspended=conn.spec is not None and conn.spec.suspend,
        )
        if action is tr.Action.VALIDATE:
            self._trigger(conn)
        elif action is tr.Action.RESUME:
            self._resume(conn)
        elif action is tr.Action.SUSPEND:
            self.scheduler.cancel(seen.key)
            conn.unwritten = None
            if not tr.suspended_written(conn.status, conn.generation):
                self.scheduler.now(seen.key)  # writes the Suspended status once

    def _bury(self, uid: str) -> None:
        if uid:
            self._gone[uid] = None
            if len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)

    def _secret_changed(self, skey: Key, data: SecretData | None) -> None:
        """A referenced Secret has new data (None: it is gone): re-validate the connections
        whose values changed."""
        for key in list(self.secret_cache.users.get(skey, ())):
            conn = self.conns.get(key)
            if conn is None or conn.spec is None or conn.spec.suspend:
                continue
            new = digest(conn.spec, skey[1], data)
            old = conn.secret_digests.get(skey[1])
            rv_used = data is not None and observed_rv(conn, skey[1]) == data.resource_version
            if tr.secret_changed(old, new, rv_used):
                log.info("Secret %s/%s changed: re-validating %s", skey[0], skey[1], key[1])
                conn.not_before = 0.0  # new data: a provider's Retry-After was about the old
                if old is not None:  # else the probe in flight may have read this data already
                    conn.facts += 1
                self._trigger(conn)
            elif old is None:
                conn.secret_digests[skey[1]] = new  # what the last probe (before a restart) used

    # --- scheduling --------------------------------------------------------------------
    def _trigger(self, conn: Conn) -> None:
        """New facts (spec, request, Secret data): validate at once, or at the Retry-After
        floor (the scheduler's `floor`); a verdict not yet written is about the old facts."""
        conn.unwritten = None
        self.scheduler.now(conn.key)

    def _floor(self, key: Key) -> float:
        conn = self.conns.get(key)
        return conn.not_before if conn is not None else 0.0

    def _resume(self, conn: Conn) -> None:
        """First sight of a connection validated before (a start, a resume, a re-list):
        continue its schedule from status.lastValidationTime."""
        wait = tr.resume_wait(
            tr.parse_time(conn.status.get("lastValidationTime")),
            self._effective(conn).interval,
            time.time(),
        )
        if wait is not None:
            self.scheduler.at(conn.key, time.monotonic() + wait)

    def _plan_next(self, conn: Conn, verdict: Verdict, facts: int) -> None:
        interval = verdict.validation.interval
        # A provider's Retry-After was about the facts the verdict began with: newer ones
        # (a fixed spec, a rotated key) are validated without waiting for it.
        floor = tr.retry_floor(verdict.retry_after, interval) if facts == conn.facts else 0.0
        conn.not_before = time.monotonic() + floor if floor else 0.0
        grace_left = poll = None
        if verdict.reason in MISSING_REFERENCE:
            grace_left = conn.generation_since + self.defaults.missing_secret_grace - time.time()
        if verdict.reason is Reason.SERVICE_ACCOUNT_NOT_FOUND:
            poll = SERVICE_ACCOUNT_POLL  # no watch reports its creation
        wait = tr.next_wait(interval=interval, retry_after=floor, grace_left=grace_left, poll=poll)
        if wait is not None:
            self.scheduler.at(conn.key, time.monotonic() + wait)

    def _effective(self, conn: Conn) -> Effective:
        if conn.spec is not None:
            return effective(conn.spec, self.defaults)
        return Effective(
            type=ValidationType.CONNECTIVITY,
            interval=self.defaults.interval,
            timeout=self.defaults.timeout,
            failure_threshold=self.defaults.failure_threshold,
        )

    def _set_spec(self, conn: Conn, seen: tr.Observed) -> None:
        """A new generation (or first sight): parse the spec once, start afresh."""
        for name in conn.secret_names:
            self.secret_cache.unuse((conn.namespace, name), conn.key)
        conn.generation = seen.generation
        conn.generation_since = time.time()  # the missing-Secret grace counts from here
        conn.not_before, conn.unwritten = 0.0, None
        conn.facts += 1
        try:
            conn.spec, conn.spec_error, conn.spec_invalid = parse_spec(seen.spec), None, None
        except (pydantic.ValidationError, ValueError) as exc:
            conn.spec, conn.spec_error = None, first_error(exc)
            # What its status names, not the whole spec (which may be 128 KiB of headers).
            conn.spec_invalid = {
                k: seen.spec[k] for k in ("provider", "endpoint", "model") if k in seen.spec
            }
        for name in conn.secret_names:
            self.secret_cache.use((conn.namespace, name), conn.key)
        conn.secret_digests.clear()

    def _forget(self, key: Key, uid: str | None = None) -> None:
        """Drop a connection (only the one with `uid`, when given)."""
        conn = self.conns.get(key)
        if conn is None or (uid is not None and conn.uid != uid):
            return
        del self.conns[key]
        self.scheduler.cancel(key)
        self.writer.forget(key)
        for name in conn.secret_names:
            self.secret_cache.unuse((conn.namespace, name), key)
        self.metrics.forget(*key)
        self.metrics.set_connections(len(self.conns))

    def _export_ready(self, conn: Conn) -> None:
        """The ready gauge from the status as written, at first sight (after a restart a
        connection has its series before its next validation) and on suspend."""
        if conn.status.get("conditions"):
            provider = conn.spec.provider if conn.spec is not None else ""
            self.metrics.set_ready(
                conn.namespace, conn.name, provider, st.ready_status(conn.status)
            )
            retires = retirement_timestamp(conn.status)
            self.metrics.model_retirement(conn.namespace, conn.name, retires)

    # --- one validation --------------------------------------------------------------
    async def _work(self, key: Key, urgent: bool) -> None:
        """One run of `key`; `urgent` (a new or changed connection, a request, new Secret
        data): its status write goes ahead of periodic ones' as its run did."""
        conn = self.conns.get(key)
        if conn is None:
            return
        try:
            if conn.spec is not None and conn.spec.suspend:
                await self._write_suspended(conn, urgent)
            elif conn.unwritten is not None and conn.unwritten.facts == conn.facts:
                await self._write_verdict(conn, conn.unwritten, urgent)  # its write failed before
            else:
                await self._validate(conn, urgent)
        except NotFound:
            self._forget(key, conn.uid)  # deleted or replaced mid-probe: nothing to write
            self._bury(conn.uid)
        except (httpx2.HTTPError, Conflict) as exc:
            # The API server is unreachable or refused the write (a restart, say). A verdict
            # is kept and only its write is tried again, with a capped backoff: probing again
            # would spend an Inference connection's tokens on every retry.
            retry = RETRY_API
            if conn.unwritten is not None:
                retry = min(RETRY_API * 2**conn.write_failures, MAX_WRITE_BACKOFF)
                conn.write_failures += 1
                self._kept.add(key)
            log.warning(
                "could not reach the API server for %s/%s (%s); retrying in %.0fs",
                *key,
                type(exc).__name__,
                retry,
            )
            self.scheduler.at(key, time.monotonic() + retry * random.uniform(1, 1.5))
        except Exception:
            # Never let one connection take the operator down; try again later.
            log.exception("validation of %s/%s failed unexpectedly", *key)
            self.scheduler.at(key, time.monotonic() + (self._effective(conn).interval or 60.0))

    async def _validate(self, conn: Conn, urgent: bool) -> None:
        generation, requested_at, facts = conn.generation, conn.requested_at, conn.facts
        conn.covering = (generation, requested_at)
        try:
            await self._validate_covered(conn, urgent, generation, requested_at, facts)
        finally:
            conn.covering = None

    async def _validate_covered(
        self, conn: Conn, urgent: bool, generation: int, requested_at: str | None, facts: int
    ) -> None:
        source = RecordingSecrets(self.secret_cache, conn)
        started = time.perf_counter()
        probe = asyncio.ensure_future(self._verdict(conn, source))
        try:
            if not conn.status.get("conditions"):
                # A new connection: show Reconciling if the first probe takes a while.
                done, _ = await asyncio.wait({probe}, timeout=PENDING_AFTER)
                if not done:
                    await self.writer.write(
                        conn,
                        lambda prev: (
                            None
                            # already judged, here or (a newer spec) by another replica
                            if prev.get("conditions") or _observed(prev) > generation
                            else {**prev, **st.pending_status(generation, _now())}
                        ),
                        urgent=urgent,
                    )
            verdict = await probe
        finally:
            probe.cancel()  # a no-op once done; stops the probe if the early write failed
        if self.conns.get(conn.key) is not conn:
            return  # deleted or replaced while probing
        took = time.perf_counter() - started
        conn.unwritten = Unwritten(verdict, generation, requested_at, took, facts)
        await self._write_verdict(conn, conn.unwritten, urgent)

    async def _write_verdict(self, conn: Conn, done: Unwritten, urgent: bool) -> None:
        grace_over = time.time() - conn.generation_since >= self.defaults.missing_secret_grace

        def compute(prev: dict[str, Any]) -> dict[str, Any] | None:
            if self.conns.get(conn.key) is not conn:
                return None  # forgotten (this replica stands by, or the object went) meanwhile
            if _observed(prev) > done.generation:
                return None  # another replica has judged a newer spec: never go back
            return st.next_status(
                prev,
                done.verdict,
                generation=done.generation,
                requested_at=done.requested_at,
                secret_grace_over=grace_over,
            )

        written = await self.writer.write(conn, compute, urgent=urgent)
        conn.unwritten, conn.write_failures = None, 0
        self._write_kept()
        if self.conns.get(conn.key) is not conn:
            # Forgotten while writing (this replica stands by, or the object went). A status
            # that landed still tells its transition; its series and plan are the owner's.
            if written is not None:
                self.writer.observe(conn, *written, done.verdict, done.took)
                if conn.key not in self.conns:
                    self.metrics.forget(*conn.key)
            return
        if written is not None:
            prev, new = written
            conn.handled_generation = max(conn.handled_generation, done.generation)
            if done.requested_at:
                conn.handled_requested_at = done.requested_at
            self.writer.observe(conn, prev, new, done.verdict, done.took)
        self._plan_next(conn, done.verdict, done.facts)

    def _write_kept(self) -> None:
        """A write went through: the API server answers again, so the verdicts kept while it
        did not are written now (by the workers, one write each) rather than after a backoff
        that grew while it was away: up to 5 minutes of statuses older than what is known."""
        kept, self._kept = self._kept, set()
        for key in kept:
            conn = self.conns.get(key)
            # One writing now needs no second run: it keeps itself again if it fails.
            if conn is not None and conn.unwritten is not None and not self.scheduler.running(key):
                self.scheduler.now(key)

    async def _write_suspended(self, conn: Conn, urgent: bool) -> None:
        generation = conn.generation
        written = await self.writer.write(
            conn,
            lambda prev: {**prev, **st.suspended_status(prev, generation, _now())},
            urgent=urgent,
        )
        conn.handled_generation = max(conn.handled_generation, generation)
        if written is not None:
            self._export_ready(conn)

    async def _verdict(self, conn: Conn, source: RecordingSecrets) -> Verdict:
        if conn.spec is None:
            return invalid_verdict(conn, self._effective(conn), _now)
        tokens = ServiceAccountTokens(self.kube, conn.namespace)
        TENANT.set(conn.namespace)  # this task's own context: its TLS clients count for it
        return await self.validator(conn.spec, source, self.pool, self.defaults, tokens=tokens)

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler and the gauges. (A connection deleted while the watch was away,
        of which a new list brings no word, is forgotten when its next write finds it gone.)"""
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="llmconn scheduler"),
            asyncio.create_task(self._gauges(), name="llmconn gauges"),
        ]

    @property
    def alive(self) -> bool:
        """Whether the scheduler still runs (the liveness probe asks)."""
        return bool(self._tasks) and not self._tasks[0].done()

    async def aclose(self, grace: float) -> None:
        """Stop starting validations, let those running write (up to `grace` seconds) and
        their Events go out, then close the clients."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.secret_cache.close()
        await self.scheduler.drain(grace)
        await self.writer.flush(grace)
        await self.pool.aclose()
        await self.kube.aclose()

    def pause(self, namespace: str | None = None) -> None:
        """This replica stands by (for `namespace` alone, in namespaced mode, where each
        namespace's peering object decides for it): stop validating and drop what memory
        holds, which would go stale while another replica works."""
        if namespace is not None:
            self.scheduler.pause_group(namespace)
            for key in [key for key in self.conns if key[0] == namespace]:
                self._forget(key)
            return
        self.scheduler.pause()
        self.scheduler.clear()
        for key in list(self.conns):
            self._forget(key)

    def resume(self, namespace: str | None = None) -> None:
        """This replica is active again. Kopf lists the connections afresh when it resumes
        its stream, and each comes as a first sight (resuming its schedule from its status)."""
        if namespace is not None:
            self.scheduler.resume_group(namespace)
        else:
            self.scheduler.resume()

    async def _gauges(self) -> None:
        while True:
            self.metrics.set_in_flight(self.scheduler.in_flight)
            self.metrics.set_queue_depth(self.scheduler.queue_depth)
            await asyncio.sleep(1.0)


class RecordingSecrets:
    """The Secrets of the connection's namespace, for one probe. What the probe reads is
    recorded in the connection's memory at once, so a Secret event that arrives during the
    probe re-validates only if it brings other data than the probe used."""

    def __init__(self, cache: SecretCache, conn: Conn) -> None:
        self._cache = cache
        self._conn = conn

    async def get(self, name: str) -> SecretData | None:
        data = await self._cache.read((self._conn.namespace, name))
        self._conn.secret_digests[name] = digest(self._conn.spec, name, data)
        return data


def _observed(status: dict[str, Any]) -> int:
    return int(status.get("observedGeneration") or 0)


def _namespace(key: Key) -> str:
    return key[0]


def default_namespace_concurrency(concurrency: int) -> int:
    """A quarter of the workers, at least one."""
    return max(1, concurrency // 4)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
