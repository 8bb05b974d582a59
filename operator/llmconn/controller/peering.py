"""Replicas: shards (which connections are this replica's) and active/standby (whether this
replica works now), following Kopf's peering verdict in our own reconciler.

Kopf pauses its watch streams when a peer with a higher priority is alive, but the
operator's own scheduler would go on validating from memory. So the same rule Kopf applies
(pause while another live peer has a higher or equal priority) is applied here to the
peering objects Kopf keeps, and the reconciler stands by while it holds.
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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("llmconn")

CHECK_EVERY = 1.0  # seconds between judgements when nothing changes (peers expire)


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


def should_pause(status: Mapping[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """Kopf's rule: pause while any other live peer has a higher or the same priority."""
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            lastseen = dt.datetime.fromisoformat(str(info.get("lastseen")))
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=dt.UTC)
            alive = lastseen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if alive and other >= priority:
            return True
    return False


class _Watcher(Protocol):
    def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]: ...


class _Pausable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


def peering_paths(name: str, namespaces: Sequence[str], clusterwide: bool) -> list[str]:
    """The collections holding this peering's objects (Kopf keeps one per namespace)."""
    if clusterwide:
        return ["/apis/kopf.dev/v1/clusterkopfpeerings"]
    return [f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings" for ns in namespaces]


async def follow(
    kube: _Watcher,
    paths: Sequence[str],
    name: str,
    identity: str,
    priority: int,
    target: _Pausable,
) -> None:
    """Pause `target` while Kopf's peering says another replica is the active one.

    The peering objects are watched, so a replica stands by as soon as a higher priority
    appears; they are judged again every second too, since peers expire by time alone."""
    statuses: dict[str, Mapping[str, Any]] = {}
    changed = asyncio.Event()

    async def watch(path: str) -> None:
        while True:
            try:
                async for obj in kube.watch(path, name):
                    statuses[path] = obj.get("status") or {}
                    changed.set()
            except Exception as exc:  # a broken watch changes nothing; start it again
                log.debug("peering watch of %s ended: %s", path, type(exc).__name__)
            await asyncio.sleep(1.0)

    watchers = [asyncio.create_task(watch(path)) for path in paths]
    paused: bool | None = None  # not judged yet: `target` starts active
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY):  # not wait_for: see scheduler.py
                    await changed.wait()
            changed.clear()
            now = dt.datetime.now(dt.UTC)
            pause = any(should_pause(st, identity, priority, now) for st in statuses.values())
            if pause != paused:
                first, paused = paused is None, pause
                if pause:
                    log.info("standing by: another replica with a higher priority is active")
                    target.pause()
                else:
                    log.info("active: no replica with a higher priority is alive")
                    if not first:
                        target.resume()
    finally:
        for task in watchers:
            task.cancel()
