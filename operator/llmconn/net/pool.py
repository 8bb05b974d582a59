"""HTTP clients for probes: long-lived, pooled by TLS settings, dialling only what the egress
policy allows (`guard.py`), with bounded bodies (`bodies.py`).

Proxies: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY are honoured (http and https
proxies; SOCKS is refused at startup), read once, as httpx reads them (`seams.py`); the
guard's proxy rule is in `guard.py`.
"""

from __future__ import annotations

import contextlib
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


class ClientPool:
    """Long-lived `httpx2.AsyncClient`s keyed by TLS settings, least recently used first out.

    Most connections share the default TLS settings and so one client and its keep-alive
    connections. Use `lease()` around a probe: a client evicted while leased is closed only
    when its last lease ends.
    """

    def __init__(
        self,
        egress: EgressPolicy,
        *,
        max_clients: int = 32,
        max_connections: int = 200,
        max_keepalive_connections: int = 50,
        keepalive_expiry: float = 30.0,
        resolver: Resolver = system_resolver,
        proxies: Mapping[str, str | None] | None = None,
    ) -> None:
        self.guard = Guard(egress, resolver)
        self._max_clients = max_clients
        self._limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        )
        self._proxies = dict(environment_proxies() if proxies is None else proxies)
        for pattern, url in self._proxies.items():
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"proxy {url!r} for {pattern}: only http and https proxies")
        self._clients: OrderedDict[tuple[str, bool], httpx2.AsyncClient] = OrderedDict()
        self._leases: dict[int, int] = {}
        self._retired: list[httpx2.AsyncClient] = []

    def __len__(self) -> int:
        return len(self._clients)

    def client(self, tls: TLSOptions = TLSOptions()) -> httpx2.AsyncClient:
        """The client for these TLS settings (raises InvalidCABundle)."""
        key = tls.key
        if (existing := self._clients.get(key)) is not None:
            self._clients.move_to_end(key)
            return existing
        client = self._build(tls)
        self._clients[key] = client
        while len(self._clients) > self._max_clients:
            _, evicted = self._clients.popitem(last=False)
            self._retired.append(evicted)
        return client

    @contextlib.asynccontextmanager
    async def lease(self, tls: TLSOptions = TLSOptions()) -> AsyncIterator[httpx2.AsyncClient]:
        client = self.client(tls)
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
        self._clients.clear()
        self._retired.clear()
        for client in clients:
            await client.aclose()

    async def _close_retired(self) -> None:
        idle = [c for c in self._retired if id(c) not in self._leases]
        self._retired = [c for c in self._retired if id(c) in self._leases]
        for client in idle:
            await client.aclose()

    def _build(self, tls: TLSOptions) -> httpx2.AsyncClient:
        ctx = tls.ssl_context()
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
