"""The operator's own list-then-watch loop of Secrets, as metadata only: the operator learns
that a Secret changed without receiving its data (the Secret cache reads, GETs, only the
Secrets that connections reference).

Kopf watches the connections (handlers.py). A Secret watch through Kopf would stream the data
of every Secret in the watched namespaces (Helm keeps each release in a Secret of up to
1 MiB), and Kopf has no metadata-only watch; so this loop watches `PartialObjectMetadata`, as
cert-manager does for its Secret cache, with the robustness of Kopf's own watcher: it lists in
pages, then watches from the list's resourceVersion with bookmarks and a server timeout,
re-watches from the last resourceVersion seen when a stream ends or breaks, lists again on
410 Gone (as a status code or as an ERROR event), and backs off exponentially with jitter on
errors.

An API server that cannot be reached at all (down, restarting) is tried again about every
second instead: a connection attempt costs a server that is not listening nothing, and a
change made just after it is back must not wait out a backoff that grew while it was away.
A 429 (as a starting server answers while its storage initialises) is retried after its
Retry-After. Neither grows the backoff of the errors a server answers with.

Scope: one cluster-wide watch with -A, one per namespace with -n names. With -n patterns
(shop-*) the namespaces are followed by Kopf's documented rule (`matches`), and each matching
namespace gets its own watch, started when it appears and stopped when it goes.

Its length is one adapter's: the API server's list-then-watch protocol (pages, bookmarks,
410, backoff, scopes) in one place, as Kopf keeps its own watcher in one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx2

from llmconn.controller.kube import Gone

log = logging.getLogger("llmconn")

Key = tuple[str, str]  # namespace ("" for cluster-scoped objects), name
Meta = dict[str, Any]

SERVER_TIMEOUT = 300.0  # seconds the API server keeps one watch request open
CLIENT_SLACK = 30.0  # the client waits this much longer before it calls a silent stream dead
PAGE = 500  # objects per list page
BACKOFF_BASE = 0.5  # seconds before the first retry...
BACKOFF_CAP = 30.0  # ...doubling up to this, while the server answers with errors
RECONNECT_CAP = 1.0  # seconds between connection attempts while it cannot be reached
HEALTHY = 1.0  # seconds: an empty stream that the server ends sooner counts as a failure
# Kopf lists the connections once the Secrets' metadata is listed (this long at most, at
# startup): a first validation's own read of a Secret is then not taken for a change of it,
# which would validate twice.
FIRST_LIST_WAIT = 10.0


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, capped, and
    jittered over the upper half, so that replicas that lost the API server together do not
    come back in step."""
    return _jittered(min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 32)), rand)


def reconnect_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before connection attempt `attempt` (0-based) to an API server that could not
    be reached: as `backoff`, but never more than RECONNECT_CAP."""
    return _jittered(min(RECONNECT_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 32)), rand)


def retry_after(response: httpx2.Response, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retrying after a 429: the server's Retry-After (within BACKOFF_BASE and
    BACKOFF_CAP, a quarter more at most as jitter), else BACKOFF_BASE."""
    try:
        asked = float(response.headers.get("retry-after", BACKOFF_BASE))
    except ValueError:
        asked = BACKOFF_BASE
    return min(BACKOFF_CAP, max(BACKOFF_BASE, asked)) * (1 + rand() / 4)


def _jittered(ceiling: float, rand: Callable[[], float]) -> float:
    return ceiling / 2 + rand() * ceiling / 2


class WatchError(Exception):
    """An ERROR event other than 410 Gone, or a list without a resourceVersion."""


class Lister(Protocol):
    """What the loop needs from the API client (Kube)."""

    async def list_metadata(self, path: str, params: dict[str, str]) -> dict[str, Any]: ...

    def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]: ...


class Sink(Protocol):
    """Where Secret metadata goes (the Reconciler)."""

    def secret_event(self, event_type: str, meta: Meta) -> None: ...

    def secrets_listed(self, namespace: str | None, present: set[Key]) -> None: ...


@dataclass
class Counts:
    """What a watch loop did, for logs and tests."""

    lists: int = 0
    watches: int = 0
    bookmarks: int = 0
    gone: int = 0
    errors: int = 0


class ListWatch:
    """One collection at `path`, listed and then watched until cancelled, as metadata only.

    `on_event(type, metadata)` gets every object of
    a list as ADDED, then the watch's ADDED, MODIFIED and DELETED events; `on_listed(keys)`
    follows each complete list with the keys it held, since a list after a gap brings no
    DELETED events for what went."""

    def __init__(
        self,
        kube: Lister,
        path: str,
        *,
        on_event: Callable[[str, Meta], None],
        on_listed: Callable[[set[Key]], None],
        label_selector: str | None = None,
        server_timeout: float = SERVER_TIMEOUT,
        page: int = PAGE,
    ) -> None:
        self.kube = kube
        self.path = path
        self.on_event = on_event
        self.on_listed = on_listed
        self.label_selector = label_selector
        self.server_timeout = server_timeout
        self.page = page
        self.listed = asyncio.Event()  # set once a first complete list has been handed on
        self.resource_version: str | None = None  # where the next watch starts; None: list
        self.counts = Counts()

    async def run(self) -> None:
        attempt = 0  # failures the server answered with, since events last flowed
        unreachable = 0  # connection failures since the server last answered
        while True:
            answered = True  # whether the server answered this time (even with an error)
            failed = True  # whether that counts towards the backoff
            try:
                if self.resource_version is None:
                    await self._list()
                if await self._watch():
                    attempt = unreachable = 0
                    continue  # the server's timeout ended a healthy stream: watch on
                delay = backoff(attempt)  # ended at once and empty: do not hammer the server
            except Gone:
                # Expected after a long disconnection: the server no longer has our
                # resourceVersion. List again at once, unless it keeps happening.
                self.counts.gone += 1
                self.resource_version = None
                log.debug("watch of %s: resourceVersion expired, listing again", self.path)
                delay = backoff(attempt) if attempt else 0.0
            except httpx2.TransportError as exc:
                # The server cannot be reached, or the stream broke: soon again, from the same
                # resourceVersion.
                self.counts.errors += 1
                delay, answered, failed = reconnect_delay(unreachable), False, False
                log.warning(
                    "watch of %s failed (%s); retrying in %.1fs", self.path, _describe(exc), delay
                )
            except (httpx2.HTTPError, WatchError, ValueError) as exc:
                self.counts.errors += 1
                self.resource_version = None  # not a plain disconnection: list afresh
                if isinstance(exc, httpx2.HTTPStatusError) and exc.response.status_code == 429:
                    # A pause the server asks for (while it starts, say), not a failure.
                    delay, failed = retry_after(exc.response), False
                else:
                    delay = backoff(attempt)
                log.warning(
                    "watch of %s failed (%s); retrying in %.1fs", self.path, _describe(exc), delay
                )
            except Exception:
                # A bug in a handler must not end the watch for good.
                self.counts.errors += 1
                self.resource_version = None
                delay = backoff(attempt)
                log.exception("watch of %s failed; retrying in %.1fs", self.path, delay)
            if failed:
                attempt += 1
            unreachable = 0 if answered else unreachable + 1
            if delay:
                await asyncio.sleep(delay)

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self.label_selector} if self.label_selector else {}

    async def _list(self) -> None:
        params = {**self._params(), "limit": str(self.page)}
        present: set[Key] = set()
        while True:
            body = await self.kube.list_metadata(self.path, params)
            for item in body.get("items") or []:
                meta = item.get("metadata") or {}
                present.add((meta.get("namespace") or "", meta.get("name") or ""))
                self.on_event("ADDED", meta)
            listed = body.get("metadata") or {}
            if not listed.get("continue"):
                break
            params["continue"] = listed["continue"]  # every page is of the same snapshot
        if not listed.get("resourceVersion"):
            raise WatchError("a list without a resourceVersion")
        self.counts.lists += 1
        self.listed.set()
        self.on_listed(present)
        self.resource_version = str(listed["resourceVersion"])

    async def _watch(self) -> bool:
        """Watch from self.resource_version until the server ends the stream; whether it was
        a healthy one (brought an event or a bookmark, or lasted)."""
        params = {
            **self._params(),
            "resourceVersion": str(self.resource_version),
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(self.server_timeout)),
        }
        self.counts.watches += 1
        started, received = time.monotonic(), False
        read_timeout = self.server_timeout + CLIENT_SLACK
        events = self.kube.watch_metadata(self.path, params, read_timeout)
        async for event in events:
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(self.path)
                raise WatchError(f"ERROR event {obj.get('code')} {obj.get('reason')}")
            meta = obj.get("metadata") or {}
            # Bookmarks carry only a resourceVersion: where to resume after this stream,
            # so a quiet collection does not fall behind the server's history and need a list.
            self.resource_version = str(meta.get("resourceVersion") or self.resource_version)
            received = True
            if kind == "BOOKMARK":
                self.counts.bookmarks += 1
            elif kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(kind, meta)
        return received or time.monotonic() - started >= HEALTHY


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__ if not isinstance(exc, WatchError) else str(exc)


def has_patterns(namespaces: Sequence[str]) -> bool:
    return any(ch in ns for ns in namespaces for ch in "*?[!")


def matches(patterns: Sequence[str], namespace: str) -> bool:
    """Whether -n patterns take in `namespace`, by the rule Kopf documents for them (its
    `kopf run --namespace` reference), so that Secrets are watched where Kopf watches the
    connections: any pattern matches. A pattern is comma-separated globs; a `!glob` excludes;
    a first glob that excludes implies a `*` before it; an inclusive glob after the first
    only takes back a namespace that the first took and a later `!` excluded."""
    return any(_match_one(namespace, pattern) for pattern in patterns)


def _match_one(namespace: str, pattern: str) -> bool:
    globs = [glob.strip() for glob in pattern.split(",")]
    if globs[0].startswith("!"):
        globs.insert(0, "*")
    first = matched = fnmatch.fnmatchcase(namespace, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matched = matched and not fnmatch.fnmatchcase(namespace, glob[1:])
        else:
            matched = matched or (first and fnmatch.fnmatchcase(namespace, glob))
    return matched


class ScopedWatch:
    """One kind of object in the watched namespaces: one cluster-wide ListWatch with -A, one
    per namespace with -n names, and with -n patterns one per matching namespace, started
    when it appears and stopped when it goes (the namespaces themselves are watched).

    `path(namespace)` is the collection's path (None: of all namespaces); `on_event` gets
    what ListWatch gives; `on_listed(namespace, keys)` follows each complete list of a
    namespace (None: of all) with the keys it held, and gets an empty set when a followed
    namespace is gone."""

    what = "objects"  # in task names and logs

    def __init__(
        self,
        kube: Lister,
        *,
        path: Callable[[str | None], str],
        on_event: Callable[[str, Meta], None],
        on_listed: Callable[[str | None, set[Key]], None],
        namespaces: Sequence[str] = (),
        all_namespaces: bool = False,
        label_selector: str | None = None,
        server_timeout: float = SERVER_TIMEOUT,
    ) -> None:
        self.kube = kube
        self.path = path
        self.on_event = on_event
        self.on_listed = on_listed
        self.namespaces = tuple(namespaces)
        self.all_namespaces = all_namespaces
        self.label_selector = label_selector
        self.server_timeout = server_timeout
        self.watches: dict[str | None, ListWatch] = {}  # by namespace; None: all
        self.namespace_watch: ListWatch | None = None  # with -n patterns
        self._tasks: dict[str | None, asyncio.Task[None]] = {}
        self._namespace_task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    async def listed(self) -> None:
        """Until every watch started so far has handed on its first complete list."""
        if self.namespace_watch is not None:
            await self.namespace_watch.listed.wait()
        await asyncio.gather(*(watch.listed.wait() for watch in list(self.watches.values())))

    def start(self) -> None:
        if self.all_namespaces:
            self._follow(None)
        elif has_patterns(self.namespaces):
            self.namespace_watch = ListWatch(
                self.kube,
                "/api/v1/namespaces",
                on_event=self._namespace_event,
                on_listed=self._namespaces_listed,
                server_timeout=self.server_timeout,
            )
            self._namespace_task = asyncio.create_task(
                self.namespace_watch.run(), name="llmconn namespace watch"
            )
        else:
            for namespace in self.namespaces:
                self._follow(namespace)

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._stopping]
        if self._namespace_task is not None:
            tasks.append(self._namespace_task)
            self._namespace_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._stopping.clear()

    def _follow(self, namespace: str | None) -> None:
        if namespace in self.watches:
            return

        def listed(present: set[Key]) -> None:
            self.on_listed(namespace, present)

        watch = ListWatch(
            self.kube,
            self.path(namespace),
            on_event=self.on_event,
            on_listed=listed,
            label_selector=self.label_selector,
            server_timeout=self.server_timeout,
        )
        self.watches[namespace] = watch
        self._tasks[namespace] = asyncio.create_task(
            watch.run(), name=f"llmconn {self.what} watch {namespace or 'cluster-wide'}"
        )

    def _unfollow(self, namespace: str) -> None:
        self.watches.pop(namespace, None)
        task = self._tasks.pop(namespace, None)
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            self.on_listed(namespace, set())  # its objects went with it

    def _namespace_event(self, event_type: str, meta: Meta) -> None:
        name = str(meta.get("name") or "")
        if event_type == "DELETED":
            self._unfollow(name)
        elif name and matches(self.namespaces, name):
            self._follow(name)

    def _namespaces_listed(self, present: set[Key]) -> None:
        for namespace in [ns for ns in self.watches if ns is not None]:
            if ("", namespace) not in present:
                self._unfollow(namespace)


class SecretWatch(ScopedWatch):
    """The Secrets of the watched namespaces, as metadata, into `sink` (the Reconciler's
    Secret cache)."""

    what = "secret"

    def __init__(
        self,
        kube: Lister,
        sink: Sink,
        *,
        namespaces: Sequence[str] = (),
        all_namespaces: bool = False,
        label_selector: str | None = None,
        server_timeout: float = SERVER_TIMEOUT,
    ) -> None:
        super().__init__(
            kube,
            path=secrets_path,
            on_event=sink.secret_event,
            on_listed=sink.secrets_listed,
            namespaces=namespaces,
            all_namespaces=all_namespaces,
            label_selector=label_selector,
            server_timeout=server_timeout,
        )


def secrets_path(namespace: str | None) -> str:
    if namespace is None:
        return "/api/v1/secrets"
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets"
