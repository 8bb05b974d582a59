"""The metadata-only Secret watch without a cluster: the loop's decisions (list, bookmark,
410 Gone, errors and backoff), its scopes (named namespaces, and -n patterns by Kopf's
documented rule), the wire format of its requests and how Kube checks their answers (against
a loopback server), and what the Reconciler does with Secret metadata (read only referenced
Secrets, never keep a stale read). The same paths run against a real API server in
tests/e2e/test_secret_watch.py."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import kopf
import pytest

from llmconn.controller import watches
from llmconn.controller.kube import META_LIST, META_WATCH, Gone, Kube
from llmconn.controller.metrics import Metrics
from llmconn.controller.reconciler import Reconciler, RecordingSecrets
from llmconn.controller.watches import (
    ListWatch,
    SecretWatch,
    backoff,
    has_patterns,
    matches,
    reconnect_delay,
    retry_after,
)
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from netkit import loopback_only

# How long a test waits for something that must happen before calling it a hang: only a
# broken test ever waits this long, and nothing asserts on durations.
GUARD = 10.0

# --- backoff -----------------------------------------------------------------------------


def test_backoff_doubles_then_caps() -> None:
    top = [backoff(n, rand=lambda: 1.0) for n in range(10)]
    assert top[:4] == [0.5, 1.0, 2.0, 4.0]
    assert top[-1] == watches.BACKOFF_CAP
    assert all(a <= b for a, b in itertools.pairwise(top))


def test_backoff_jitters_over_the_upper_half() -> None:
    for attempt in (0, 3, 50, 10_000):
        low, high = backoff(attempt, rand=lambda: 0.0), backoff(attempt, rand=lambda: 1.0)
        assert low == high / 2 and 0 < low < high <= watches.BACKOFF_CAP


def test_reconnects_stay_about_a_second_apart() -> None:
    """A server that is away is tried again within a second however long it has been away,
    so a change made when it is back is not held up by a grown backoff."""
    top = [reconnect_delay(n, rand=lambda: 1.0) for n in range(100)]
    assert top[:2] == [0.5, 1.0] and max(top) == watches.RECONNECT_CAP == 1.0
    assert min(reconnect_delay(n, rand=lambda: 0.0) for n in range(1, 100)) == 0.5


def too_many(retry: str | None) -> httpx2.Response:
    return httpx2.Response(429, headers={"Retry-After": retry} if retry is not None else {})


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        ("2", 2.0, 2.5),
        ("0", 0.5, 0.625),
        ("3600", 30.0, 37.5),
        (None, 0.5, 0.625),
        ("soon", 0.5, 0.625),
    ],
)
def test_a_429_waits_as_long_as_the_server_asks(
    header: str | None, low: float, high: float
) -> None:
    response = too_many(header)
    assert (retry_after(response, rand=lambda: 0.0), retry_after(response, rand=lambda: 1.0)) == (
        low,
        high,
    )


# --- the loop, against a scripted API ------------------------------------------------------


def meta(name: str, rv: str, namespace: str = "ns") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "resourceVersion": rv}


def page(items: list[dict[str, Any]], rv: str, cont: str | None = None) -> dict[str, Any]:
    listed: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        listed["continue"] = cont
    return {"metadata": listed, "items": [{"metadata": m} for m in items]}


def event(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": m}}


def error(code: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "code": code, "reason": "x"}}


class Script:
    """A fake API: each list or watch call takes the next step of its own script. A step is a
    response, an exception to raise, or (for watches) a list of events and exceptions. When a
    script runs out, the call blocks and `done` is set."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = list(lists), list(watches)
        self.list_calls: list[dict[str, str]] = []
        self.watch_calls: list[dict[str, str]] = []
        self.done = asyncio.Event()

    async def _block(self) -> None:
        self.done.set()
        await asyncio.Event().wait()

    async def list_metadata(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        self.list_calls.append(dict(params))
        if not self.lists:
            await self._block()
        step = self.lists.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[no-any-return]

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.watch_calls.append(dict(params))
        assert read_timeout > float(params["timeoutSeconds"])  # the client outwaits the server
        if not self.watches:
            await self._block()
        step = self.watches.pop(0)
        if isinstance(step, BaseException):
            raise step
        for item in step:
            if isinstance(item, BaseException):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self.listed: list[set[tuple[str, str]]] = []

    def on_event(self, kind: str, m: dict[str, Any]) -> None:
        self.events.append((kind, m.get("name", ""), m.get("resourceVersion")))

    def on_listed(self, present: set[tuple[str, str]]) -> None:
        self.listed.append(present)


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Backoff attempts asked for; no real waiting."""
    asked: list[int] = []

    def fake(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    monkeypatch.setattr(watches, "backoff", fake)
    return asked


@pytest.fixture
def reconnects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Reconnection attempts asked for (the server could not be reached); no real waiting."""
    asked: list[int] = []

    def fake(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    monkeypatch.setattr(watches, "reconnect_delay", fake)
    return asked


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The Retry-After of each 429 the loop waited for; no real waiting."""
    asked: list[str | None] = []

    def fake(response: httpx2.Response) -> float:
        asked.append(response.headers.get("retry-after"))
        return 0.0

    monkeypatch.setattr(watches, "retry_after", fake)
    return asked


async def run(script: Script, **kwargs: Any) -> tuple[ListWatch, Recorder]:
    rec = Recorder()
    watch = ListWatch(
        script, "/api/v1/secrets", on_event=rec.on_event, on_listed=rec.on_listed, **kwargs
    )
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(script.done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return watch, rec


async def test_lists_in_pages_then_watches_from_the_lists_version(attempts: list[int]) -> None:
    script = Script(
        lists=[
            page([meta("a", "5"), meta("b", "6")], "10", cont="p2"),
            page([meta("c", "7")], "10"),
        ],
        watches=[[event("MODIFIED", meta("a", "11"))]],
    )
    watch, rec = await run(script, label_selector="team=x", page=2)
    assert script.list_calls == [
        {"labelSelector": "team=x", "limit": "2"},
        {"labelSelector": "team=x", "limit": "2", "continue": "p2"},
    ]
    assert rec.events == [
        ("ADDED", "a", "5"),
        ("ADDED", "b", "6"),
        ("ADDED", "c", "7"),
        ("MODIFIED", "a", "11"),
    ]
    assert rec.listed == [{("ns", "a"), ("ns", "b"), ("ns", "c")}]
    first = script.watch_calls[0]
    assert first["resourceVersion"] == "10" and first["allowWatchBookmarks"] == "true"
    assert first["labelSelector"] == "team=x" and int(first["timeoutSeconds"]) > 0
    # the stream ended after an event: watch on from the last version, no list, no backoff
    assert script.watch_calls[1]["resourceVersion"] == "11"
    assert watch.counts.lists == 1 and attempts == []


async def test_a_bookmark_moves_the_version_and_is_no_event(attempts: list[int]) -> None:
    script = Script(
        lists=[page([], "10")],
        watches=[[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}}]],
    )
    watch, rec = await run(script)
    assert rec.events == []
    assert script.watch_calls[1]["resourceVersion"] == "42"
    assert watch.counts.bookmarks == 1 and watch.counts.lists == 1 and attempts == []


@pytest.mark.parametrize(
    "gone",
    [pytest.param([error(410)], id="ERROR-event"), pytest.param(Gone("x"), id="HTTP-410")],
)
async def test_gone_lists_again_at_once(gone: Any, attempts: list[int]) -> None:
    script = Script(
        lists=[page([meta("a", "5")], "10"), page([meta("b", "20")], "21")], watches=[gone]
    )
    watch, rec = await run(script)
    assert watch.counts.gone == 1 and watch.counts.lists == 2
    assert rec.listed == [{("ns", "a")}, {("ns", "b")}]  # the second list says "a" went
    assert script.watch_calls[-1]["resourceVersion"] == "21"
    assert attempts == []  # an expired version is expected, not an error


async def test_gone_again_and_again_backs_off(attempts: list[int]) -> None:
    script = Script(
        lists=[page([], "1"), page([], "2"), page([], "3")], watches=[Gone("x"), Gone("x")]
    )
    watch, _ = await run(script)
    assert watch.counts.gone == 2 and attempts == [1]


async def test_an_expired_continue_token_restarts_the_list(attempts: list[int]) -> None:
    script = Script(
        lists=[page([meta("a", "5")], "10", cont="p2"), Gone("x"), page([meta("a", "5")], "12")],
        watches=[],
    )
    watch, rec = await run(script)
    assert [c.get("continue") for c in script.list_calls] == [None, "p2", None]
    assert rec.listed == [{("ns", "a")}] and watch.resource_version == "12"


async def test_a_broken_stream_reconnects_and_resumes_without_a_list(
    attempts: list[int], reconnects: list[int]
) -> None:
    script = Script(
        lists=[page([], "10")],
        watches=[
            [event("ADDED", meta("a", "11")), httpx2.ReadError("reset")],
            httpx2.ConnectError("refused"),
            httpx2.ConnectError("refused"),
        ],
    )
    watch, _rec = await run(script)
    assert watch.counts.lists == 1 and watch.counts.errors == 3
    assert [c["resourceVersion"] for c in script.watch_calls] == ["10", "11", "11", "11"]
    assert reconnects == [0, 1, 2]  # counted while the server stays away (capped low)...
    assert attempts == []  # ...and apart from the errors a server answers with


async def test_gone_after_the_server_is_back_lists_at_once(
    attempts: list[int], reconnects: list[int]
) -> None:
    """After a restart the server no longer has our resourceVersion: the list that follows
    must not wait out a backoff grown while the server was away."""
    script = Script(
        lists=[page([], "10"), page([meta("new", "40")], "41")],
        watches=[httpx2.ConnectError("refused")] * 5 + [[error(410)]],
    )
    watch, rec = await run(script)
    assert reconnects == [0, 1, 2, 3, 4]
    assert attempts == []  # no backoff before the list: at once
    assert watch.counts.gone == 1 and rec.events[-1] == ("ADDED", "new", "40")


async def test_an_answer_ends_the_reconnection_count(
    attempts: list[int], reconnects: list[int]
) -> None:
    script = Script(
        lists=[page([], "10"), page([], "20")],
        watches=[
            httpx2.ConnectError("refused"),
            httpx2.ConnectError("refused"),
            [error(500)],
            httpx2.ConnectError("refused"),
        ],
    )
    await run(script)
    assert reconnects == [0, 1, 0]
    assert attempts == [0]  # the first error the server answered with, the first backoff


async def test_a_429_waits_for_retry_after_without_growing_the_backoff(
    attempts: list[int], pauses: list[str | None]
) -> None:
    """As a starting API server answers while its storage initialises."""
    initialising = httpx2.HTTPStatusError(
        "429", request=httpx2.Request("GET", "https://k"), response=too_many("1")
    )
    script = Script(
        lists=[initialising, initialising, page([], "10"), page([], "20")], watches=[[error(500)]]
    )
    watch, _ = await run(script)
    assert pauses == ["1", "1"]
    assert attempts == [0]  # the 500 after them is the first failure
    assert watch.counts.lists == 2


async def test_other_errors_back_off_and_list_afresh(attempts: list[int]) -> None:
    forbidden = httpx2.HTTPStatusError(
        "403", request=httpx2.Request("GET", "https://k"), response=httpx2.Response(403)
    )
    script = Script(
        lists=[forbidden, page([], "10"), page([], "30")],
        watches=[[error(500)]],
    )
    watch, _ = await run(script)
    assert watch.counts.errors == 2 and watch.counts.lists == 2
    assert attempts == [0, 1]
    assert script.watch_calls[-1]["resourceVersion"] == "30"


async def test_a_handler_bug_does_not_end_the_watch(attempts: list[int]) -> None:
    calls: list[str] = []

    def boom(kind: str, m: dict[str, Any]) -> None:
        calls.append(m["name"])
        if len(calls) == 1:
            raise RuntimeError("bug")

    script = Script(lists=[page([meta("a", "5")], "10"), page([meta("a", "5")], "11")], watches=[])
    watch = ListWatch(script, "/p", on_event=boom, on_listed=lambda keys: None)
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(script.done.wait(), 5)
    task.cancel()
    assert calls == ["a", "a"] and attempts == [0]


# --- scopes ------------------------------------------------------------------------------


class PathScript(Script):
    """Lists and watches answered per path; watches block. A list of a path in `held` waits
    until its event is set."""

    def __init__(self, lists: dict[str, dict[str, Any]]) -> None:
        super().__init__([], [])
        self.by_path = lists
        self.paths: list[str] = []
        self.held: dict[str, asyncio.Event] = {}

    async def list_metadata(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        self.paths.append(path)
        if path in self.held:
            await self.held[path].wait()
        return self.by_path.get(path, page([], "1"))

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        await asyncio.Event().wait()
        yield {}


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.listed: list[tuple[str | None, set[tuple[str, str]]]] = []

    def secret_event(self, event_type: str, m: dict[str, Any]) -> None:
        self.events.append((event_type, m.get("namespace", ""), m.get("name", "")))

    def secrets_listed(self, namespace: str | None, present: set[tuple[str, str]]) -> None:
        self.listed.append((namespace, present))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_cluster_wide_is_one_watch() -> None:
    api, sink = PathScript({"/api/v1/secrets": page([meta("s", "1", "a")], "2")}), Sink()
    watch = SecretWatch(api, sink, all_namespaces=True)
    watch.start()
    await settle()
    await watch.stop()
    assert api.paths == ["/api/v1/secrets"]
    assert sink.events == [("ADDED", "a", "s")] and sink.listed == [(None, {("a", "s")})]


async def test_named_namespaces_are_one_watch_each() -> None:
    api, sink = PathScript({}), Sink()
    watch = SecretWatch(api, sink, namespaces=["a", "b"])
    watch.start()
    await settle()
    await watch.stop()
    assert sorted(api.paths) == ["/api/v1/namespaces/a/secrets", "/api/v1/namespaces/b/secrets"]
    assert sorted(ns for ns, _ in sink.listed) == ["a", "b"]


async def test_patterns_follow_the_matching_namespaces() -> None:
    namespaces = page(
        [meta("shop-a", "1", ""), meta("other", "2", ""), meta("shop-b", "3", "")], "4"
    )
    api, sink = PathScript({"/api/v1/namespaces": namespaces}), Sink()
    watch = SecretWatch(api, sink, namespaces=["shop-*", "!shop-b"])
    watch.start()
    await settle()
    # "!shop-b" alone means "every namespace but shop-b", as Kopf reads it: other matches too
    assert set(watch.watches) == {"shop-a", "other", "shop-b"}
    watch._namespace_event("DELETED", {"name": "shop-a"})
    await settle()
    assert "shop-a" not in watch.watches
    assert ("shop-a", set()) in sink.listed  # its Secrets are gone with it
    watch._namespaces_listed({("", "other")})  # a re-list without shop-b
    assert set(watch.watches) == {"other"}
    await watch.stop()
    assert not watch._tasks and not watch._stopping


async def test_a_new_namespace_is_followed_only_if_it_matches() -> None:
    api, sink = PathScript({}), Sink()
    watch = SecretWatch(api, sink, namespaces=["shop-*"])
    for name in ("shop-1", "shopping", "x-shop-1"):
        watch._namespace_event("ADDED", {"name": name})
    assert set(watch.watches) == {"shop-1"}
    await watch.stop()


async def test_listed_waits_for_the_first_list_of_every_watch() -> None:
    api, sink = PathScript({}), Sink()
    slow = api.held["/api/v1/namespaces/b/secrets"] = asyncio.Event()
    watch = SecretWatch(api, sink, namespaces=["a", "b"])
    watch.start()
    listed = asyncio.create_task(watch.listed())
    await settle()
    assert [ns for ns, _ in sink.listed] == ["a"] and not listed.done()
    slow.set()
    async with asyncio.timeout(GUARD):
        await listed
    assert sorted(ns for ns, _ in sink.listed) == ["a", "b"]
    await watch.stop()


async def test_with_patterns_listed_waits_for_the_namespaces_and_then_their_secrets() -> None:
    namespaces = page([meta("shop-a", "1", ""), meta("other", "2", "")], "3")
    api, sink = PathScript({"/api/v1/namespaces": namespaces}), Sink()
    namespaces_slow = api.held["/api/v1/namespaces"] = asyncio.Event()
    secrets_slow = api.held["/api/v1/namespaces/shop-a/secrets"] = asyncio.Event()
    watch = SecretWatch(api, sink, namespaces=["shop-*"])
    watch.start()
    listed = asyncio.create_task(watch.listed())
    await settle()
    assert not watch.watches and not listed.done()
    namespaces_slow.set()
    await settle()
    assert set(watch.watches) == {"shop-a"} and not listed.done()
    secrets_slow.set()
    async with asyncio.timeout(GUARD):
        await listed
    assert sink.listed == [("shop-a", set())]
    await watch.stop()


# The examples of Kopf's documentation of -n patterns (`kopf run --namespace`), and more.
MYAPP = "myapp-*, !*-pr-*, *pr-123"
IMPLIED = "!*-pr-*, *pr-123"  # as if "*, !*-pr-*, *pr-123"


@pytest.mark.parametrize(
    ("patterns", "namespace", "taken"),
    [
        ([MYAPP], "myapp-test", True),
        ([MYAPP], "myapp-live", True),
        ([MYAPP], "myapp-pr-123", True),  # excluded, then taken back
        ([MYAPP], "myapp-pr-456", False),
        ([MYAPP], "otherapp-pr-123", False),  # the first glob never took it
        ([MYAPP], "otherapp-live", False),
        ([IMPLIED], "myapp-test", True),
        ([IMPLIED], "myapp-live", True),
        ([IMPLIED], "myapp-pr-123", True),
        ([IMPLIED], "anyapp-anything", True),
        ([IMPLIED], "otherapp-pr-123", True),  # the implied * took it
        ([IMPLIED], "myapp-pr-456", False),
        (["myapp-*,!*-pr-*,*-pr-123"], "myapp-pr-123", True),  # spaces or none
        (["myapp-*,!*-pr-*,*-pr-123"], "otherapp-pr-123", False),
        (["shop-*"], "shop-1", True),
        (["shop-*"], "shopping", False),
        (["shop-*"], "x-shop-1", False),
        (["shop-*"], "Shop-1", False),  # case counts
        (["shop-?"], "shop-1", True),
        (["shop-?"], "shop-12", False),
        (["!kube-*"], "kube-system", False),
        (["!kube-*"], "default", True),
        (["shop-*, !shop-b"], "shop-b", False),
        (["shop-*, !shop-b"], "other", False),
        # Several patterns: any of them.
        (["shop-*", "team-?"], "team-a", True),
        (["shop-*", "team-?"], "shop-x", True),
        (["shop-*", "team-?"], "team-ab", False),
        (["shop-*", "!shop-b"], "shop-b", True),  # shop-* takes it
        (["shop-*", "!shop-b"], "other", True),  # !shop-b takes it
        (["myapp-*, !*-pr-*", "*-pr-123"], "otherapp-pr-123", True),
        (["myapp-*, !*-pr-*", "*-pr-9"], "myapp-pr-123", False),
        ([], "default", False),
    ],
)
def test_patterns_match_by_kopfs_documented_rule(
    patterns: list[str], namespace: str, taken: bool
) -> None:
    assert matches(patterns, namespace) is taken


def test_only_globs_and_negations_are_patterns() -> None:
    assert has_patterns(["shop-*"]) and has_patterns(["a", "!b"]) and has_patterns(["ns-?"])
    assert not has_patterns(["a", "b-c"]) and not has_patterns([])


# --- the wire: Kube's list and watch -------------------------------------------------------


class Request:
    def __init__(self, head: bytes) -> None:
        lines = head.decode().split("\r\n")
        self.method, target, _ = lines[0].split(" ", 2)
        self.path, _, query = target.partition("?")
        self.params = dict(parse_qsl(query))
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }


Respond = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Api:
    """A loopback API server: `respond` answers each request (and may keep the connection
    for a stream); every request is kept, parsed."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.changed = asyncio.Condition()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = Request(await reader.readuntil(b"\r\n\r\n"))
                self.requests.append(request)
                async with self.changed:
                    self.changed.notify_all()
                await self.respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD), self.changed:
            await self.changed.wait_for(condition)


Serve = Callable[[Respond], Awaitable[tuple[Api, str]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(respond: Respond) -> tuple[Api, str]:
        api = Api(respond)
        srv = await asyncio.start_server(api.serve, "127.0.0.1", 0)
        servers.append(srv)
        return api, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


def whole(status: int, doc: Any, *headers: str) -> bytes:
    body = json.dumps(doc).encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def streamed(events: list[dict[str, Any]], *, end: bool = True) -> bytes:
    """A watch's answer: one event a line, each in a chunk of its own; `end`: the server
    ends the stream (its timeoutSeconds)."""
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for item in events:
        line = json.dumps(item).encode() + b"\n"
        out += f"{len(line):x}\r\n".encode() + line + b"\r\n"
    return out + (b"0\r\n\r\n" if end else b"")


async def hang_up(reader: asyncio.StreamReader) -> None:
    """Until the client closes the connection."""
    while await reader.read(65536):
        pass
    raise ConnectionError("the client hung up")


def kube_at(url: str) -> Kube:
    return Kube(kopf.ConnectionInfo(server=url, token="t"))


async def test_list_and_watch_ask_for_metadata_only(serve: Serve) -> None:
    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if request.params.get("watch"):
            writer.write(streamed([event("ADDED", meta("a", "2")), error(410)]))
        else:
            writer.write(whole(200, page([meta("a", "1")], "1")))
        await writer.drain()

    api, url = await serve(respond)
    kube = kube_at(url)
    try:
        body = await kube.list_metadata("/api/v1/secrets", {"limit": "5"})
        events = [
            e async for e in kube.watch_metadata("/api/v1/secrets", {"resourceVersion": "1"}, 9)
        ]
    finally:
        await kube.aclose()
    assert body["items"][0]["metadata"]["name"] == "a"
    assert [e["type"] for e in events] == ["ADDED", "ERROR"]  # a 410 event is the loop's
    listing, watching = api.requests
    assert listing.method == "GET" and listing.path == "/api/v1/secrets"
    assert listing.params == {"limit": "5"}
    assert listing.headers["accept"] == META_LIST and "PartialObjectMetadataList" in META_LIST
    assert watching.headers["accept"] == META_WATCH and "PartialObjectMetadata;" in META_WATCH
    assert watching.params == {"watch": "true", "resourceVersion": "1"}
    assert listing.headers["authorization"] == watching.headers["authorization"] == "Bearer t"


@pytest.mark.parametrize("call", ["list", "watch"])
@pytest.mark.parametrize(
    ("code", "raised"),
    [(410, Gone), (403, httpx2.HTTPStatusError), (429, httpx2.HTTPStatusError)],
)
async def test_a_refused_list_or_watch_raises_what_the_loop_catches(
    serve: Serve, call: str, code: int, raised: type[Exception]
) -> None:
    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(whole(code, {"kind": "Status", "code": code}, "Retry-After: 7"))
        await writer.drain()

    api, url = await serve(respond)
    kube = kube_at(url)
    try:
        with pytest.raises(raised) as caught:
            if call == "list":
                await kube.list_metadata("/api/v1/secrets", {"continue": "old"})
            else:
                async for _ in kube.watch_metadata("/api/v1/secrets", {}, 9):
                    pass
    finally:
        await kube.aclose()
    if isinstance(caught.value, httpx2.HTTPStatusError):
        assert caught.value.response.status_code == code
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.response.json() == {"kind": "Status", "code": code}
    assert len(api.requests) == 1


async def test_the_loop_over_the_wire(
    serve: Serve, attempts: list[int], pauses: list[str | None]
) -> None:
    """The loop on Kube against a server that asks for a pause, lists, streams events (one
    of them a Secret whose metadata is far over 64 KiB) and a bookmark, and ends the stream."""
    annotations = {"big": "x" * 200_000}
    first_list = True

    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal first_list
        if not request.params.get("watch"):
            if first_list:
                first_list = False
                writer.write(whole(429, {"kind": "Status"}, "Retry-After: 2"))
            else:
                writer.write(whole(200, page([meta("a", "5")], "10")))
        elif request.params["resourceVersion"] == "10":
            big = {**meta("b", "11"), "annotations": annotations}
            bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}
            writer.write(streamed([event("ADDED", big), bookmark]))
        else:
            writer.write(streamed([], end=False))  # a quiet stream
            await writer.drain()
            await hang_up(reader)
        await writer.drain()

    api, url = await serve(respond)
    kube = kube_at(url)
    seen: list[dict[str, Any]] = []
    watch = ListWatch(
        kube, "/api/v1/secrets", on_event=lambda kind, m: seen.append(m), on_listed=lambda k: None
    )
    task = asyncio.create_task(watch.run())
    try:
        await api.until(lambda: len(api.requests) == 4)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await kube.aclose()
    assert [(r.params.get("watch"), r.params.get("resourceVersion")) for r in api.requests] == [
        (None, None),
        (None, None),
        ("true", "10"),
        ("true", "12"),  # from the bookmark
    ]
    assert [m["name"] for m in seen] == ["a", "b"]
    assert seen[1]["annotations"] == annotations
    assert pauses == ["2"] and attempts == []  # the 429 is a pause, not a failure
    assert watch.counts.lists == 1 and watch.counts.bookmarks == 1


async def test_a_named_watch_gives_the_object_and_nothing_once_deleted(serve: Serve) -> None:
    obj = {"metadata": meta("p", "1"), "spec": {"x": 1}}
    changed = {"metadata": meta("p", "2"), "spec": {"x": 2}}

    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            streamed(
                [
                    {"type": "ADDED", "object": obj},
                    {"type": "MODIFIED", "object": changed},
                    {"type": "DELETED", "object": changed},
                ]
            )
        )
        await writer.drain()

    api, url = await serve(respond)
    kube = kube_at(url)
    try:
        seen = [o async for o in kube.watch("/apis/x/v1/namespaces/ns/things", "p")]
    finally:
        await kube.aclose()
    assert seen == [obj, changed, {}]
    (request,) = api.requests
    assert request.path == "/apis/x/v1/namespaces/ns/things"
    assert request.params["fieldSelector"] == "metadata.name=p"
    assert request.params["watch"] == "1" and int(request.params["timeoutSeconds"]) > 0
    assert request.headers["accept"] == "application/json"


class Login:
    """Kube's login, counted: a token read again after a 401, as a rotated one is."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tokens = iter(["old-token", "new-token"])
        self.url = url
        self.calls = 0
        self.done = asyncio.Event()
        monkeypatch.setattr("llmconn.controller.kube.login", self.login)

    def login(self) -> kopf.ConnectionInfo:
        self.calls += 1
        if self.calls > 1:
            self.done.set()
        return kopf.ConnectionInfo(server=self.url, token=next(self.tokens))


async def test_a_401_on_a_watch_logs_in_again_for_the_next(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if request.headers["authorization"] == "Bearer old-token":
            writer.write(whole(401, {"kind": "Status", "code": 401}))
        else:
            writer.write(streamed([event("ADDED", meta("a", "2"))]))
        await writer.drain()

    api, url = await serve(respond)
    login = Login(url, monkeypatch)
    kube = Kube()
    try:
        with pytest.raises(httpx2.HTTPStatusError) as caught:
            async for _ in kube.watch_metadata("/api/v1/secrets", {}, 9):
                pass
        assert caught.value.response.status_code == 401
        events = [e async for e in kube.watch_metadata("/api/v1/secrets", {}, 9)]
    finally:
        await kube.aclose()
    assert [e["type"] for e in events] == ["ADDED"] and login.calls == 2
    assert [r.headers["authorization"] for r in api.requests] == [
        "Bearer old-token",
        "Bearer new-token",
    ]


async def test_a_401_whose_body_comes_late_is_still_a_401(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    login: Login
    body = json.dumps({"kind": "Status", "code": 401}).encode()

    async def respond(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(f"HTTP/1.1 401 X\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.05)  # the body comes after the head
        writer.write(body)
        await writer.drain()

    _, url = await serve(respond)
    login = Login(url, monkeypatch)
    kube = Kube()
    try:
        with pytest.raises(httpx2.HTTPStatusError) as caught:
            async for _ in kube.watch_metadata("/api/v1/secrets", {}, 9):
                pass
    finally:
        await kube.aclose()
    assert caught.value.response.status_code == 401
    assert login.calls == 2  # and the next watch goes out with a fresh token


async def test_a_new_token_does_not_cut_the_requests_and_watches_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login = Login("https://127.0.0.1:9", monkeypatch)
    kube = Kube()
    wires = (kube._wire, kube._streams)
    try:
        assert await kube._relogin()
        assert (kube._wire, kube._streams) == wires  # same server and TLS: same wires
        assert kube._headers["Authorization"] == "Bearer new-token"
        assert login.calls == 2
    finally:
        await kube.aclose()


# --- the Reconciler's Secret cache ---------------------------------------------------------


def secret_body(rv: str, **data: str) -> SecretData:
    return SecretData(data={k: v.encode() for k, v in data.items()}, resource_version=rv)


class FakeKube:
    """Secrets by key; each read can be held until the test lets it go."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], SecretData] = {}
        self.reads: list[tuple[str, str]] = []
        self.gates: list[asyncio.Event] = []

    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        self.reads.append((namespace, name))
        value = self.store.get((namespace, name))  # what the server has when it answers...
        if self.gates:
            await self.gates.pop(0).wait()  # ...which may reach us much later
        return value


def connection(name: str, secret: str = "creds", rv_seen: str | None = None) -> dict[str, Any]:
    status = {"observedSecrets": [{"name": secret, "resourceVersion": rv_seen}]} if rv_seen else {}
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "provider": "openai-compatible",
            "endpoint": "http://127.0.0.1:9/v1",
            "model": "m",
            "apiKeySecretRef": {"name": secret, "key": "apiKey"},
        },
        "status": {"observedGeneration": 1, **status},
    }


@pytest.fixture
def rec() -> Any:
    kube = FakeKube()
    r = Reconciler(
        kube,
        ClientPool(EgressPolicy.from_strings(), resolver=loopback_only, proxies={}),
        Defaults(),
        Metrics(),
    )  # type: ignore[arg-type]
    r.triggered = []  # type: ignore[attr-defined]
    r._trigger = lambda conn: r.triggered.append(conn.name)  # type: ignore[method-assign, attr-defined]
    r.scheduler.at = lambda key, due: None  # type: ignore[method-assign]
    return r


async def drain(r: Reconciler) -> None:
    while r.secret_cache._refreshing:
        await asyncio.gather(*r.secret_cache._refreshing.values())


async def used(r: Reconciler, name: str, secret: str = "creds") -> SecretData | None:
    """What a validation of connection `name` reads (and records)."""
    return await RecordingSecrets(r.secret_cache, r.conns[("ns", name)]).get(secret)


async def test_an_unreferenced_secret_is_never_read(rec: Any) -> None:
    rec.connection_event("ADDED", connection("c"))
    for rv in ("1", "2", "3"):
        rec.secret_cache.secret_event("MODIFIED", meta("helm-release", rv))
    rec.secret_cache.secret_event("DELETED", meta("helm-release", "4"))
    await drain(rec)
    assert rec.kube.reads == [] and rec.triggered == [] and rec.secret_cache.data == {}


async def test_a_change_to_the_used_key_is_read_and_revalidates(rec: Any) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="old")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    assert (await used(rec, "c")).data["apiKey"] == b"old"  # type: ignore[union-attr]
    # kept: the watch has seen "1"
    assert rec.secret_cache.data[("ns", "creds")].resource_version == "1"
    rec.kube.store[("ns", "creds")] = secret_body("2", apiKey="new")
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "2"))
    await drain(rec)
    assert rec.kube.reads == [("ns", "creds")] * 2 and rec.triggered == ["c"]
    assert rec.secret_cache.data[("ns", "creds")].data["apiKey"] == b"new"


async def test_a_change_to_another_key_is_read_but_does_not_revalidate(rec: Any) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="k")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    rec.kube.store[("ns", "creds")] = secret_body("2", apiKey="k", other="x")
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "2"))
    await drain(rec)
    assert len(rec.kube.reads) == 2 and rec.triggered == []


async def test_a_relist_of_known_versions_reads_nothing(rec: Any) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="k")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.secret_cache.secrets_listed("ns", {("ns", "creds")})
    await drain(rec)
    assert len(rec.kube.reads) == 1 and rec.triggered == []


async def test_a_deletion_drops_the_secret_and_revalidates(rec: Any) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="k")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    rec.secret_cache.secret_event("DELETED", meta("creds", "1"))
    assert ("ns", "creds") not in rec.secret_cache.data and rec.triggered == ["c"]


async def test_a_relist_without_the_secret_counts_as_its_deletion(rec: Any) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="k")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.secret_cache.secret_event("ADDED", meta("unrelated", "7"))
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    # another namespace's list says nothing about ours
    rec.secret_cache.secrets_listed("other-ns", set())
    assert rec.triggered == []
    rec.secret_cache.secrets_listed("ns", {("ns", "unrelated")})
    assert ("ns", "creds") not in rec.secret_cache.data and rec.triggered == ["c"]
    assert ("ns", "creds") not in rec.secret_cache.versions


async def test_after_a_restart_the_version_the_last_probe_used_does_not_revalidate(
    rec: Any,
) -> None:
    rec.kube.store[("ns", "creds")] = secret_body("5", apiKey="k")
    rec.connection_event("ADDED", connection("c", rv_seen="5"))
    rec.secret_cache.secret_event("ADDED", meta("creds", "5"))
    await drain(rec)
    assert rec.triggered == []
    # ...and its digest is known, so a change to another key still does not re-validate
    rec.kube.store[("ns", "creds")] = secret_body("6", apiKey="k", other="x")
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "6"))
    await drain(rec)
    assert rec.triggered == []


async def test_a_slow_read_never_overwrites_a_newer_version(rec: Any) -> None:
    """A validation's cache-miss read answered with version 1 arrives after the watch brought
    version 2 and its own read stored it: the cache must keep version 2."""
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="old")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    slow = asyncio.Event()
    rec.kube.gates.append(slow)
    validation = asyncio.ensure_future(used(rec, "c"))
    await settle()  # the validation's read has its answer (version 1) on the way
    rec.kube.store[("ns", "creds")] = secret_body("2", apiKey="new")
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "2"))
    await drain(rec)
    assert rec.secret_cache.data[("ns", "creds")].resource_version == "2"
    slow.set()
    assert (await validation).resource_version == "1"  # type: ignore[union-attr]
    assert rec.secret_cache.data[("ns", "creds")].resource_version == "2"


async def test_a_read_that_races_the_watch_reads_again(rec: Any) -> None:
    """The watch reports version 3 while the read for version 2 is in flight: one more read,
    and the cache ends at version 3."""
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="a")
    rec.secret_cache.secret_event("ADDED", meta("creds", "1"))
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    rec.kube.store[("ns", "creds")] = secret_body("2", apiKey="b")
    gate = asyncio.Event()
    rec.kube.gates.append(gate)
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "2"))
    await settle()
    rec.kube.store[("ns", "creds")] = secret_body("3", apiKey="c")
    rec.secret_cache.secret_event("MODIFIED", meta("creds", "3"))
    gate.set()
    await drain(rec)
    assert rec.secret_cache.data[("ns", "creds")].resource_version == "3"
    assert len(rec.kube.reads) == 3 and rec.triggered == ["c"]


async def test_a_secret_the_watch_does_not_see_is_read_afresh_each_time(rec: Any) -> None:
    """With a label selector, an unlabeled Secret never comes through the watch: caching it
    would keep its first version for ever."""
    rec.kube.store[("ns", "creds")] = secret_body("1", apiKey="a")
    rec.connection_event("ADDED", connection("c"))
    await used(rec, "c")
    rec.kube.store[("ns", "creds")] = secret_body("2", apiKey="b")
    assert (await used(rec, "c")).data["apiKey"] == b"b"  # type: ignore[union-attr]
    assert rec.secret_cache.data == {} and len(rec.kube.reads) == 2
