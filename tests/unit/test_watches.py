"""The metadata-only Secret watch without a cluster: the loop's decisions (list, bookmark,
410 Gone, errors and backoff), its scopes, the wire format of its requests, and what the
Reconciler does with Secret metadata (read only referenced Secrets, never keep a stale read).
The same paths run against a real API server in tests/e2e/test_secret_watch.py."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import kopf
import pytest

from llmconn import watches
from llmconn.egress import EgressPolicy
from llmconn.http import ClientPool
from llmconn.kube import META_LIST, META_WATCH, Gone, Kube
from llmconn.metrics import Metrics
from llmconn.reconciler import Reconciler
from llmconn.transport import AiohttpTransport
from llmconn.verdict import Defaults, SecretData
from llmconn.watches import (
    ConnectionWatch,
    ListWatch,
    SecretWatch,
    backoff,
    reconnect_delay,
    retry_after,
)

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

    async def list_metadata(
        self, path: str, params: dict[str, str], *, whole: bool = False
    ) -> dict[str, Any]:
        self.list_calls.append(dict(params))
        if not self.lists:
            await self._block()
        step = self.lists.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[no-any-return]

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float, *, whole: bool = False
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
    """Lists and watches answered per path; watches block."""

    def __init__(self, lists: dict[str, dict[str, Any]]) -> None:
        super().__init__([], [])
        self.by_path = lists
        self.paths: list[str] = []
        self.whole: list[bool] = []

    async def list_metadata(
        self, path: str, params: dict[str, str], *, whole: bool = False
    ) -> dict[str, Any]:
        self.paths.append(path)
        self.whole.append(whole)
        return self.by_path.get(path, page([], "1"))

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float, *, whole: bool = False
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


async def test_patterns_match_as_kopf_matches() -> None:
    api, sink = PathScript({}), Sink()
    watch = SecretWatch(api, sink, namespaces=["shop-*"])
    for name in ("shop-1", "shopping", "x-shop-1"):
        watch._namespace_event("ADDED", {"name": name})
    assert set(watch.watches) == {"shop-1"}
    await watch.stop()


class ConnectionSink:
    def __init__(self) -> None:
        self.objects: list[tuple[str | None, dict[str, Any]]] = []
        self.listed: list[tuple[str | None, set[tuple[str, str]]]] = []

    def connection_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.objects.append((event_type, body))

    def connections_listed(self, namespace: str | None, present: set[tuple[str, str]]) -> None:
        self.listed.append((namespace, present))


async def test_connections_are_listed_and_watched_as_whole_objects() -> None:
    path = "/apis/llmconn.dev/v1alpha1/namespaces/a/llmconnections"
    whole = {"metadata": meta("c", "1", "a"), "spec": {"provider": "openai"}}
    api, sink = (
        PathScript({path: {"metadata": {"resourceVersion": "2"}, "items": [whole]}}),
        (ConnectionSink()),
    )
    watch = ConnectionWatch(api, sink, namespaces=["a", "b"])
    watch.start()
    await settle()
    await watch.stop()
    assert sorted(api.paths) == [path, path.replace("/a/", "/b/")] and api.whole == [True, True]
    assert sink.objects == [("ADDED", whole)]  # the spec too, not only the metadata
    assert sorted(sink.listed, key=str) == [("a", {("a", "c")}), ("b", set())]


async def test_connections_are_listed_after_the_secrets() -> None:
    # A first validation's own read of a Secret must not be taken for a change of it.
    api, order = PathScript({}), []
    held = asyncio.Event()
    listing = api.list_metadata

    async def list_metadata(path: str, params: dict[str, str], *, whole: bool = False) -> Any:
        if not whole:
            await held.wait()  # the Secrets' list takes a while
        order.append("connections" if whole else "secrets")
        return await listing(path, params, whole=whole)

    api.list_metadata = list_metadata  # type: ignore[method-assign]
    secrets_watch = SecretWatch(api, Sink(), namespaces=["a"])
    connections = ConnectionWatch(api, ConnectionSink(), namespaces=["a"])
    secrets_watch.start()
    connections.start(after=secrets_watch)
    await settle()
    assert order == [] and not connections.watches
    held.set()
    await settle()
    assert order == ["secrets", "connections"]
    await connections.stop()
    await secrets_watch.stop()


async def test_connections_do_not_wait_for_secrets_forever(monkeypatch: Any) -> None:
    monkeypatch.setattr(watches, "FIRST_LIST_WAIT", 0.01)
    api = PathScript({})
    never = asyncio.Event()

    async def stuck(path: str, params: dict[str, str], *, whole: bool = False) -> Any:
        if not whole:
            await never.wait()
        return page([], "1")

    api.list_metadata = stuck  # type: ignore[method-assign]
    secrets_watch = SecretWatch(api, Sink(), namespaces=["a"])
    connections = ConnectionWatch(api, ConnectionSink(), namespaces=["a"])
    secrets_watch.start()
    connections.start(after=secrets_watch)
    await asyncio.sleep(0.05)
    assert set(connections.watches) == {"a"}
    await connections.stop()
    await secrets_watch.stop()


async def test_cluster_wide_connections_are_one_watch() -> None:
    api, sink = PathScript({}), ConnectionSink()
    watch = ConnectionWatch(api, sink, all_namespaces=True)
    watch.start()
    await settle()
    await watch.stop()
    assert api.paths == ["/apis/llmconn.dev/v1alpha1/llmconnections"]


# --- the wire: Kube's list and watch -------------------------------------------------------


class MockKube(Kube):
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        super().__init__(kopf.ConnectionInfo(server="https://k8s.test", token="t"))

    def _make_client(self, transport: AiohttpTransport) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=self._server, transport=httpx2.MockTransport(self.handler)
        )


async def test_list_and_watch_ask_for_metadata_only() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.url.params.get("watch"):
            lines = [json.dumps(event("ADDED", meta("a", "2"))), json.dumps(error(410))]
            return httpx2.Response(200, content="\n".join(lines).encode() + b"\n")
        return httpx2.Response(200, json=page([meta("a", "1")], "1"))

    kube = MockKube(handler)
    body = await kube.list_metadata("/api/v1/secrets", {"limit": "5"})
    events = [e async for e in kube.watch_metadata("/api/v1/secrets", {"resourceVersion": "1"}, 9)]
    await kube.aclose()
    assert body["items"][0]["metadata"]["name"] == "a"
    assert [e["type"] for e in events] == ["ADDED", "ERROR"]
    listing, watching = seen
    assert listing.headers["accept"] == META_LIST and "PartialObjectMetadataList" in META_LIST
    assert watching.headers["accept"] == META_WATCH and "PartialObjectMetadata;" in META_WATCH
    assert watching.url.params["watch"] == "true" and watching.url.params["resourceVersion"] == "1"


async def test_whole_objects_are_asked_for_as_plain_json() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.url.params.get("watch"):
            return httpx2.Response(200, content=json.dumps(event("ADDED", meta("a", "2"))).encode())
        return httpx2.Response(200, json=page([meta("a", "1")], "1"))

    kube = MockKube(handler)
    path = "/apis/llmconn.dev/v1alpha1/llmconnections"
    await kube.list_metadata(path, {}, whole=True)
    events = [e async for e in kube.watch_metadata(path, {}, 9, whole=True)]
    await kube.aclose()
    assert [e["type"] for e in events] == ["ADDED"]
    assert all("PartialObjectMetadata" not in r.headers.get("accept", "") for r in seen)


@pytest.mark.parametrize("call", ["list", "watch"])
async def test_http_410_is_gone(call: str) -> None:
    kube = MockKube(lambda request: httpx2.Response(410, json={"code": 410}))
    with pytest.raises(Gone):
        if call == "list":
            await kube.list_metadata("/api/v1/secrets", {"continue": "old"})
        else:
            async for _ in kube.watch_metadata("/api/v1/secrets", {}, 9):
                pass
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
    r = Reconciler(kube, ClientPool(EgressPolicy.from_strings(), proxies={}), Defaults(), Metrics())  # type: ignore[arg-type]
    r.triggered = []  # type: ignore[attr-defined]
    r._trigger = lambda conn: r.triggered.append(conn.name)  # type: ignore[method-assign, attr-defined]
    r.scheduler.at = lambda key, due: None  # type: ignore[method-assign]
    return r


async def drain(r: Reconciler) -> None:
    while r.secret_cache._refreshing:
        await asyncio.gather(*r.secret_cache._refreshing.values())


async def used(r: Reconciler, name: str, secret: str = "creds") -> SecretData | None:
    """What a validation of connection `name` reads (and records)."""
    from llmconn.secretcache import RecordingSecrets

    return await RecordingSecrets(r.secret_cache, r.conns[("ns", name)]).get(secret)


def test_a_list_forgets_what_it_no_longer_holds_in_its_namespace(rec: Any) -> None:
    rec.connection_event("ADDED", connection("kept"))
    rec.connection_event("ADDED", connection("gone"))
    other = connection("elsewhere")
    other["metadata"]["namespace"] = "other"
    rec.connection_event("ADDED", other)
    rec.connections_listed("ns", {("ns", "kept")})  # deleted while the watch was away
    assert set(rec.conns) == {("ns", "kept"), ("other", "elsewhere")}
    rec.connections_listed(None, set())  # a cluster-wide list covers every namespace
    assert rec.conns == {}


def test_a_standing_by_replica_ignores_connection_events(rec: Any) -> None:
    rec.pause()
    rec.connection_event("ADDED", connection("c"))
    assert rec.conns == {} and rec.triggered == []  # listed afresh when active again


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
