"""The Secrets that connections reference: who uses which, their data, and reads after a change.

The Secret watch (watches.py) reports metadata only (`secret_event`, `secrets_listed`);
this cache reads (GETs) a Secret only when some connection references it and its
resourceVersion moved, keeps the data only of referenced Secrets and only at the version the
watch last reported, and tells its owner (the reconciler) when a referenced Secret's data
changed or it went away.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import httpx2

from llmconn.model.verdict import SecretData

log = logging.getLogger("llmconn")

Key = tuple[str, str]  # namespace, name
READS = 8  # Secret reads after watch events in flight at most
RETRY = 10.0  # seconds before a failed read is tried again


class SecretReader(Protocol):
    async def get_secret(self, namespace: str, name: str) -> SecretData | None: ...


class SecretCache:
    def __init__(
        self, kube: SecretReader, changed: Callable[[Key, SecretData | None], None]
    ) -> None:
        self.kube = kube
        self._changed = changed  # a referenced Secret's new data, or None when it is gone
        self.users: dict[Key, set[Key]] = {}  # (ns, secret) -> connections using it
        self.data: dict[Key, SecretData] = {}  # only Secrets some connection references
        # resourceVersion of every Secret the watch reports (metadata only, never data): the
        # cache holds a Secret only at the version the watch last reported.
        self.versions: dict[Key, str] = {}
        self._refreshing: dict[Key, asyncio.Task[None]] = {}  # reads after a Secret changed
        self._read_slots = asyncio.Semaphore(READS)

    def use(self, skey: Key, user: Key) -> None:
        self.users.setdefault(skey, set()).add(user)

    def unuse(self, skey: Key, user: Key) -> None:
        users = self.users.get(skey)
        if users is not None:
            users.discard(user)
            if not users:
                del self.users[skey]
                self.data.pop(skey, None)
                refresh = self._refreshing.pop(skey, None)
                if refresh is not None:
                    refresh.cancel()

    async def read(self, skey: Key) -> SecretData | None:
        """A referenced Secret for a validation: from the cache, else from the API (before
        it is declared missing: the watches are unordered)."""
        data = self.data.get(skey)
        if data is None:
            data = await self.kube.get_secret(*skey)
            self.keep(skey, data)
        return data

    def close(self) -> None:
        for refresh in self._refreshing.values():
            refresh.cancel()

    def secret_event(self, event_type: str | None, meta: dict[str, Any]) -> None:
        """A Secret's metadata from the watch (never its data). A referenced Secret whose
        resourceVersion moved is read again, and its connections re-validated if the values
        they use changed."""
        skey: Key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self.versions.pop(skey, None)
            if skey in self.users:
                self.data.pop(skey, None)
                self._changed(skey, None)
            return
        version = str(meta.get("resourceVersion") or "")
        if self.versions.get(skey) == version:
            return  # a list after a reconnection repeats what is known
        self.versions[skey] = version
        if skey not in self.users:
            return  # nobody uses it: not read, not kept
        self.data.pop(skey, None)  # stale: a validation reads afresh until the new one is in
        if skey not in self._refreshing:
            self._refreshing[skey] = asyncio.ensure_future(self._refresh(skey))

    def secrets_listed(self, namespace: str | None, present: set[Key]) -> None:
        """A complete list of a namespace's Secrets (None: of all namespaces) arrived: those
        that went while the watch was away are gone, as a list brings no DELETED events."""
        gone = [
            skey
            for skey in self.versions
            if (namespace is None or skey[0] == namespace) and skey not in present
        ]
        for skey in gone:
            self.secret_event("DELETED", {"namespace": skey[0], "name": skey[1]})

    async def _refresh(self, skey: Key) -> None:
        """Read a referenced Secret until the cache holds the version the watch reported."""
        try:
            while skey in self.users:
                want = self.versions.get(skey)
                cached = self.data.get(skey)
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
                        RETRY,
                    )
                    await asyncio.sleep(RETRY * random.uniform(1, 1.5))
                    continue
                if self.versions.get(skey) != want:
                    continue  # it changed again during the read: read again
                if data is not None and data.resource_version == want:
                    self.data[skey] = data
                    self._changed(skey, data)
                # Otherwise the read is ahead of the watch (a newer version, or gone): the
                # watch event that is on its way starts the next read.
                return
        except Exception:
            log.exception("reading Secret %s/%s failed unexpectedly", *skey)
        finally:
            self._refreshing.pop(skey, None)

    def keep(self, skey: Key, data: SecretData | None) -> None:
        """Cache a Secret read on a cache miss, but only at the version the watch last
        reported: a slow read never overwrites a newer version that a watch event brought
        meanwhile, and a Secret the watch does not see (outside a label selector) is read
        afresh by every validation instead of going stale in the cache."""
        if (
            data is not None
            and skey in self.users
            and data.resource_version == self.versions.get(skey)
        ):
            self.data[skey] = data
