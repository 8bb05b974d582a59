"""Replicas: shards (which connections are this replica's) and active/standby (whether this
replica works now), following Kopf's peering verdict in our own reconciler.

Kopf pauses its watch streams when a peer with a higher priority is alive, but the
operator's own scheduler would go on validating from memory. So the same rule Kopf applies
(pause while another live peer has a higher or equal priority) is applied here to the
peering objects Kopf keeps, and the reconciler stands by while it holds.

In namespaced mode Kopf keeps a peering object in every watched namespace, where a tenant
may write one too. Kopf 1.45 pauses its watches of every namespace when any one of those
objects says so, and stops the operator on an entry it cannot read; the operator judges each
namespace by its own object (a tenant's claim stands its own namespace by, in the operator's
judgement), ignores entries no replica writes and removes them (`repair`), before Kopf
reads them at a start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmconn.model.limits import MAX_PEER_LIFETIME_SECONDS, MAX_PEER_PRIORITY
from llmconn.model.text import printable

log = logging.getLogger("llmconn")

CHECK_EVERY = 1.0  # seconds between judgements when nothing changes (peers expire)
REPAIR_EVERY = 10.0  # seconds between repairs of one peering object (see `repair`)


@dataclass(frozen=True)
class Shard:
    """A stable hash slice of the connections (by UID): replica `index` of `count`."""

    index: int = 0
    count: int = 1

    def owns(self, uid: str) -> bool:
        return self.count <= 1 or zlib.crc32(uid.encode()) % self.count == self.index


def own_identity() -> str:
    """The identity Kopf announces for this replica: the pod name when the chart sets POD_ID."""
    return (
        os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    )


# What a peer of the operator's own can say. Anything past these is no replica of this
# operator (Kopf's peering objects in namespaced mode live in the tenants' namespaces): it is
# ignored, with a log line, instead of pausing the operator for ever or breaking the follower
# (a lifetime of 10**18 seconds is past what a datetime can add).
MAX_PRIORITY = MAX_PEER_PRIORITY  # --priority, and runner.py's random one, are within +-this
MAX_LIFETIME = float(MAX_PEER_LIFETIME_SECONDS)  # --peering-lifetime is at most this


def judge_peer(info: Any, now: dt.datetime) -> tuple[bool, int] | str:
    """A peer's entry: (alive, priority), or why it is ignored."""
    if not isinstance(info, Mapping):
        return "not a mapping"
    try:
        lastseen = dt.datetime.fromisoformat(str(info.get("lastseen")))
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=dt.UTC)
        lifetime = info.get("lifetime", 60)
        priority = info.get("priority", 0)
        if isinstance(lifetime, bool) or isinstance(priority, bool):
            return "not a number"
        lifetime, priority = float(lifetime), int(priority)
    except (TypeError, ValueError, OverflowError):
        return "unreadable"
    if not 0 <= lifetime <= MAX_LIFETIME:  # NaN too
        return f"lifetime out of range (0 to {MAX_LIFETIME:.0f}s)"
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        return f"priority out of range (+-{MAX_PRIORITY})"
    try:
        if lastseen - now > dt.timedelta(seconds=MAX_LIFETIME):
            return "last seen in the future"
        alive = lastseen + dt.timedelta(seconds=lifetime) > now
    except OverflowError:
        return "unreadable"
    return alive, priority


def should_pause(
    status: Mapping[str, Any],
    identity: str,
    priority: int,
    now: dt.datetime,
    ignored: Callable[[str, str], None] | None = None,
) -> bool:
    """Kopf's rule: pause while any other live peer has a higher or the same priority.
    Peers whose entry is absurd are ignored (`ignored(peer, why)` is told)."""
    for peer, info in status.items():
        if peer == identity:
            continue
        judged = judge_peer(info, now)
        if isinstance(judged, str):
            if ignored is not None:
                ignored(str(peer), judged)
            continue
        alive, other = judged
        if alive and other >= priority:
            return True
    return False


class _Watcher(Protocol):
    def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]: ...


class _Peerings(Protocol):
    async def get_peering(self, path: str, name: str) -> dict[str, Any] | None: ...
    async def drop_peers(self, path: str, name: str, peers: list[str]) -> None: ...


def absurd_peers(status: Any, now: dt.datetime) -> dict[str, str]:
    """The entries of a peering object's status no replica of this operator writes, and why."""
    if not isinstance(status, Mapping):
        return {}
    found = {}
    for peer, info in status.items():
        judged = judge_peer(info, now)
        if isinstance(judged, str):
            found[str(peer)] = judged
    return found


async def repair(kube: _Peerings, paths: Iterable[str], name: str) -> None:
    """Remove the absurd entries from this peering's objects, before Kopf reads them.

    Kopf reads every entry itself, and one it cannot (a lifetime of 10**18 seconds, past what
    a datetime can add) stops the whole operator ("Event processing has failed with an
    unrecoverable error"), at every start again; one with a priority past any replica's
    pauses every namespace's watch. The startup handlers run before Kopf watches anything,
    so a restart after such a write finds the object repaired. Best-effort: a failure here
    is logged and changes nothing else."""
    for path in paths:
        try:
            obj = await kube.get_peering(path, name)
            absurd = absurd_peers((obj or {}).get("status"), dt.datetime.now(dt.UTC))
            if absurd:
                log.warning(
                    "removing %d entries no replica writes from the peering at %s: %s",
                    len(absurd),
                    path,
                    "; ".join(
                        f"{printable(p[:64])!r}: {why}" for p, why in list(absurd.items())[:5]
                    ),
                )
                await kube.drop_peers(path, name, list(absurd))
        except Exception as exc:  # the follower and Kopf go on either way
            log.warning("could not repair the peering at %s: %s", path, type(exc).__name__)


class _Pausable(Protocol):
    def pause(self, namespace: str | None = None) -> None: ...
    def resume(self, namespace: str | None = None) -> None: ...


def peering_paths(name: str, namespaces: Sequence[str], clusterwide: bool) -> list[str]:
    """The collections holding this peering's objects (Kopf keeps one per namespace)."""
    return list(peering_scopes(namespaces, clusterwide).values())


def peering_scopes(namespaces: Sequence[str], clusterwide: bool) -> dict[str | None, str]:
    """What each peering collection decides for in the operator's judgement: the whole
    operator (None) in cluster-wide mode, else each namespace for itself (Kopf itself pauses
    every namespace's watch for any namespace's object: see the module's docstring)."""
    if clusterwide:
        return {None: "/apis/kopf.dev/v1/clusterkopfpeerings"}
    return {ns: f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings" for ns in namespaces}


async def follow(
    kube: _Watcher,
    paths: Sequence[str] | Mapping[str | None, str],
    name: str,
    identity: str,
    priority: int,
    target: _Pausable,
    repair_path: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Pause `target` while Kopf's peering says another replica is the active one: the whole
    of it for a cluster-wide peering (or a plain list of paths), each namespace by its own
    peering object in namespaced mode (`paths` by namespace, as `peering_scopes` makes them),
    so a tenant's peering object pauses its own namespace at most.

    The peering objects are watched, so a replica stands by as soon as a higher priority
    appears; they are judged again every second too, since peers expire by time alone. Peers
    with absurd entries are ignored, said once each, and `repair_path` (if given) is asked to
    remove them; nothing a peering object holds ends this task."""
    # By scope, the collections whose objects decide for it.
    scopes: dict[str | None, list[str]] = (
        {scope: [path] for scope, path in paths.items()}
        if isinstance(paths, Mapping)
        else {None: list(paths)}
    )
    statuses: dict[str, Mapping[str, Any]] = {}
    changed = asyncio.Event()
    told: set[tuple[str, str, str]] = set()  # (path, peer, why) said already
    repairs: set[asyncio.Task[None]] = set()
    absurd: set[str] = set()  # paths whose object holds an absurd entry now
    repaired: dict[str, float] = {}  # path -> loop time before which it is not repaired again

    async def watch(path: str) -> None:
        while True:
            try:
                async for obj in kube.watch(path, name):
                    status = obj.get("status")
                    statuses[path] = status if isinstance(status, Mapping) else {}
                    changed.set()
            except Exception as exc:  # a broken watch changes nothing; start it again
                log.debug("peering watch of %s ended: %s", path, type(exc).__name__)
            await asyncio.sleep(1.0)

    def judged(path: str, now: dt.datetime) -> bool:
        def ignored(peer: str, why: str) -> None:
            absurd.add(path)
            if (path, peer, why) not in told and len(told) < 1000:
                told.add((path, peer, why))
                log.warning(
                    "ignoring the peer %r in the peering at %s: %s",
                    printable(peer[:64]),
                    path,
                    why,
                )

        absurd.discard(path)
        pause = should_pause(statuses.get(path) or {}, identity, priority, now, ignored)
        clock = asyncio.get_running_loop().time()
        if path in absurd and repair_path is not None and clock >= repaired.get(path, 0.0):
            repaired[path] = clock + REPAIR_EVERY
            task = asyncio.ensure_future(repair_path(path))
            repairs.add(task)
            task.add_done_callback(repairs.discard)
        return pause

    watchers = [asyncio.create_task(watch(p)) for each in scopes.values() for p in each]
    paused: dict[str | None, bool] = {}  # not judged yet: `target` starts active
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY):  # not wait_for: see scheduler.py
                    await changed.wait()
            changed.clear()
            try:
                now = dt.datetime.now(dt.UTC)
                for scope, each in scopes.items():
                    _apply(target, scope, any(judged(p, now) for p in each), paused)
            except Exception:  # never: but the follower must outlive any object it reads
                log.exception("judging the peering failed; judging again in a second")
    finally:
        for task in [*watchers, *repairs]:
            task.cancel()


def _apply(
    target: _Pausable, scope: str | None, pause: bool, paused: dict[str | None, bool]
) -> None:
    """Pause or resume `target` (for `scope`) when the verdict changed; the first verdict
    only pauses (the target starts active)."""
    before = paused.get(scope)
    if pause == before:
        return
    paused[scope] = pause
    where = "" if scope is None else f" (namespace {scope})"
    if pause:
        log.info("standing by: another replica with a higher priority is active%s", where)
        target.pause() if scope is None else target.pause(scope)
    else:
        log.info("active: no replica with a higher priority is alive%s", where)
        if before is not None:
            target.resume() if scope is None else target.resume(scope)
