"""The reconciler against a fake API server: every trigger and race docs/design.md lists.

`FakeKube` keeps objects as the API server does (resourceVersions, merge patches on the status,
the resourceVersion precondition) and the validator is a stand-in that returns what the test
says, counting its calls. Watch events are handed to `connection_event` by the test, in the
order the race needs. The pure decisions are tested directly at the end (triggers.py).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from prometheus_client import generate_latest

from llmconn.controller import triggers as tr
from llmconn.controller.budget import WriteBudget
from llmconn.controller.kube import Conflict, NotFound
from llmconn.controller.memory import digest
from llmconn.controller.metrics import Metrics
from llmconn.controller.reconciler import Conn, Reconciler, default_namespace_concurrency
from llmconn.model.reasons import Reason
from llmconn.model.status import rfc3339
from llmconn.model.verdict import (
    Defaults,
    Lifecycle,
    ObservedSecret,
    SecretData,
    Verdict,
    effective,
)
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from netkit import loopback_only

NS = "team"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], SecretData] = {}
        self.rv = itertools.count(100)
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.urgent: list[bool] = []  # whether each write was a new or changed connection's
        self.events: list[dict[str, Any]] = []
        self.fail_writes = 0
        self.instance = "replica-a"
        self.created = itertools.count(1)  # seconds: each new object a second after the last

    # objects as a test changes them
    def apply(self, name: str, spec: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
        old = self.objects.get((NS, name))
        if old is not None and (uid is None or old["metadata"]["uid"] == uid):
            generation = old["metadata"]["generation"] + (old["spec"] != spec)
            meta = {**old["metadata"], "generation": generation}
            obj = {**old, "metadata": meta, "spec": spec}
        else:
            meta = {
                "namespace": NS,
                "name": name,
                "uid": uid or f"uid-{name}",
                "generation": 1,
                "creationTimestamp": rfc3339(
                    dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
                    + dt.timedelta(seconds=next(self.created))
                ),
            }
            obj = {"metadata": meta, "spec": spec, "status": {}}
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        self.objects[(NS, name)] = obj
        return copy.deepcopy(obj)

    def annotate(self, name: str, **annotations: str) -> dict[str, Any]:
        obj = self.objects[(NS, name)]
        obj["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **annotations}
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)

    def delete(self, name: str) -> dict[str, Any]:
        return self.objects.pop((NS, name))

    def status(self, name: str) -> dict[str, Any]:
        return self.objects[(NS, name)]["status"]

    # the API the reconciler calls
    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        if self.fail_writes:
            self.fail_writes -= 1
            raise httpx2.ConnectError("the API server is down")
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise NotFound(name)
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(name)
        obj["status"] = merge(obj["status"], status)
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        self.writes.append((name, copy.deepcopy(status)))
        return copy.deepcopy(obj)

    async def get_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def listing(self) -> list[dict[str, Any]]:
        """What Kopf's list brings when it (re)starts its stream: every object, as it is."""
        return [copy.deepcopy(obj) for obj in self.objects.values()]

    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        return self.secrets.get((namespace, name))

    async def post_event(self, obj: dict[str, Any], *, type_: str, reason: str, message: str):
        self.events.append({"type": type_, "reason": reason, "message": message, **obj})

    async def aclose(self) -> None:
        pass


class Provider:
    """The stand-in validator: answers with `reason`, or waits for `gate` first."""

    def __init__(self) -> None:
        self.reason = Reason.VALIDATED
        self.retry_after: float | None = None
        self.calls: list[str] = []  # the endpoint of each call
        self.gate: asyncio.Event | None = None
        self.details: dict[str, str] = {}
        self.lifecycle: Lifecycle | None = None

    async def __call__(self, spec, secrets, pool, defaults, *, tokens=None) -> Verdict:
        self.calls.append(str(spec.endpoint))
        observed = []
        if spec.api_key_secret_ref is not None:
            data = await secrets.get(spec.api_key_secret_ref.name)
            if data is None:
                return self.verdict(spec, defaults, Reason.SECRET_NOT_FOUND, ())
            observed = [ObservedSecret(spec.api_key_secret_ref.name, data.resource_version)]
        if self.gate is not None:
            await self.gate.wait()
        return self.verdict(spec, defaults, self.reason, tuple(observed))

    def verdict(self, spec, defaults, reason, observed) -> Verdict:
        return Verdict(
            reason=reason,
            message=f"said {reason.value}",
            provider=spec.provider,
            endpoint=str(spec.endpoint),
            model=spec.model,
            validation=effective(spec, defaults),
            finished_at=dt.datetime.now(dt.UTC),
            latency_ms=1,
            details=dict(self.details),
            retry_after=self.retry_after,
            observed_secrets=observed,
            lifecycle=self.lifecycle,
        )


def spec(endpoint: str = "http://127.0.0.1:9/v1", **extra: Any) -> dict[str, Any]:
    return {"provider": "openai-compatible", "endpoint": endpoint, "model": "m", **extra}


@pytest.fixture
async def world():
    kube, provider = FakeKube(), Provider()
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    rec = Reconciler(kube, pool, Defaults(), Metrics(), validator=provider)  # type: ignore[arg-type]
    write = rec.writer.write

    async def recording(conn, compute, *, urgent=False):  # type: ignore[no-untyped-def]
        written = await write(conn, compute, urgent=urgent)
        if written is not None:
            kube.urgent.append(urgent)  # how the writer was asked to write it
        return written

    rec.writer.write = recording  # type: ignore[method-assign]
    rec.start()
    yield kube, provider, rec
    provider.gate = None
    await rec.aclose(1.0)


async def until(what: str, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


async def settle(rec: Reconciler) -> None:
    await until("no validation in flight", lambda: rec.scheduler.in_flight == 0)
    await asyncio.sleep(0.02)


# --- 1. a spec change is judged afresh ------------------------------------------------------


async def test_a_spec_change_does_not_inherit_ready(world) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("Ready", lambda: ready(kube.status("c")).get("status") == "True")
    provider.reason = Reason.DNS_FAILURE  # the endpoint is now mistyped
    rec.connection_event("MODIFIED", kube.apply("c", spec("http://typo.invalid/v1")))
    await until("a verdict on generation 2", lambda: kube.status("c")["observedGeneration"] == 2)
    assert ready(kube.status("c"))["status"] == "False"
    assert ready(kube.status("c"))["reason"] == "DNSFailure"


# --- 2. identity is the UID ------------------------------------------------------------------


async def test_a_late_deleted_of_the_old_object_does_not_forget_its_replacement(world) -> None:
    kube, _provider, rec = world
    old = kube.apply("c", spec(), uid="uid-old")
    rec.connection_event("ADDED", old)
    await settle(rec)
    kube.delete("c")
    new = kube.apply("c", spec(), uid="uid-new")
    rec.connection_event("ADDED", new)  # Kopf orders events per UID only
    rec.connection_event("DELETED", old)
    assert rec.conns[(NS, "c")].uid == "uid-new"
    await until("the new object's status", lambda: kube.status("c").get("result") == "success")


async def test_a_verdict_about_the_old_object_never_lands_on_its_replacement(world) -> None:
    kube, provider, rec = world
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec("http://old.example/v1"), uid="uid-old"))
    await until("the probe", lambda: provider.calls)
    kube.delete("c")  # kubectl replace --force, while the probe runs
    kube.apply("c", spec("http://new.example/v1"), uid="uid-new")
    provider.gate.set()
    await settle(rec)
    assert kube.status("c") == {}  # the old verdict was refused (resourceVersion) and dropped
    assert (NS, "c") not in rec.conns
    provider.gate = None
    rec.connection_event("ADDED", kube.objects[(NS, "c")])
    await until(
        "its own verdict", lambda: kube.status("c").get("endpoint") == "http://new.example/v1"
    )
    assert kube.status("c")["observedGeneration"] == 1


async def test_a_replaced_object_releases_the_old_ones_secrets(world) -> None:
    kube, _provider, rec = world
    old = spec(apiKeySecretRef={"name": "old-key"})
    rec.connection_event("ADDED", kube.apply("c", old, uid="uid-old"))
    await settle(rec)
    assert (NS, "old-key") in rec.secret_cache.users
    kube.delete("c")
    rec.connection_event("ADDED", kube.apply("c", spec(apiKeySecretRef={"name": "new"}), uid="n"))
    assert (NS, "old-key") not in rec.secret_cache.users
    assert rec.secret_cache.users[(NS, "new")] == {(NS, "c")}


# --- 3. memory goes stale --------------------------------------------------------------------


async def test_pause_drops_memory_and_kopfs_relist_after_resume_rebuilds_it(world) -> None:
    kube, _provider, rec = world
    for name in ("a", "b"):
        rec.connection_event("ADDED", kube.apply(name, spec(apiKeySecretRef={"name": "k"})))
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"v"}, "1")
    await until("both validated", lambda: all(kube.status(n).get("result") for n in "ab"))
    rec.pause()
    assert rec.conns == {} and rec.secret_cache.users == {} and len(rec.scheduler) == 0
    kube.delete("b")  # deleted while this replica stood by: no event will say so
    kube.apply("a", spec("http://changed.example/v1"))  # changed meanwhile: no event either
    rec.resume()
    for obj in kube.listing():  # Kopf lists afresh when it resumes its stream
        rec.connection_event(None, obj)
    await until("the new spec validated", lambda: kube.status("a")["observedGeneration"] == 2)
    assert set(rec.conns) == {(NS, "a")}


async def test_a_namespace_that_stands_by_forgets_and_holds_its_own_connections_only(
    world,
) -> None:
    kube, _provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("c validated", lambda: kube.status("c").get("result") == "success")
    rec.pause("elsewhere")  # another namespace's peering object says stand by
    assert ("team", "c") in rec.conns
    rec.pause("team")
    assert ("team", "c") not in rec.conns
    assert rec.scheduler.active  # the operator as a whole goes on
    # An event that reaches it as it turns waits for the namespace to resume.
    rec.connection_event("ADDED", kube.apply("d", spec()))
    assert ("team", "d") in rec.conns
    rec.resume("team")
    await until("d validated", lambda: kube.status("d").get("result") == "success")


async def test_an_event_that_comes_while_standing_by_is_validated_once_active(world) -> None:
    kube, provider, rec = world
    rec.pause()
    # Kopf resumed its stream (and listed) a moment before this replica's follower said so.
    rec.connection_event(None, kube.apply("early", spec()))
    await asyncio.sleep(0.05)
    assert provider.calls == []  # standing by: nothing is validated...
    rec.resume()
    await until("validated", lambda: kube.status("early").get("result") == "success")


async def test_a_connection_deleted_while_the_watch_was_away_is_forgotten_at_its_write(
    world,
) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("gone", spec(validation={"interval": "1s"})))
    await until("validated", lambda: kube.status("gone").get("result") == "success")
    kube.delete("gone")  # the DELETED event was lost in a gap; a new list does not say so
    calls = len(provider.calls)
    await until("forgotten", lambda: (NS, "gone") not in rec.conns)
    assert len(provider.calls) == calls + 1  # its next validation found it gone: no more


async def test_a_verdict_never_lowers_the_observed_generation(world) -> None:
    kube, provider, rec = world
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("the probe", lambda: provider.calls)
    # Meanwhile another replica validated generation 2 and wrote it.
    kube.objects[(NS, "c")]["metadata"]["generation"] = 2
    kube.objects[(NS, "c")]["status"] = {"observedGeneration": 2, "result": "success"}
    kube.objects[(NS, "c")]["metadata"]["resourceVersion"] = "999"
    provider.gate.set()
    await settle(rec)
    assert kube.status("c") == {"observedGeneration": 2, "result": "success"}


# --- 4. the written status is the computed one ------------------------------------------------


async def test_a_failure_after_a_success_keeps_no_detail_of_the_success(world) -> None:
    kube, provider, rec = world
    provider.details = {"modelCount": "42", "rateLimitRemainingRequests": "9"}
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("success", lambda: kube.status("c").get("details", {}).get("modelCount"))
    provider.details, provider.reason = {"dnsMs": "3"}, Reason.INVALID_API_KEY
    rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: "now"}))
    await until("the failure", lambda: kube.status("c").get("result") == "failed")
    assert kube.status("c")["details"] == {"dnsMs": "3"}


# --- 6. a failed write keeps the verdict ---------------------------------------------------


async def test_a_failed_write_is_retried_without_probing_again(world, monkeypatch) -> None:
    kube, provider, rec = world
    monkeypatch.setattr("llmconn.controller.reconciler.RETRY_API", 0.01)
    kube.fail_writes = 3
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("written at last", lambda: kube.status("c").get("result") == "success")
    assert len(provider.calls) == 1
    assert rec.conns[(NS, "c")].write_failures == 0


async def test_kept_verdicts_are_written_once_the_api_server_answers_again(
    world, monkeypatch
) -> None:
    kube, provider, rec = world
    monkeypatch.setattr(
        "llmconn.controller.reconciler.RETRY_API", 3600.0
    )  # no backoff ends in this test
    rec.connection_event("ADDED", kube.apply("a", spec()))
    await until("a validated", lambda: kube.status("a").get("result") == "success")
    provider.reason = Reason.INVALID_API_KEY
    kube.fail_writes = 1  # the API server is away when a's next verdict is written
    rec.connection_event("MODIFIED", kube.annotate("a", **{tr.REQUESTED_AT: "t1"}))
    await until("a's verdict kept", lambda: rec.conns[(NS, "a")].write_failures == 1)
    rec.connection_event("ADDED", kube.apply("b", spec()))  # b's writes succeed: it is back
    await until("a's kept verdict", lambda: kube.status("a").get("reason") == "InvalidAPIKey")
    assert provider.calls.count("http://127.0.0.1:9/v1") == 3  # a twice, b once: not re-probed
    assert rec.conns[(NS, "a")].write_failures == 0


async def test_a_kept_verdict_being_written_when_the_server_returns_is_not_probed_again(
    world, monkeypatch
) -> None:
    kube, provider, rec = world
    monkeypatch.setattr(
        "llmconn.controller.reconciler.RETRY_API", 0.01
    )  # a's write is tried again at once
    rec.connection_event("ADDED", kube.apply("a", spec()))
    await until("a validated", lambda: kube.status("a").get("result") == "success")
    gate, held, real = asyncio.Event(), [], kube.patch_status

    async def patch(namespace, name, status, resource_version=None):
        if name == "a" and not kube.fail_writes and not gate.is_set():
            held.append(name)  # a's second try at its kept verdict waits here
            await gate.wait()
        return await real(namespace, name, status, resource_version)

    kube.patch_status = patch
    kube.fail_writes = 1
    rec.connection_event("MODIFIED", kube.annotate("a", **{tr.REQUESTED_AT: "t1"}))
    await until("a's kept verdict being written", lambda: held)
    rec.connection_event("ADDED", kube.apply("b", spec()))  # b's writes go through meanwhile
    await until("b validated", lambda: kube.status("b").get("result") == "success")
    gate.set()
    await settle(rec)
    assert kube.status("a").get("lastHandledRequestedAt") == "t1"
    assert provider.calls.count("http://127.0.0.1:9/v1") == 3  # a twice, b once


# --- 7. Retry-After ----------------------------------------------------------------------------


async def test_a_request_during_a_rate_limited_probe_waits_for_the_floor(world) -> None:
    kube, provider, rec = world
    provider.reason, provider.retry_after = Reason.RATE_LIMITED, 3600.0
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("the probe", lambda: provider.calls)
    rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: "t1"}))
    provider.gate.set()
    await settle(rec)
    assert len(provider.calls) == 1  # the request waits out the Retry-After...
    assert len(rec.scheduler) == 1
    provider.reason, provider.retry_after, provider.gate = Reason.VALIDATED, None, None
    rec.connection_event("MODIFIED", kube.apply("c", spec("http://fixed.example/v1")))
    await until("...but a spec fix does not", lambda: len(provider.calls) == 2)


async def test_a_days_retry_after_holds_a_connection_back_an_hour_at_most(world) -> None:
    # The cap is applied where the reconciler plans (not only in triggers.retry_floor): a
    # provider's Retry-After of ten days plans the next validation and the floor an hour out.
    kube, provider, rec = world
    provider.reason, provider.retry_after = Reason.RATE_LIMITED, 10 * 86400.0
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"interval": "5m"})))
    await until("the verdict", lambda: kube.status("c").get("reason") == "RateLimited")
    await settle(rec)
    now = asyncio.get_running_loop().time()
    due, _ = rec.scheduler._due[(NS, "c")]
    assert 3600 - 5 <= due - now <= 3600 + 5
    assert 3600 - 5 <= rec.conns[(NS, "c")].not_before - now <= 3600 + 5


def test_a_namespace_holds_a_quarter_of_the_workers_by_default() -> None:
    # The documented default share (docs/operations.md): a quarter, at least one.
    assert [default_namespace_concurrency(n) for n in (1, 2, 4, 8, 32, 64)] == [1, 1, 1, 2, 8, 16]
    rec = Reconciler(FakeKube(), None, Defaults(), Metrics(), concurrency=32)  # type: ignore[arg-type]
    assert rec.scheduler._group_limit == 8


# --- races of the watch with a validation in flight ------------------------------------------


async def _rate_limited_first_probe(world, **extra: Any) -> asyncio.Event:
    """The first probe of `c` runs, held at the gate, and will say RateLimited for an hour;
    returns that gate (the next probes wait at a new one)."""
    kube, provider, rec = world
    provider.reason, provider.retry_after = Reason.RATE_LIMITED, 3600.0
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec(**extra)))
    await until("the first probe", lambda: provider.calls)
    return provider.gate


async def _then_validated(world, first: asyncio.Event) -> None:
    """The first probe ends (RateLimited); the next one is asked for at once, not an hour on."""
    kube, provider, _ = world
    provider.gate = asyncio.Event()
    first.set()
    await until("the verdict of the first", lambda: kube.status("c").get("reason"))
    await until("the next probe, without the hour", lambda: len(provider.calls) == 2)
    provider.reason, provider.retry_after = Reason.VALIDATED, None
    provider.gate.set()
    await until("the new verdict", lambda: kube.status("c").get("reason") == "Validated")


async def test_a_spec_fixed_during_a_rate_limited_probe_does_not_wait_for_its_retry_after(
    world,
) -> None:
    kube, _, rec = world
    first = await _rate_limited_first_probe(world)
    rec.connection_event("MODIFIED", kube.apply("c", spec("http://fixed.example/v1")))
    await _then_validated(world, first)
    assert kube.status("c")["observedGeneration"] == 2
    assert rec.conns[(NS, "c")].not_before == 0.0


async def test_a_key_rotated_during_a_rate_limited_probe_does_not_wait_for_its_retry_after(
    world,
) -> None:
    kube, _, rec = world
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"old"}, "1")
    rec.secret_cache.secret_event("ADDED", {"namespace": NS, "name": "k", "resourceVersion": "1"})
    first = await _rate_limited_first_probe(world, apiKeySecretRef={"name": "k"})
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"new"}, "2")
    rec.secret_cache.secret_event(
        "MODIFIED", {"namespace": NS, "name": "k", "resourceVersion": "2"}
    )
    await _then_validated(world, first)


async def test_a_verdict_about_a_rotated_key_is_not_kept_when_its_write_fails(
    world, monkeypatch
) -> None:
    # The verdict's write fails: a kept verdict would be written again, not probed again, but
    # this one is about the old key, so the new key is probed (with the write's backoff an
    # hour, only that brings the right verdict).
    monkeypatch.setattr("llmconn.controller.reconciler.RETRY_API", 3600.0)
    kube, provider, rec = world
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"old"}, "1")
    rec.secret_cache.secret_event("ADDED", {"namespace": NS, "name": "k", "resourceVersion": "1"})
    provider.reason, provider.gate = Reason.INVALID_API_KEY, asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec(apiKeySecretRef={"name": "k"})))
    await until("the probe with the old key", lambda: provider.calls)
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"new"}, "2")
    rec.secret_cache.secret_event(
        "MODIFIED", {"namespace": NS, "name": "k", "resourceVersion": "2"}
    )
    await asyncio.sleep(0.02)
    kube.fail_writes = 1
    first, provider.gate = provider.gate, None
    provider.reason = Reason.VALIDATED  # what the new key gets; the held probe said it first
    first.set()
    await until("the new key's verdict", lambda: kube.status("c").get("reason") == "Validated")
    assert len(provider.calls) == 2


async def test_the_event_of_the_last_verdict_asks_for_no_second_run_of_the_spec_in_flight(
    world,
) -> None:
    kube, provider, rec = world
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("the first probe", lambda: provider.calls)
    rec.connection_event("MODIFIED", kube.apply("c", spec("http://two.example/v1")))
    first, provider.gate = provider.gate, asyncio.Event()
    first.set()
    await until("the probe of generation 2", lambda: len(provider.calls) == 2)
    await until("generation 1's verdict", lambda: kube.status("c").get("observedGeneration"))
    # That verdict's own event comes while generation 2 is probed: it says nothing new.
    rec.connection_event("MODIFIED", copy.deepcopy(kube.objects[(NS, "c")]))
    provider.gate.set()
    await until("generation 2's verdict", lambda: kube.status("c")["observedGeneration"] == 2)
    await settle(rec)
    assert len(provider.calls) == 2


async def _failing_write_held_as_the_replica_pauses(world) -> asyncio.Event:
    """`c` was validated; a request's probe says InvalidAPIKey and its status write waits at the
    API server while the replica goes to standby. Returns the gate that lets the write go."""
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("the verdict", lambda: kube.status("c").get("result") == "success")
    await settle(rec)
    gate, patch = asyncio.Event(), kube.patch_status

    async def held_patch(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await patch(*args, **kwargs)

    kube.patch_status = held_patch
    provider.reason = Reason.INVALID_API_KEY
    rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: "t1"}))
    await until("the probe", lambda: len(provider.calls) == 2)
    await asyncio.sleep(0.02)  # the status write waits at the API server
    rec.pause()
    return gate


async def test_a_replica_gone_to_standby_writes_nothing_over_the_active_ones_verdict(
    world,
) -> None:
    kube, _, rec = world
    gate = await _failing_write_held_as_the_replica_pauses(world)
    # The active replica validates and writes first: this one's write meets a conflict.
    obj = kube.objects[(NS, "c")]
    obj["status"] = {**obj["status"], "reason": "Validated", "lastHandledRequestedAt": "t1"}
    obj["metadata"]["resourceVersion"] = "5000"
    events = len(kube.events)
    gate.set()
    await settle(rec)
    assert kube.status("c")["reason"] == "Validated"
    assert len(kube.events) == events
    assert set(ready_gauge(rec, "c").values()) == {None}  # no series of it on the standby


async def test_a_late_event_of_a_replaced_object_does_not_strand_its_replacement(world) -> None:
    # Kopf orders events per UID only: the old object's last MODIFIED and its DELETED may come
    # after its replacement's ADDED. The replacement is still validated and kept.
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(), uid="uid-old"))
    await settle(rec)
    late_modified = copy.deepcopy(kube.objects[(NS, "c")])
    late_deleted = kube.delete("c")
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec(), uid="uid-new"))
    await until("the replacement's probe", lambda: len(provider.calls) == 2)
    rec.connection_event("MODIFIED", late_modified)
    rec.connection_event("DELETED", late_deleted)
    provider.gate.set()
    await until("the replacement's verdict", lambda: kube.status("c").get("reason") == "Validated")
    assert rec.conns[(NS, "c")].uid == "uid-new"
    assert len(rec.scheduler) == 1  # its next validation is planned


async def test_an_object_gone_at_its_write_cannot_take_the_place_of_its_replacement(world) -> None:
    # A is deleted and B created while A is probed: A's write finds B and A is forgotten.
    # B's ADDED comes, then A's late MODIFIED and DELETED: B stays, and answers its events.
    kube, provider, rec = world
    provider.gate = asyncio.Event()
    rec.connection_event("ADDED", kube.apply("c", spec(), uid="uid-old"))
    await until("A's probe", lambda: provider.calls)
    await until("A's pending status", lambda: kube.status("c").get("conditions"))
    late_modified = copy.deepcopy(kube.objects[(NS, "c")])
    late_deleted = kube.delete("c")
    kube.apply("c", spec(), uid="uid-new")
    first, provider.gate = provider.gate, None
    first.set()
    await until("A forgotten at its write", lambda: (NS, "c") not in rec.conns)
    await settle(rec)
    rec.connection_event("ADDED", copy.deepcopy(kube.objects[(NS, "c")]))
    rec.connection_event("MODIFIED", late_modified)
    rec.connection_event("DELETED", late_deleted)
    await settle(rec)
    rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: "t1"}))
    await until("B's request", lambda: kube.status("c").get("lastHandledRequestedAt") == "t1")
    assert rec.conns[(NS, "c")].uid == "uid-new"


async def test_a_status_that_lands_as_the_replica_pauses_still_tells_its_transition(
    world,
) -> None:
    kube, _, rec = world
    gate = await _failing_write_held_as_the_replica_pauses(world)  # and no conflict follows
    events = len(kube.events)
    gate.set()
    await settle(rec)
    assert kube.status("c")["reason"] == "InvalidAPIKey"
    assert len(kube.events) == events + 1  # the transition is told once, by who wrote it
    assert set(ready_gauge(rec, "c").values()) == {None}  # the series is the owner's


async def test_a_secret_read_racing_a_first_probe_keeps_its_retry_after(world) -> None:
    # A new connection's probe still reads its Secret when the Secret watch first reports it:
    # the probe reads what the event says, so its 429 still holds the next run back.
    kube, provider, rec = world
    kube.secrets[(NS, "k")] = SecretData({"apiKey": b"v"}, "1")
    provider.reason, provider.retry_after = Reason.RATE_LIMITED, 3600.0
    gate, get_secret, reads = asyncio.Event(), kube.get_secret, []

    async def slow_get_secret(namespace: str, name: str) -> SecretData | None:
        if not reads:
            reads.append(name)
            await gate.wait()
        return await get_secret(namespace, name)

    kube.get_secret = slow_get_secret
    rec.connection_event("ADDED", kube.apply("c", spec(apiKeySecretRef={"name": "k"})))
    await until("the probe's read", lambda: reads)
    rec.secret_cache.secret_event("ADDED", {"namespace": NS, "name": "k", "resourceVersion": "1"})
    await asyncio.sleep(0.05)
    gate.set()
    await until("the 429", lambda: kube.status("c").get("reason") == "RateLimited")
    await settle(rec)
    assert len(provider.calls) == 1


# --- 8. the missing-Secret grace ---------------------------------------------------------------


async def test_the_grace_counts_from_first_sight_not_creation(world) -> None:
    kube, _provider, rec = world
    obj = kube.apply("c", spec(apiKeySecretRef={"name": "not-yet"}))
    obj["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"  # created long ago
    rec.connection_event("ADDED", obj)  # ...but this generation is first seen now
    await until("a verdict", lambda: kube.status("c").get("reason") == "SecretNotFound")
    stalled = [c for c in kube.status("c")["conditions"] if c["type"] == "Stalled"]
    assert stalled == []


# --- 9. Events -----------------------------------------------------------------------------------


async def test_alternating_transient_reasons_post_one_warning(world) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"failureThreshold": 1})))
    await settle(rec)
    for i, reason in enumerate([Reason.TIMEOUT, Reason.CONNECTION_FAILED] * 3):
        provider.reason = reason
        rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: f"t{i}"}))
        await until(f"verdict {i}", lambda r=reason: kube.status("c").get("reason") == r.value)
    warnings = [e for e in kube.events if e["type"] == "Warning"]
    assert len(warnings) == 1


async def flap(kube: FakeKube, provider: Provider, rec: Reconciler, name: str, times: int) -> None:
    """Ready, not Ready, Ready... `times` verdicts, each written before the next request."""
    for i in range(times):
        reason = Reason.INVALID_API_KEY if i % 2 == 0 else Reason.VALIDATED
        provider.reason = reason
        rec.connection_event("MODIFIED", kube.annotate(name, **{tr.REQUESTED_AT: f"f{i}"}))
        await until(f"verdict {i}", lambda r=reason: kube.status(name).get("reason") == r.value)


async def test_a_flapping_connection_posts_its_burst_then_holds_the_rest_for_one_summary(
    world,
) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"failureThreshold": 1})))
    await until("c Ready", lambda: ready(kube.status("c")).get("status") == "True")
    await flap(kube, provider, rec, "c", 9)  # ends not Ready
    await settle(rec)
    # Validated, then the first ValidationFailed: the burst; eight more changes are held.
    assert [e["reason"] for e in kube.events] == ["Validated", "ValidationFailed"]
    await rec.writer.flush(1.0)  # what shutdown does; otherwise when the minute is over
    assert len(kube.events) == 3
    summary = kube.events[-1]
    assert (summary["type"], summary["reason"]) == ("Warning", "ValidationFailed")
    assert summary["message"].startswith("8 changes in ")
    assert "4 to Ready; 4 to not Ready (InvalidAPIKey x4)" in summary["message"]
    assert summary["message"].endswith("latest: InvalidAPIKey: said InvalidAPIKey")
    assert 'llmconn_events_held_total{namespace="team"} 8.0' in metrics_text(rec)


async def test_held_events_are_told_when_the_budget_refills(world, monkeypatch) -> None:
    kube, provider, rec = world
    monkeypatch.setattr("llmconn.controller.writer.EVENT_EVERY", 0.2)
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"failureThreshold": 1})))
    await until("c Ready", lambda: ready(kube.status("c")).get("status") == "True")
    await flap(kube, provider, rec, "c", 4)
    summary = await until(
        "the summary", lambda: next((e for e in kube.events if "changes in" in e["message"]), None)
    )
    assert summary["reason"] in ("Validated", "ValidationFailed")


async def test_a_forgotten_connections_held_events_are_not_told(world) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"failureThreshold": 1})))
    await until("c Ready", lambda: ready(kube.status("c")).get("status") == "True")
    await flap(kube, provider, rec, "c", 4)
    await settle(rec)
    rec.connection_event("DELETED", kube.delete("c"))
    await rec.writer.flush(1.0)
    assert len(kube.events) == 2


def metrics_text(rec: Reconciler) -> str:
    return generate_latest(rec.metrics.registry).decode()


async def test_a_namespace_over_its_write_budget_waits_and_loses_no_verdict() -> None:
    kube, provider = FakeKube(), Provider()
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    budget = WriteBudget(rate=50, burst=3)
    rec = Reconciler(
        kube,
        pool,
        Defaults(),
        Metrics(),
        validator=provider,  # type: ignore[arg-type]
        write_budget=budget,
    )
    rec.start()
    try:
        for i in range(8):
            rec.connection_event("ADDED", kube.apply(f"c{i}", spec()))
        for i in range(8):
            await until(f"c{i} judged", lambda i=i: kube.status(f"c{i}").get("result") == "success")
        text = metrics_text(rec)
        assert 'llmconn_status_writes_delayed_total{namespace="team"}' in text
        assert "llmconn_status_write_delay_seconds_count" in text
    finally:
        await rec.aclose(1.0)


def test_the_operators_floor_raises_a_short_interval_and_leaves_zero_alone() -> None:
    floor = Defaults(min_interval=5.0)
    assert effective(parse_spec(spec(validation={"interval": "1s"})), floor).interval == 5.0
    assert effective(parse_spec(spec(validation={"interval": "1m"})), floor).interval == 60.0
    assert effective(parse_spec(spec(validation={"interval": "0s"})), floor).interval == 0.0
    inference = spec(validation={"interval": "1s", "type": "Inference"})
    assert effective(parse_spec(inference), floor).interval == 3600.0


# --- the pure decisions --------------------------------------------------------------------------


def observed(**meta: Any) -> tr.Observed:
    status = meta.pop("status", {})
    body = {
        "metadata": {"namespace": NS, "name": "c", "uid": "u1", "generation": 1, **meta},
        "status": status,
    }
    return tr.observe(meta.pop("event", None), body)


@pytest.mark.parametrize(
    "covering, requested, expected",
    [
        (None, "t1", (1, None)),  # nothing in flight: memory says
        ((2, None), None, (2, None)),  # the generation in flight counts as handled
        ((2, "t1"), "t1", (2, "t1")),  # and the request it began with
        ((2, "t1"), "t2", (2, None)),  # a newer request is not covered
        ((0, None), None, (1, None)),  # never less than memory
    ],
)
def test_what_the_validation_in_flight_covers_counts_as_handled(
    covering: tuple[int, str | None] | None, requested: str | None, expected: tuple[int, Any]
) -> None:
    annotations = {tr.REQUESTED_AT: requested} if requested else {}
    seen = observed(generation=2, annotations=annotations)
    assert tr.covered(covering, 1, None, seen) == expected


@pytest.mark.parametrize(
    "known, event, owned, expected",
    [
        (None, {}, True, tr.Sighting.NEW),
        (tr.Known("u1", 1, 1, None), {}, True, tr.Sighting.SAME),
        (tr.Known("u1", 1, 1, None), {"generation": 2}, True, tr.Sighting.SPEC),
        (tr.Known("u0", 1, 1, None), {}, True, tr.Sighting.NEW),
        (tr.Known("u1", 1, 1, None), {}, False, tr.Sighting.FORGET),
        (None, {}, False, tr.Sighting.IGNORE),
    ],
)
def test_sighting(known, event, owned, expected) -> None:
    assert tr.sighting(known, observed(**event), owned) is expected


def test_a_deleted_event_forgets_only_its_own_uid() -> None:
    deleted = tr.observe("DELETED", {"metadata": {"namespace": NS, "name": "c", "uid": "old"}})
    assert tr.sighting(tr.Known("new", 1, 1, None), deleted, True) is tr.Sighting.IGNORE
    assert tr.sighting(tr.Known("old", 1, 1, None), deleted, True) is tr.Sighting.FORGET


@pytest.mark.parametrize(
    "handled_generation, asked, handled_request, first, expected",
    [
        (0, None, None, True, tr.Action.VALIDATE),  # never validated
        (1, None, None, True, tr.Action.RESUME),  # validated before a restart
        (1, None, None, False, tr.Action.NOTHING),  # our own write's event
        (1, "t1", None, False, tr.Action.VALIDATE),  # a new request
        (1, "t1", "t1", False, tr.Action.NOTHING),  # a request already handled
    ],
)
def test_action(handled_generation, asked, handled_request, first, expected) -> None:
    seen = dataclasses.replace(observed(), requested_at=asked)
    got = tr.action(
        seen,
        first_sight=first,
        handled_generation=handled_generation,
        handled_requested_at=handled_request,
        suspended=False,
    )
    assert got is expected


def test_handled_comes_from_memory_or_the_written_status_whichever_says_more() -> None:
    seen = observed(
        annotations={tr.REQUESTED_AT: "t2"},
        status={"observedGeneration": 3, "lastHandledRequestedAt": "t2"},
    )
    assert tr.handled(tr.Known("u1", 3, 2, "t1"), seen) == (3, "t2")
    assert tr.handled(tr.Known("u1", 3, 4, "t1"), observed()) == (4, "t1")


def test_a_long_requested_at_is_compared_as_far_as_status_keeps_it() -> None:
    seen = observed(annotations={tr.REQUESTED_AT: "x" * 500})
    assert seen.requested_at == "x" * tr.MAX_REQUESTED_AT


def test_retry_after_is_capped_and_the_resume_wait_never_exceeds_the_interval() -> None:
    assert tr.retry_floor(86400, 300) == 3600
    assert tr.retry_floor(86400, 7200) == 7200
    assert tr.retry_floor(30, 300) == 30 and tr.retry_floor(None, 300) is None
    # another node's clock ahead: lastValidationTime in the future
    assert tr.resume_wait(last_validation=2000.0, interval=300, now=1000.0) == 300
    assert tr.resume_wait(last_validation=900.0, interval=300, now=1000.0) == 200
    assert tr.resume_wait(None, 300, 1000.0) == 0
    assert tr.resume_wait(100.0, 0, 1000.0) is None
    spread = tr.resume_wait(0.0, 300, 1000.0, uniform=lambda a, b: b)
    assert spread == tr.RESUME_SPREAD


def test_next_wait_honours_the_floor_and_the_grace() -> None:
    mid = lambda a, b: (a + b) / 2  # noqa: E731
    assert tr.next_wait(interval=300, retry_after=None, grace_left=None, uniform=mid) == 300
    assert tr.next_wait(interval=300, retry_after=900, grace_left=None, uniform=mid) == 900
    assert tr.next_wait(interval=300, retry_after=None, grace_left=10, uniform=mid) == 10.5
    assert tr.next_wait(interval=0, retry_after=None, grace_left=None) is None


def test_next_wait_polls_for_an_unwatched_object_during_its_grace_only() -> None:
    mid = lambda a, b: (a + b) / 2  # noqa: E731
    # A missing ServiceAccount: asked for every `poll` seconds while the grace lasts...
    assert tr.next_wait(interval=300, retry_after=None, grace_left=100, poll=10, uniform=mid) == 10
    assert tr.next_wait(interval=0, retry_after=None, grace_left=100, poll=10) == 10
    # ... never past the grace's end, nor before a Retry-After floor ...
    assert tr.next_wait(interval=300, retry_after=None, grace_left=3, poll=10, uniform=mid) == 3.5
    assert tr.next_wait(interval=300, retry_after=30, grace_left=100, poll=10, uniform=mid) == 30
    # ... and at the interval once the grace is over (Stalled by then).
    assert tr.next_wait(interval=300, retry_after=None, grace_left=-1, poll=10, uniform=mid) == 300


def test_secret_changed() -> None:
    assert tr.secret_changed("a", "b", observed_rv_matches=True)
    assert not tr.secret_changed("a", "a", observed_rv_matches=False)
    assert not tr.secret_changed(None, "b", observed_rv_matches=True)  # restart, same version
    assert tr.secret_changed(None, "b", observed_rv_matches=False)


def test_the_secret_digest_covers_the_used_keys_only() -> None:
    # What decides whether a Secret change re-validates: the values this connection reads.
    conn = parse_spec(
        spec(
            apiKeySecretRef={"name": "s", "key": "apiKey"},
            headersFromSecret=[{"name": "X-Org", "secretKeyRef": {"name": "s", "key": "org"}}],
        )
    )
    base = {"apiKey": b"k1", "org": b"o1", "unused": b"u1"}

    def of(data: dict[str, bytes] | None, secret: str = "s") -> str:
        return digest(conn, secret, None if data is None else SecretData(data))

    assert of(base) == of({**base, "unused": b"u2"})  # a key it does not read
    assert of(base) != of({**base, "apiKey": b"k2"})
    assert of(base) != of({**base, "org": b"o2"})
    assert of({**base, "apiKey": b""}) != of({k: v for k, v in base.items() if k != "apiKey"})
    assert of(None) != of(base)  # a deleted Secret
    assert of(base, "other") == of(None, "other")  # a Secret it does not reference


async def test_liveness_follows_the_scheduler(world) -> None:
    _kube, _provider, rec = world
    assert rec.alive
    rec._tasks[0].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not rec.alive


def test_conn_meta_names_the_object_for_events() -> None:
    conn = Conn(namespace=NS, name="c", uid="u", resource_version="7")
    assert conn.meta == {"name": "c", "namespace": NS, "uid": "u", "resourceVersion": "7"}


async def test_suspend_writes_once_keeps_the_last_verdict_and_stops_validating(world) -> None:
    kube, provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"interval": "1s"})))
    await until("validated", lambda: kube.status("c").get("result") == "success")
    rec.connection_event(
        "MODIFIED", kube.apply("c", spec(suspend=True, validation={"interval": "1s"}))
    )
    await until("suspended", lambda: ready(kube.status("c")).get("reason") == "Suspended")
    await settle(rec)
    calls, writes = len(provider.calls), len(kube.writes)
    assert "lastValidationTime" in kube.status("c")  # the last verdict stays readable
    rec.connection_event("MODIFIED", kube.objects[(NS, "c")])  # its own write's event
    await asyncio.sleep(0.1)
    assert (len(provider.calls), len(kube.writes)) == (calls, writes)
    assert len(rec.scheduler) == 0


# --- the readiness gauge follows the written status ------------------------------------------


def ready_gauge(rec: Reconciler, name: str) -> dict[str, float | None]:
    labels = {"namespace": NS, "name": name, "provider": "openai-compatible"}
    return {
        status: rec.metrics.registry.get_sample_value(
            "llmconn_connection_ready", {**labels, "status": status}
        )
        for status in ("True", "False", "Unknown")
    }


async def test_after_a_restart_the_gauge_comes_from_the_written_status(world) -> None:
    # A connection validated (and found broken) by the previous process, a minute ago: no
    # validation is due, and its series must not wait for one.
    kube, provider, rec = world
    obj = kube.apply("c", spec())
    written = {
        "result": "failed",
        "reason": "InvalidAPIKey",
        "lastValidationTime": rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)),
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "InvalidAPIKey", "message": "m"}
        ],
    }
    kube.objects[(NS, "c")]["status"] = obj["status"] = written
    rec.connection_event("ADDED", obj)
    assert ready_gauge(rec, "c") == {"True": 0.0, "False": 1.0, "Unknown": 0.0}
    await settle(rec)
    assert provider.calls == []  # from the status, not from a new validation


async def test_suspend_turns_the_gauge_unknown(world) -> None:
    kube, _provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("Ready", lambda: ready(kube.status("c")).get("status") == "True")
    assert ready_gauge(rec, "c") == {"True": 1.0, "False": 0.0, "Unknown": 0.0}
    rec.connection_event("MODIFIED", kube.apply("c", spec(suspend=True)))
    await until("suspended", lambda: ready(kube.status("c")).get("reason") == "Suspended")
    await until("the gauge", lambda: ready_gauge(rec, "c")["Unknown"] == 1.0)
    assert ready_gauge(rec, "c") == {"True": 0.0, "False": 0.0, "Unknown": 1.0}


async def test_a_deprecated_model_warns_once_and_exports_its_retirement(world) -> None:
    kube, provider, rec = world
    provider.lifecycle = Lifecycle("deprecated", "2026-10-01", "2027-03-01T00:00:00Z")
    rec.connection_event("ADDED", kube.apply("c", spec()))
    await until("validated", lambda: kube.status("c").get("result") == "success")
    for i in range(2):
        rec.connection_event("MODIFIED", kube.annotate("c", **{tr.REQUESTED_AT: f"t{i}"}))
        await until(
            f"request {i}", lambda i=i: kube.status("c").get("lastHandledRequestedAt") == f"t{i}"
        )
    await settle(rec)
    deprecated = [e for e in kube.events if e["reason"] == "ModelDeprecated"]
    assert len(deprecated) == 1 and deprecated[0]["type"] == "Warning"
    text = generate_latest(rec.metrics.registry).decode()
    retires = dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
    series = 'llmconn_model_retirement_timestamp_seconds{name="c",namespace="team"}'
    assert f"{series} {retires:.7e}" in text


async def test_a_new_or_changed_connections_writes_are_urgent_periodic_ones_are_not(world) -> None:
    kube, _provider, rec = world
    rec.connection_event("ADDED", kube.apply("c", spec(validation={"interval": "1s"})))
    await until("c validated", lambda: kube.status("c").get("result") == "success")
    new = len(kube.writes)
    assert kube.urgent == [True] * new  # Ready=Unknown at first sight, then the verdict
    await until("a periodic validation", lambda: len(kube.writes) > new)
    assert kube.urgent[new] is False
    periodic = len(kube.writes)
    rec.connection_event(
        "MODIFIED", kube.apply("c", spec(model="n", validation={"interval": "1s"}))
    )
    await until("the change validated", lambda: kube.status("c").get("observedGeneration") == 2)
    assert kube.urgent[periodic] is True
