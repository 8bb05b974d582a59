"""The operator's engine behind Kopf: one owner that builds the API client, the metrics, the
reconciler, the Secret watch and the peering follower, and starts, stops, pauses and resumes
them together. handlers.py only wires Kopf's events to it.

Kopf watches the connections and calls `connection_event` for each event; the Secret watch
(metadata only, which Kopf cannot do) feeds the reconciler's Secret cache. Kopf pauses its
stream of connections while another replica of the peering is active; Kopf has no public
hook that says so, so the follower (peering.py) applies Kopf's rule to the same peering
objects and pauses the reconciler with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from llmconn.controller.budget import WriteBudget
from llmconn.controller.config import Config
from llmconn.controller.kube import Kube
from llmconn.controller.metrics import Metrics
from llmconn.controller.peering import follow, peering_scopes, repair
from llmconn.controller.reconciler import Reconciler
from llmconn.controller.watches import FIRST_LIST_WAIT, SecretWatch
from llmconn.net.pool import ClientPool

log = logging.getLogger("llmconn")

SHUTDOWN_GRACE = 10.0  # seconds for probes in flight to finish and write their status


class Engine:
    def __init__(
        self, config: Config, identity: str, credentials: kopf.ConnectionInfo | None = None
    ) -> None:
        self.config = config
        self.identity = identity
        self.metrics = Metrics()
        self.kube = Kube(credentials, instance=identity, relogin=True)
        self.reconciler = Reconciler(
            self.kube,
            ClientPool(config.egress),
            config.defaults,
            self.metrics,
            concurrency=config.concurrency,
            namespace_concurrency=config.namespace_share,
            shard=config.shard,
            write_budget=WriteBudget(config.write_budget, config.write_burst),
        )
        self.secret_watch = SecretWatch(
            self.kube,
            self.reconciler.secret_cache,
            namespaces=config.namespaces,
            all_namespaces=config.all_namespaces,
            label_selector=config.secret_label_selector,
        )
        self._peering: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve metrics, start the scheduler and the Secret watch, and return once the
        Secrets are listed (FIRST_LIST_WAIT at most): Kopf lists the connections after the
        startup handlers, so a first validation's read of a Secret is not taken for a change
        of it."""
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.listen_address)
        self.reconciler.start()
        self.secret_watch.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_LIST_WAIT):  # not wait_for: see scheduler.py
                await self.secret_watch.listed()
        name = self.config.peering_name
        if name is not None:
            paths = peering_scopes(self.config.namespaces, self.config.all_namespaces)
            with contextlib.suppress(TimeoutError):  # Kopf reads the peering after this
                async with asyncio.timeout(FIRST_LIST_WAIT):
                    await repair(self.kube, paths.values(), name)

            async def repair_one(path: str) -> None:
                await repair(self.kube, [path], name)

            self._peering = asyncio.create_task(
                follow(
                    self.kube,
                    paths,
                    name,
                    self.identity,
                    self.config.priority or 0,
                    self,
                    repair_path=repair_one,
                ),
                name="llmconn peering",
            )
        log.info(
            "llmconn started: concurrency %d, default interval %ss, egress %s",
            self.config.concurrency,
            self.config.defaults.interval,
            self.config.egress.describe(),
        )

    def connection_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self.reconciler.connection_event(event_type, obj)

    def pause(self, namespace: str | None = None) -> None:
        """Another replica is active (for `namespace` alone, in namespaced mode): stop
        validating and forget (Kopf pauses its stream)."""
        self.reconciler.pause(namespace)

    def resume(self, namespace: str | None = None) -> None:
        """This replica is active again (Kopf lists the connections afresh)."""
        self.reconciler.resume(namespace)

    @property
    def alive(self) -> bool:
        return self.reconciler.alive

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop following peers and Secrets, let the probes in flight write their status
        (`grace` seconds at most), then close the clients."""
        if self._peering is not None:
            self._peering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._peering
        await self.secret_watch.stop()
        await self.reconciler.aclose(grace)
