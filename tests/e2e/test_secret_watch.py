"""The metadata-only Secret watch on a real API server: what crosses the wire, bookmarks,
410 Gone, an API server restart, and the operator reading only the Secrets it uses.

These tests run on a control plane of their own, whose kube-apiserver they stop and start
(on the same port, with the same etcd), and where nothing else reads Secrets, so that the
apiserver's own request counters tell exactly how many Secrets the operator read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets as pysecrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from opkit import OperatorProcess, wait_for
from ownplane import (  # the fixtures are used by name
    BAD_KEY,
    GOOD_KEY,
    ROTATED_KEY,
    Api,
    api,
    logs,
    plane,
    provider,
    restart_apiserver,
)

from controlplane.cluster import ControlPlane
from llmconn.controller.kube import Kube
from llmconn.controller.watches import ListWatch, SecretWatch

# --- the loop in this process, against the real API server --------------------------------


class TeeKube(Kube):
    """The operator's client, keeping every watch request's parameters and raw event."""

    def __init__(self, cp: ControlPlane) -> None:
        super().__init__(
            kopf.ConnectionInfo(server=cp.server, ca_path=str(cp.ca_file), token=cp.token)
        )
        self.watch_params: list[dict[str, str]] = []
        self.raw: list[str] = []

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.watch_params.append(dict(params))
        async for item in super().watch_metadata(path, params, read_timeout):
            self.raw.append(json.dumps(item))
            yield item


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.listed: list[set[tuple[str, str]]] = []

    def on_event(self, kind: str, meta: dict[str, Any]) -> None:
        self.events.append((kind, meta.get("name", "")))

    def on_listed(self, present: set[tuple[str, str]]) -> None:
        self.listed.append(present)


async def until(what: str, check: Callable[[], Any], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def running(watch: ListWatch) -> asyncio.Task[None]:
    task = asyncio.create_task(watch.run())
    await until("the first list", lambda: watch.counts.lists >= 1)
    return task


async def stop(task: asyncio.Task[None], kube: Kube) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await kube.aclose()


async def test_changes_arrive_as_metadata_without_the_data(plane: ControlPlane, api: Api) -> None:
    ns = api.namespace("meta")
    canary = "canary-" + pysecrets.token_hex(16)
    api.secret(ns, "before", {"k": canary})
    kube, seen = TeeKube(plane), Seen()
    watch = ListWatch(
        kube,
        f"/api/v1/namespaces/{ns}/secrets",
        on_event=seen.on_event,
        on_listed=seen.on_listed,
    )
    task = await running(watch)
    try:
        assert seen.events == [("ADDED", "before")] and seen.listed == [{(ns, "before")}]
        api.secret(ns, "after", {"k": canary})
        api.secret(ns, "after", {"k": canary + "2"})
        api.delete_secret(ns, "after")
        await until("three events", lambda: len(seen.events) == 4)
    finally:
        await stop(task, kube)
    assert seen.events[1:] == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]
    wire = "\n".join(kube.raw)
    assert '"PartialObjectMetadata"' in wire and '"data"' not in wire
    for form in (canary, base64.b64encode(canary.encode()).decode()):
        assert form not in wire


async def test_bookmarks_move_a_quiet_watch_forward(plane: ControlPlane, api: Api) -> None:
    quiet, busy = api.namespace("quiet"), api.namespace("busy")
    kube, seen = TeeKube(plane), Seen()
    # The server sends a bookmark shortly before a watch's timeout when the store has moved.
    watch = ListWatch(
        kube,
        f"/api/v1/namespaces/{quiet}/secrets",
        on_event=seen.on_event,
        on_listed=seen.on_listed,
        server_timeout=4,
    )
    task = await running(watch)
    listed_at = int(watch.resource_version or 0)
    try:
        for i in range(60):  # writes elsewhere move the store's resourceVersion
            if watch.counts.bookmarks and len(kube.watch_params) >= 2:
                break
            await asyncio.to_thread(api.secret, busy, f"s{i}", {"k": "v"})
            await asyncio.sleep(0.5)
    finally:
        await stop(task, kube)
    assert watch.counts.bookmarks >= 1, "no bookmark arrived"
    assert seen.events == []  # a bookmark is not an event
    resumed = int(kube.watch_params[1]["resourceVersion"])
    assert resumed > listed_at  # the next watch started where the bookmark said
    assert watch.counts.lists == 1 and watch.counts.gone == 0


async def test_a_compacted_version_is_gone_and_listed_again(plane: ControlPlane, api: Api) -> None:
    ns = api.namespace("gone")
    api.secret(ns, "a", {"k": "v"})
    api.secret(ns, "b", {"k": "v"})
    # A fresh apiserver's watch cache starts at the store's current version: version 1 is
    # too old for it, as a version compacted away while a client was disconnected would be.
    await asyncio.to_thread(restart_apiserver, plane)
    api.delete_secret(ns, "b")
    kube, seen = TeeKube(plane), Seen()
    watch = ListWatch(
        kube, f"/api/v1/namespaces/{ns}/secrets", on_event=seen.on_event, on_listed=seen.on_listed
    )
    watch.resource_version = "1"  # resume from a version long gone
    task = asyncio.create_task(watch.run())
    try:
        await until("a list after 410 Gone", lambda: watch.counts.lists >= 1)
    finally:
        await stop(task, kube)
    assert kube.watch_params[0]["resourceVersion"] == "1"
    assert '"code": 410' in kube.raw[0]  # the server's answer: an ERROR event, 410 Expired
    assert watch.counts.gone == 1 and watch.counts.errors == 0
    assert seen.listed == [{(ns, "a")}]  # and the list tells that "b" went meanwhile


async def test_the_watch_comes_back_after_an_apiserver_restart(
    plane: ControlPlane, api: Api
) -> None:
    ns = api.namespace("restart")
    kube, seen = TeeKube(plane), Seen()
    sink = _Sink(seen)
    watch = SecretWatch(kube, sink, namespaces=[ns])
    watch.start()
    await until("the first list", lambda: seen.listed)
    await asyncio.to_thread(restart_apiserver, plane)
    api.secret(ns, "after-restart", {"k": "v"})
    try:
        await until(
            "the Secret made after the restart", lambda: ("ADDED", "after-restart") in seen.events
        )
        loop = watch.watches[ns]
        assert loop.counts.errors >= 1  # it did see the server go
    finally:
        await watch.stop()
        await kube.aclose()
    assert all(task.done() for task in watch._tasks.values()) and not watch._tasks


class _Sink:
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def secret_event(self, event_type: str, meta: dict[str, Any]) -> None:
        self.seen.on_event(event_type, meta)

    def secrets_listed(self, namespace: str | None, present: set[tuple[str, str]]) -> None:
        self.seen.on_listed(present)


# --- the operator as a process --------------------------------------------------------------


def test_rotation_of_a_referenced_secret_flips_the_verdict(
    plane: ControlPlane, api: Api, provider: str, logs: Path
) -> None:
    ns = api.namespace("rotate")
    op = OperatorProcess(plane, logs, "-A", "--default-interval", "1h").start()
    try:
        api.secret(ns, "creds", {"apiKey": BAD_KEY})
        api.connection(ns, "c", provider)
        api.ready(ns, "c", "False")
        rv = api.secret(ns, "creds", {"apiKey": ROTATED_KEY})
        status = api.ready(ns, "c", "True")
        assert status["observedSecrets"][0]["resourceVersion"] == rv
    finally:
        assert op.stop() == 0, op.log()[-3000:]


def test_unrelated_secret_changes_cause_no_read_and_no_validation(
    plane: ControlPlane, api: Api, provider: str, logs: Path
) -> None:
    ns = api.namespace("unrelated")
    op = OperatorProcess(plane, logs, "-n", ns, "--default-interval", "1h").start()
    try:
        api.secret(ns, "creds", {"apiKey": GOOD_KEY})
        api.connection(ns, "c", provider)
        api.ready(ns, "c", "True")
        reads, validations = api.secret_reads(), op.validations()
        big = "x" * 100 * 1024
        for i in range(10):  # like Helm release Secrets: large, and nobody references them
            api.secret(ns, f"release-{i}", {"release": big})
            api.secret(ns, f"release-{i}", {"release": big + "2"})
        for i in range(5):
            api.delete_secret(ns, f"release-{i}")
        # The same watch stream brings this change after all the others: once the operator
        # has validated with it, it has seen every unrelated change before it.
        rv = api.secret(ns, "creds", {"apiKey": ROTATED_KEY})
        wait_for(
            "the validation of the rotated key",
            lambda: (
                api.status(ns, "c").get("observedSecrets", [{}])[0].get("resourceVersion") == rv
            ),
        )
        assert api.secret_reads() - reads == 1  # "creds", once; no unrelated Secret was read
        assert op.validations() - validations == 1  # for "creds" only
    finally:
        assert op.stop() == 0, op.log()[-3000:]


def test_label_selector_narrows_the_watch_and_unlabeled_secrets_are_read_on_demand(
    plane: ControlPlane, api: Api, provider: str, logs: Path
) -> None:
    ns = api.namespace("selector")
    label = {"llmconn.dev/watch": "true"}
    op = OperatorProcess(
        plane, logs, "-n", ns, "--default-interval", "1h",
        "--secret-label-selector", "llmconn.dev/watch=true",
    ).start()  # fmt: skip
    try:
        api.secret(ns, "labeled", {"apiKey": GOOD_KEY}, labels=label)
        api.secret(ns, "plain", {"apiKey": GOOD_KEY})
        api.connection(ns, "watched", provider, secret="labeled")
        api.connection(ns, "unwatched", provider, secret="plain")
        api.ready(ns, "watched", "True")
        api.ready(ns, "unwatched", "True")  # an unlabeled Secret is read when validated
        api.secret(ns, "labeled", {"apiKey": BAD_KEY}, labels=label)
        api.ready(ns, "watched", "False")  # a labeled one's change is seen at once
        # An unlabeled one's change waits for the next validation, which reads it afresh
        # (a cached copy would never learn of the change: no event would ever come).
        api.secret(ns, "plain", {"apiKey": BAD_KEY})
        api.request_validation(ns, "unwatched", "now")
        api.ready(ns, "unwatched", "False")
    finally:
        assert op.stop() == 0, op.log()[-3000:]


def test_the_operator_sees_rotation_after_an_apiserver_restart(
    plane: ControlPlane, api: Api, provider: str, logs: Path
) -> None:
    ns = api.namespace("survive")
    op = OperatorProcess(plane, logs, "-n", ns, "--default-interval", "1h").start()
    try:
        api.secret(ns, "creds", {"apiKey": BAD_KEY})
        api.connection(ns, "c", provider)
        api.ready(ns, "c", "False")
        restart_apiserver(plane)
        api.secret(ns, "creds", {"apiKey": ROTATED_KEY})
        api.ready(ns, "c", "True", timeout=90)  # retried about every second
    finally:
        assert op.stop() == 0, op.log()[-3000:]
