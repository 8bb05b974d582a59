"""TLS per tenant cannot evict the shared client (issue 23, item 3).

The issue's case: 33 connections with distinct CA bundles each built a TLS client on the event
loop, and the pool of 32 evicted the default client that every tenant and the identity
exchange share. Here one tenant brings 40 distinct bundles: the default client and another
tenant's client stay, the tenant holds at most its share, and no bundle is loaded on the loop.
(The bundles' size and certificate count are bounded too: tests/security/test_tenant_limits.py.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from keykit import ca_pem
from llmconn.net import pool as pool_mod
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import TENANT, ClientPool, TLSOptions
from netkit import loopback_only


@pytest.fixture(scope="module")
def bundles() -> list[bytes]:
    return [ca_pem(f"tenant CA {i}") for i in range(41)]


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    yield clients
    await clients.aclose()


async def lease_as(pool: ClientPool, tenant: str, tls: TLSOptions) -> object:
    async def run() -> object:
        TENANT.set(tenant)
        async with pool.lease(tls) as client:
            return client

    return await asyncio.create_task(run())  # the task's own context: TENANT stays there


async def test_one_tenants_bundles_never_evict_the_default_or_another_tenants_client(
    pool: ClientPool, bundles: list[bytes]
) -> None:
    default = await lease_as(pool, "victim", TLSOptions())
    victim = await lease_as(pool, "victim", TLSOptions(ca_bundle=bundles[0]))
    attacker = [await lease_as(pool, "attacker", TLSOptions(ca_bundle=b)) for b in bundles[1:]]
    assert await lease_as(pool, "victim", TLSOptions()) is default
    assert not default.is_closed  # type: ignore[attr-defined]
    assert await lease_as(pool, "victim", TLSOptions(ca_bundle=bundles[0])) is victim
    assert not victim.is_closed  # type: ignore[attr-defined]
    # The attacker keeps at most its share: the rest were closed as it went.
    open_ = [c for c in attacker if not c.is_closed]  # type: ignore[attr-defined]
    assert len(open_) <= 4
    assert len(pool) <= 1 + 1 + 4


async def test_a_ca_bundle_is_loaded_off_the_event_loop(
    pool: ClientPool, bundles: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = pool_mod.TLSOptions.ssl_context

    def recording(self: TLSOptions) -> object:
        threads.append(threading.current_thread())
        return real(self)

    monkeypatch.setattr(pool_mod.TLSOptions, "ssl_context", recording)
    async with pool.lease(TLSOptions(ca_bundle=bundles[0])):
        pass
    assert threads and threading.main_thread() not in threads


async def test_many_validations_with_one_new_bundle_build_one_client(
    pool: ClientPool, bundles: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[bytes | None] = []
    real = pool_mod.TLSOptions.ssl_context

    def recording(self: TLSOptions) -> object:
        built.append(self.ca_bundle)
        return real(self)

    monkeypatch.setattr(pool_mod.TLSOptions, "ssl_context", recording)
    tls = TLSOptions(ca_bundle=bundles[1])
    clients = await asyncio.gather(*(lease_as(pool, "t", tls) for _ in range(10)))
    assert len({id(c) for c in clients}) == 1
    assert built == [bundles[1]]


async def test_a_client_built_for_validations_all_cancelled_is_kept_and_closed(
    bundles: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build outlives the validations that asked for it (a timeout, a deleted
    connection): the client it makes is the pool's, closed with it, not left open by no one."""
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    release = threading.Event()
    real = pool_mod.TLSOptions.ssl_context

    def slow(self: TLSOptions) -> object:
        release.wait(10)
        return real(self)

    monkeypatch.setattr(pool_mod.TLSOptions, "ssl_context", slow)
    tls = TLSOptions(ca_bundle=bundles[2])
    waiters = [asyncio.create_task(lease_as(pool, "t", tls)) for _ in range(3)]
    await asyncio.sleep(0.05)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    release.set()
    for _ in range(100):  # the build goes on without them
        if len(pool) == 1:
            break
        await asyncio.sleep(0.01)
    assert len(pool) == 1
    monkeypatch.setattr(pool_mod.TLSOptions, "ssl_context", real)
    built = pool.client(tls)  # the one built for the cancelled validations, not another
    await pool.aclose()
    assert built.is_closed


async def test_a_client_evicted_before_its_waiters_run_is_never_handed_out(
    bundles: list[bytes],
) -> None:
    """Between the build's end and its waiters' turn another tenant's client evicts (and may
    close) it: the waiters build again instead of putting a retired client back in the pool."""
    pool = ClientPool(EgressPolicy(), max_clients=1, resolver=loopback_only, proxies={})
    tls = TLSOptions(ca_bundle=bundles[3])
    got: list[object] = []

    async def lease() -> None:
        async with pool.lease(tls) as client:
            assert not client.is_closed
            got.append(client)
            await asyncio.sleep(0.01)

    waiters = [asyncio.create_task(lease()) for _ in range(2)]
    for _ in range(100):
        if tls.key in pool._building:  # the build under way, to race it
            break
        await asyncio.sleep(0)
    evicted: list[object] = []

    def evict(built: asyncio.Future[object]) -> None:
        evicted.append(built.result())
        pool.client(TLSOptions(insecure_skip_verify=True))  # evicts it: max_clients=1

    pool._building[tls.key].add_done_callback(evict)
    await asyncio.gather(*waiters)
    assert evicted and evicted[0] not in got
    current = pool.client(tls)
    assert not current.is_closed
    await pool.aclose()
