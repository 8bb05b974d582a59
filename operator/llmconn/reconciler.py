"""The operator's core: which connection to validate when, and one status write per verdict.

Kopf hands connection watch events to `connection_event` (see handlers.py), and the Secret
watch (secretwatch.py) hands Secret metadata to `secret_event`; they only update memory and
the schedule, and read a referenced Secret whose resourceVersion moved. Validations run from
the scheduler's bounded pool, call the plain `validate()` core, and write the status in
exactly one PATCH. The operator's own writes come back as MODIFIED events and change nothing
here: a validation is triggered by a new generation, a new
`llmconn.dev/validate-requested-at` value, changed Secret data, or the interval, never by a
status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pydantic

from llmconn import status as st
from llmconn.http import ClientPool
from llmconn.kube import Kube, NotFound
from llmconn.metrics import Metrics
from llmconn.probes import parse_spec
from llmconn.reasons import MISSING_SECRET, Reason
from llmconn.scheduler import Scheduler
from llmconn.spec import LLMConnectionSpec, ValidationType
from llmconn.validate import validate
from llmconn.verdict import Defaults, Effective, SecretData, Verdict, effective

log = logging.getLogger("llmconn")

REQUESTED_AT = "llmconn.dev/validate-requested-at"
PENDING_AFTER = 0.5  # seconds a first probe may take before Reconciling=True is written
RESUME_SPREAD = 30.0  # seconds over which overdue connections are spread after a restart
RETRY_API = 10.0  # seconds before retrying a validation whose Kubernetes call failed
JITTER = 0.1  # +-10% of the interval, so connections created together drift apart
SECRET_READS = 8  # Secret reads after watch events in flight at most

Key = tuple[str, str]  # namespace, name


@dataclass
class Conn:
    namespace: str
    name: str
    uid: str
    generation: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    spec: LLMConnectionSpec | None = None
    spec_invalid: dict[str, Any] | None = None  # the raw spec, kept only when it is invalid
    spec_error: str | None = None
    requested_at: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # as last written (or first seen)
    handled_generation: int = 0
    handled_requested_at: str | None = None
    secret_digests: dict[str, str] = field(default_factory=dict)  # Secret name -> used values
    generation_since: float = field(default_factory=time.time)  # wall time, for the grace
    not_before: float = 0.0  # monotonic: Retry-After floor

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def secret_names(self) -> set[str]:
        return {ref.name for ref in self.spec.secret_refs} if self.spec else set()


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def owns(self, uid: str) -> bool:
        return self.count <= 1 or zlib.crc32(uid.encode()) % self.count == self.index


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
    ) -> None:
        self.kube = kube
        self.pool = pool
        self.defaults = defaults
        self.metrics = metrics
        self.shard = shard or Shard()
        self.conns: dict[Key, Conn] = {}
        self.secret_users: dict[Key, set[Key]] = {}  # (ns, secret) -> connections using it
        self.secrets: dict[Key, SecretData] = {}  # only Secrets some connection references
        # resourceVersion of every Secret the watch reports (metadata only, never data): the
        # cache holds a Secret only at the version the watch last reported.
        self.secret_versions: dict[Key, str] = {}
        self._refreshing: dict[Key, asyncio.Task[None]] = {}  # reads after a Secret changed
        self._read_slots = asyncio.Semaphore(SECRET_READS)
        self._events: set[asyncio.Future[None]] = set()  # transition Events being posted
        self.scheduler: Scheduler[Key] = Scheduler(
            self._work,
            concurrency=concurrency,
            on_lag=metrics.schedule_lag,
            # One namespace's slow endpoints must not hold every worker.
            group=_namespace,
            group_limit=namespace_concurrency or default_namespace_concurrency(concurrency),
        )

    # --- watch events (fast: memory and schedule only) --------------------------------
    def connection_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED" or not self.shard.owns(meta.get("uid", "")):
            self._forget(key)
            return
        conn = self.conns.get(key)
        first_sight = conn is None or conn.uid != meta.get("uid")
        if conn is None or first_sight:
            conn = Conn(namespace=key[0], name=key[1], uid=meta.get("uid", ""))
            conn.status = dict(body.get("status") or {})
            self.conns[key] = conn
            self.metrics.set_connections(len(self.conns))
        generation = int(meta.get("generation") or 1)
        if generation != conn.generation:
            # The API server bumps the generation on every spec change (status is a
            # subresource), so the spec is parsed again only then.
            conn.generation_since = time.time() if not first_sight else _created(meta)
            conn.generation = generation
            self._set_spec(conn, body.get("spec") or {})
        conn.meta = {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")}
        requested_at = (meta.get("annotations") or {}).get(REQUESTED_AT)
        # Compared with status.lastHandledRequestedAt, which keeps only this much of it.
        conn.requested_at = requested_at[: st.MAX_REQUESTED_AT] if requested_at else None
        # What the object's status says was handled counts too: the watch event of our own
        # write may be processed before the PATCH's response resumes the validation.
        written = body.get("status") or {}
        conn.handled_generation = max(
            conn.handled_generation, int(written.get("observedGeneration") or 0)
        )
        if conn.requested_at and written.get("lastHandledRequestedAt") == conn.requested_at:
            conn.handled_requested_at = conn.requested_at

        if conn.spec is not None and conn.spec.suspend:
            self.scheduler.cancel(key)
            ready = st.find(list(conn.status.get("conditions") or []), st.READY) or {}
            if ready.get("reason") != Reason.SUSPENDED or conn.handled_generation != generation:
                self.scheduler.now(key)  # writes the Suspended status once
            return
        if conn.handled_generation < generation or (
            conn.requested_at and conn.requested_at != conn.handled_requested_at
        ):
            self._trigger(conn)
        elif first_sight:
            self._resume(conn)

    def secret_event(self, event_type: str | None, meta: dict[str, Any]) -> None:
        """A Secret's metadata from the watch (never its data). A referenced Secret whose
        resourceVersion moved is read again, and its connections re-validated if the values
        they use changed."""
        skey: Key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self.secret_versions.pop(skey, None)
            if skey in self.secret_users:
                self._secret_changed(skey, None)
            return
        version = str(meta.get("resourceVersion") or "")
        if self.secret_versions.get(skey) == version:
            return  # a list after a reconnection repeats what is known
        self.secret_versions[skey] = version
        if skey not in self.secret_users:
            return  # nobody uses it: not read, not kept
        self.secrets.pop(skey, None)  # stale: a validation reads afresh until the new one is in
        if skey not in self._refreshing:
            self._refreshing[skey] = asyncio.ensure_future(self._refresh_secret(skey))

    def secrets_listed(self, namespace: str | None, present: set[Key]) -> None:
        """A complete list of a namespace's Secrets (None: of all namespaces) arrived: those
        that went while the watch was away are gone, as a list brings no DELETED events."""
        gone = [
            skey
            for skey in self.secret_versions
            if (namespace is None or skey[0] == namespace) and skey not in present
        ]
        for skey in gone:
            self.secret_event("DELETED", {"namespace": skey[0], "name": skey[1]})

    async def _refresh_secret(self, skey: Key) -> None:
        """Read a referenced Secret until the cache holds the version the watch reported."""
        try:
            while skey in self.secret_users:
                want = self.secret_versions.get(skey)
                cached = self.secrets.get(skey)
                if want is None or (cached is not None and cached.resource_version == want):
                    return  # deleted since, or a validation has read this version already
                try:
                    async with self._read_slots:
                        data = await self.kube.get_secret(*skey)
                except httpx2.HTTPError as exc:
                    log.warning(
                        "could not read Secret %s/%s (%s); retrying in %.0fs",
                        *skey,
                        type(exc).__name__,
                        RETRY_API,
                    )
                    await asyncio.sleep(RETRY_API * random.uniform(1, 1.5))
                    continue
                if self.secret_versions.get(skey) != want:
                    continue  # it changed again during the read: read again
                if data is not None and data.resource_version == want:
                    self._secret_changed(skey, data)
                # Otherwise the read is ahead of the watch (a newer version, or gone): the
                # watch event that is on its way starts the next read.
                return
        except Exception:
            log.exception("reading Secret %s/%s failed unexpectedly", *skey)
        finally:
            self._refreshing.pop(skey, None)

    def _keep(self, skey: Key, data: SecretData | None) -> None:
        """Cache a Secret read on a cache miss, but only at the version the watch last
        reported: a slow read never overwrites a newer version that a watch event brought
        meanwhile, and a Secret the watch does not see (outside a label selector) is read
        afresh by every validation instead of going stale in the cache."""
        if (
            data is not None
            and skey in self.secret_users
            and data.resource_version == self.secret_versions.get(skey)
        ):
            self.secrets[skey] = data

    def _secret_changed(self, skey: Key, data: SecretData | None) -> None:
        if data is None:
            self.secrets.pop(skey, None)
        else:
            self.secrets[skey] = data
        for key in list(self.secret_users.get(skey, ())):
            conn = self.conns.get(key)
            if conn is None or conn.spec is None or conn.spec.suspend:
                continue
            new = _digest(conn.spec, skey[1], data)
            old = conn.secret_digests.get(skey[1])
            if (
                old is None
                and data is not None
                and _observed_rv(conn, skey[1]) == data.resource_version
            ):
                conn.secret_digests[skey[1]] = new  # what the last probe (before a restart) used
            elif old != new:
                log.info("Secret %s/%s changed: re-validating %s", skey[0], skey[1], key[1])
                self._trigger(conn)

    # --- scheduling --------------------------------------------------------------------
    def _trigger(self, conn: Conn) -> None:
        delay = conn.not_before - time.monotonic()
        if delay > 0:  # Retry-After is honoured even for explicit triggers
            self.scheduler.at(conn.key, conn.not_before)
        else:
            self.scheduler.now(conn.key)

    def _resume(self, conn: Conn) -> None:
        """After a restart: continue the schedule from status.lastValidationTime."""
        interval = self._effective(conn).interval
        last = _parse_time(conn.status.get("lastValidationTime"))
        if last is None:
            self.scheduler.now(conn.key)
            return
        if not interval:
            return
        wait = last + interval - time.time()
        if wait <= 0:
            wait = random.uniform(0, min(interval, RESUME_SPREAD))
        self.scheduler.at(conn.key, time.monotonic() + wait)

    def _plan_next(self, conn: Conn, verdict: Verdict) -> None:
        interval = verdict.validation.interval
        wait = interval * random.uniform(1 - JITTER, 1 + JITTER) if interval else None
        if verdict.retry_after:
            conn.not_before = time.monotonic() + verdict.retry_after
            wait = max(wait or 0.0, verdict.retry_after)
        if verdict.reason in MISSING_SECRET:
            left = conn.generation_since + self.defaults.missing_secret_grace - time.time()
            if left > 0:  # look again when the grace period ends, to raise Stalled on time
                wait = min(wait, left + 0.5) if wait else left + 0.5
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

    def _set_spec(self, conn: Conn, raw: dict[str, Any]) -> None:
        for name in conn.secret_names:
            self._unuse((conn.namespace, name), conn.key)
        try:
            conn.spec, conn.spec_error, conn.spec_invalid = parse_spec(raw), None, None
        except (pydantic.ValidationError, ValueError) as exc:
            conn.spec, conn.spec_error, conn.spec_invalid = None, _first_error(exc), raw
        for name in conn.secret_names:
            self.secret_users.setdefault((conn.namespace, name), set()).add(conn.key)
        conn.secret_digests.clear()

    def _unuse(self, skey: Key, key: Key) -> None:
        users = self.secret_users.get(skey)
        if users is not None:
            users.discard(key)
            if not users:
                del self.secret_users[skey]
                self.secrets.pop(skey, None)
                refresh = self._refreshing.pop(skey, None)
                if refresh is not None:
                    refresh.cancel()

    def _forget(self, key: Key) -> None:
        conn = self.conns.pop(key, None)
        if conn is None:
            return
        self.scheduler.cancel(key)
        for name in conn.secret_names:
            self._unuse((conn.namespace, name), key)
        self.metrics.forget(*key)
        self.metrics.set_connections(len(self.conns))

    # --- one validation --------------------------------------------------------------
    async def _work(self, key: Key) -> None:
        conn = self.conns.get(key)
        if conn is None:
            return
        try:
            if conn.spec is not None and conn.spec.suspend:
                await self._write(conn, st.suspended_status(conn.status, conn.generation, _now()))
                conn.handled_generation = conn.generation
                return
            await self._validate(conn)
        except NotFound:
            self._forget(key)  # deleted mid-probe: nothing to write
        except httpx2.HTTPError as exc:
            # The API server is unreachable or refused the write (a restart, say): the verdict
            # is not written, so try again soon rather than an interval later.
            log.warning(
                "could not reach the API server for %s/%s (%s); retrying in %.0fs",
                *key,
                type(exc).__name__,
                RETRY_API,
            )
            self.scheduler.at(key, time.monotonic() + RETRY_API * random.uniform(1, 1.5))
        except Exception:
            # Never let one connection take the operator down; try again later.
            log.exception("validation of %s/%s failed unexpectedly", *key)
            self.scheduler.at(key, time.monotonic() + (self._effective(conn).interval or 60.0))

    async def _validate(self, conn: Conn) -> None:
        generation, requested_at = conn.generation, conn.requested_at
        source = _RecordingSecrets(self, conn)
        started = time.perf_counter()
        probe = asyncio.ensure_future(self._verdict(conn, source))
        try:
            if not conn.status.get("conditions"):
                # A new connection: show Reconciling if the first probe takes a while.
                done, _ = await asyncio.wait({probe}, timeout=PENDING_AFTER)
                if not done:
                    await self._write(conn, st.pending_status(generation, _now()))
            verdict = await probe
        finally:
            probe.cancel()  # a no-op once done; stops the probe if the early write failed
        if self.conns.get(conn.key) is not conn:
            return  # deleted or replaced while probing
        grace_over = time.time() - conn.generation_since >= self.defaults.missing_secret_grace
        new = st.next_status(
            conn.status,
            verdict,
            generation=generation,
            requested_at=requested_at,
            secret_grace_over=grace_over,
        )
        prev = conn.status
        await self._write(conn, st.merge_patch(prev, new))
        conn.handled_generation = max(conn.handled_generation, generation)
        if requested_at:
            conn.handled_requested_at = requested_at
        self._observe(conn, prev, new, verdict, time.perf_counter() - started)
        self._plan_next(conn, verdict)

    async def _verdict(self, conn: Conn, source: _RecordingSecrets) -> Verdict:
        if conn.spec is None:
            return _invalid(conn, self._effective(conn))
        return await validate(conn.spec, source, self.pool, self.defaults)

    async def _write(self, conn: Conn, patch: dict[str, Any]) -> None:
        obj = await self.kube.patch_status(conn.namespace, conn.name, patch)
        conn.status = dict(obj.get("status") or {})
        conn.meta["resourceVersion"] = (obj.get("metadata") or {}).get("resourceVersion")

    def _observe(
        self, conn: Conn, prev: dict[str, Any], new: dict[str, Any], verdict: Verdict, took: float
    ) -> None:
        provider = verdict.provider
        self.metrics.validation(provider, verdict.result.value, verdict.reason.value, took)
        self.metrics.set_ready(conn.namespace, conn.name, provider, st.ready_status(new))
        self.metrics.last_validation(conn.namespace, conn.name, provider, time.time())
        log.debug(
            "validated %s/%s: %s %s in %sms",
            conn.namespace,
            conn.name,
            verdict.result.value,
            verdict.reason.value,
            verdict.latency_ms,
        )
        change = st.transition(prev, new)
        if change is not None:
            type_, reason = change
            log.info(
                "%s/%s is now %s: %s",
                conn.namespace,
                conn.name,
                "Ready" if type_ == "Normal" else f"not Ready ({verdict.reason.value})",
                verdict.message,
            )
            task = asyncio.ensure_future(
                self.kube.post_event(
                    {"metadata": conn.meta},
                    type_=type_,
                    reason=reason,
                    message=f"{verdict.reason.value}: {verdict.message}",
                )
            )
            self._events.add(task)
            task.add_done_callback(self._events.discard)

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        gauges = asyncio.ensure_future(self._gauges())
        try:
            await self.scheduler.run()
        finally:
            gauges.cancel()
            for refresh in self._refreshing.values():
                refresh.cancel()

    async def flush_events(self, timeout: float) -> None:
        """Let transition Events still being posted reach the API before shutdown."""
        if self._events:
            await asyncio.wait(set(self._events), timeout=timeout)

    async def _gauges(self) -> None:
        while True:
            self.metrics.set_in_flight(self.scheduler.in_flight)
            self.metrics.set_queue_depth(self.scheduler.queue_depth)
            await asyncio.sleep(1.0)


class _RecordingSecrets:
    """The connection's namespace only. A Secret missing from the cache is read from the API
    before it is declared missing (the watches are unordered), and kept only if the watch has
    reported that very version. What the probe reads is recorded at once, so a Secret event
    that arrives during the probe re-validates only if it brings other data than the probe
    used."""

    def __init__(self, reconciler: Reconciler, conn: Conn) -> None:
        self._r = reconciler
        self._conn = conn

    async def get(self, name: str) -> SecretData | None:
        skey = (self._conn.namespace, name)
        data = self._r.secrets.get(skey)
        if data is None:
            data = await self._r.kube.get_secret(skey[0], name)
            self._r._keep(skey, data)
        self._conn.secret_digests[name] = _digest(self._conn.spec, name, data)
        return data


def _digest(spec: LLMConnectionSpec | None, secret: str, data: SecretData | None) -> str:
    """Digest of the values one Secret gives this connection (never stored outside memory)."""
    h = hashlib.sha256()
    for ref in spec.secret_refs if spec else []:
        if ref.name == secret:
            value = None if data is None else data.data.get(ref.key)
            h.update(ref.key.encode() + b"\0" + (b"\1" + value if value is not None else b"\2"))
    return h.hexdigest()


def _observed_rv(conn: Conn, secret: str) -> str | None:
    for item in conn.status.get("observedSecrets") or []:
        if item.get("name") == secret:
            return str(item.get("resourceVersion"))
    return None


def _invalid(conn: Conn, eff: Effective) -> Verdict:
    raw = conn.spec_invalid or {}
    return Verdict(
        reason=Reason.INVALID_CONFIGURATION,
        message=f"The spec cannot work: {conn.spec_error}",
        provider=str(raw.get("provider") or ""),
        endpoint=str(raw.get("endpoint") or ""),
        model=raw.get("model"),
        validation=eff,
        finished_at=_now(),
    )


def _first_error(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "spec"
        return f"spec.{where}: {err.get('msg')}"
    return str(exc)


def _namespace(key: Key) -> str:
    return key[0]


def default_namespace_concurrency(concurrency: int) -> int:
    """A quarter of the workers, at least one."""
    return max(1, concurrency // 4)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


def _created(meta: dict[str, Any]) -> float:
    return _parse_time(meta.get("creationTimestamp")) or time.time()
