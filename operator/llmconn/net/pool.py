"""HTTP clients for probes: long-lived, pooled by TLS settings, dialling only what the egress
policy allows (`guard.py`), with bounded bodies (`bodies.py`).

Proxies: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY are honoured (http and https
proxies; SOCKS is refused at startup), read once, as httpx reads them (`seams.py`); the
guard's proxy rule is in `guard.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpcore2
import httpx2

from llmconn.net import seams
from llmconn.net.bodies import CappedTransport
from llmconn.net.egress import EgressPolicy
from llmconn.net.guard import Guard, GuardedTransport, ProxiedTransport, Resolver, system_resolver


class InvalidCABundle(ValueError):
    """The CA bundle is not usable PEM."""


@dataclass(frozen=True)
class TLSOptions:
    """A connection's TLS settings; clients are shared between connections with equal ones."""

    ca_bundle: bytes | None = None  # PEM: extra trust roots on top of the system's
    insecure_skip_verify: bool = False

    @property
    def key(self) -> tuple[str, bool]:
        digest = hashlib.sha256(self.ca_bundle).hexdigest() if self.ca_bundle else ""
        return digest, self.insecure_skip_verify

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure_skip_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx = httpcore2.default_ssl_context()
        if self.ca_bundle:
            try:
                ctx.load_verify_locations(cadata=self.ca_bundle.decode("ascii"))
            except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
                raise InvalidCABundle(
                    f"not a PEM certificate bundle ({type(exc).__name__})"
                ) from None
        return ctx


def environment_proxies() -> dict[str, str | None]:
    """Proxy mounts from HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY (httpx's reading of them)."""
    return seams.environment_proxies()


# The tenant (the connection's namespace) a validation runs for, set by the operator around
# each validation: TLS clients of one tenant count against its own share of the pool.
TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmconn_tenant", default=None)

_DEFAULT_KEY = TLSOptions().key


class ClientPool:
    """Long-lived `httpx2.AsyncClient`s keyed by TLS settings, least recently used first out.

    Most connections share the default TLS settings and so one client and its keep-alive
    connections: that client is never evicted (every tenant and the identity exchange use
    it). A client for other settings (a CA bundle, insecureSkipVerify) is built off the event
    loop (loading trust roots is CPU work), once per digest of its settings even when many
    validations ask at once, and one tenant (`TENANT`) holds at most `max_tenant_clients` of
    them: past that its own least recently used one goes, never another tenant's. Use
    `lease()` around a probe: a client evicted while leased is closed only when its last
    lease ends.
    """

    def __init__(
        self,
        egress: EgressPolicy,
        *,
        max_clients: int = 32,  # besides the default client
        max_tenant_clients: int = 4,
        max_connections: int = 200,
        max_keepalive_connections: int = 50,
        keepalive_expiry: float = 30.0,
        resolver: Resolver = system_resolver,
        proxies: Mapping[str, str | None] | None = None,
    ) -> None:
        self.guard = Guard(egress, resolver)
        self._max_clients = max_clients
        self._max_tenant_clients = max_tenant_clients
        self._limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        )
        self._proxies = dict(environment_proxies() if proxies is None else proxies)
        for pattern, url in self._proxies.items():
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"proxy {url!r} for {pattern}: only http and https proxies")
        self._default: httpx2.AsyncClient | None = None
        self._clients: OrderedDict[tuple[str, bool], httpx2.AsyncClient] = OrderedDict()
        self._tenants: dict[tuple[str, bool], set[str | None]] = {}  # who uses each client
        self._building: dict[tuple[str, bool], asyncio.Future[httpx2.AsyncClient]] = {}
        self._leases: dict[int, int] = {}
        self._retired: list[httpx2.AsyncClient] = []

    def __len__(self) -> int:
        return len(self._clients) + (self._default is not None)

    def client(self, tls: TLSOptions = TLSOptions()) -> httpx2.AsyncClient:
        """The client for these TLS settings, built here (raises InvalidCABundle). Probes
        use `lease()`, which builds off the event loop."""
        if tls.key == _DEFAULT_KEY:
            return self._default_client()
        if (existing := self._clients.get(tls.key)) is not None:
            self._use(tls.key)
            return existing
        return self._keep(tls.key, self._build(tls.ssl_context()))

    async def _client(self, tls: TLSOptions) -> httpx2.AsyncClient:
        key = tls.key
        if key == _DEFAULT_KEY:
            return self._default_client()
        if (existing := self._clients.get(key)) is not None:
            self._use(key)
            return existing
        while True:
            building = self._building.get(key)
            if building is None:  # the first to ask builds; the others wait for it
                building = self._building[key] = asyncio.ensure_future(self._build_off_loop(tls))
                building.add_done_callback(lambda _: self._building.pop(key, None))
            client = await asyncio.shield(building)
            if self._clients.get(key) is client:
                self._use(key)
                return client
            # Evicted (and maybe closed) between the build and this waiter's turn: once more.

    async def _build_off_loop(self, tls: TLSOptions) -> httpx2.AsyncClient:
        """Build and keep, once, whoever waits: a client is kept even when every validation
        that asked for it was cancelled meanwhile (it is then evicted and closed in turn, as
        any other), and never kept again after it was evicted."""
        return self._keep(tls.key, self._build(await asyncio.to_thread(tls.ssl_context)))

    def _default_client(self) -> httpx2.AsyncClient:
        if self._default is None:
            self._default = self._build(TLSOptions().ssl_context())
        return self._default

    def _use(self, key: tuple[str, bool]) -> None:
        self._clients.move_to_end(key)
        self._tenants.setdefault(key, set()).add(TENANT.get())
        self._evict_for(TENANT.get())

    def _keep(self, key: tuple[str, bool], client: httpx2.AsyncClient) -> httpx2.AsyncClient:
        self._clients[key] = client
        self._use(key)
        while len(self._clients) > self._max_clients:
            self._retire(next(iter(self._clients)))
        return client

    def _evict_for(self, tenant: str | None) -> None:
        """Past its share, the tenant's least recently used clients go (those only it uses);
        a client another tenant also uses only stops counting against this one."""
        if tenant is None:
            return
        mine = [k for k in self._clients if tenant in self._tenants.get(k, ())]
        for key in mine[: max(0, len(mine) - self._max_tenant_clients)]:
            users = self._tenants[key]
            users.discard(tenant)
            if not users:
                self._retire(key)

    def _retire(self, key: tuple[str, bool]) -> None:
        self._retired.append(self._clients.pop(key))
        self._tenants.pop(key, None)

    @contextlib.asynccontextmanager
    async def lease(self, tls: TLSOptions = TLSOptions()) -> AsyncIterator[httpx2.AsyncClient]:
        client = await self._client(tls)
        self._leases[id(client)] = self._leases.get(id(client), 0) + 1
        try:
            yield client
        finally:
            left = self._leases[id(client)] - 1
            if left:
                self._leases[id(client)] = left
            else:
                del self._leases[id(client)]
            await self._close_retired()

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *self._retired]
        if self._default is not None:
            clients.append(self._default)
            self._default = None
        self._clients.clear()
        self._tenants.clear()
        self._retired.clear()
        for client in clients:
            await client.aclose()

    async def _close_retired(self) -> None:
        idle = [c for c in self._retired if id(c) not in self._leases]
        self._retired = [c for c in self._retired if id(c) in self._leases]
        for client in idle:
            await client.aclose()

    def _build(self, ctx: ssl.SSLContext) -> httpx2.AsyncClient:
        mounts: dict[str, httpx2.AsyncBaseTransport | None] = {
            pattern: None
            if url is None
            else CappedTransport(ProxiedTransport(self.guard, url, ctx, self._limits))
            for pattern, url in self._proxies.items()
        }
        return httpx2.AsyncClient(
            transport=CappedTransport(GuardedTransport(self.guard, ctx, self._limits)),
            mounts=mounts,
            trust_env=False,  # proxies are read once, above; nothing else from the environment
            follow_redirects=False,  # a probe's transport follows same-origin ones (exchange.py)
            timeout=None,  # the caller's asyncio.timeout is the one budget
        )
