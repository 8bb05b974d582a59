"""Kopf wiring, and nothing else: startup builds the Reconciler and starts the two watches
that feed it (watches.py: LLMConnections as whole objects, Secrets as metadata only, which
Kopf cannot do); cleanup stops them; the liveness probe asks the scheduler.

Kopf runs the process (login, logging, liveness, peering) and watches no resource of ours,
so it writes nothing to the objects (no finalizers, no last-handled-configuration annotation,
no progress storage): the status PATCH per validation is the operator's only write. Kopf's
own watch of the connections cost 8% of the CPU at 10,000 connections (watches.py,
ConnectionWatch).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import kopf

from llmconn.config import Config
from llmconn.http import ClientPool
from llmconn.kube import Kube
from llmconn.metrics import Metrics
from llmconn.peering import follow, peering_paths
from llmconn.reconciler import Reconciler
from llmconn.watches import ConnectionWatch, SecretWatch, matches, reconnect_delay

log = logging.getLogger("llmconn")
SHUTDOWN_GRACE = 10.0  # seconds for probes in flight to finish and write their status
API_RETRIES = 80  # Kopf's retries of one API request, about a second apart: about a minute


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Config = memo.config
    settings.posting.enabled = False  # Kopf would post Events for log lines; ours are ours
    # No CRD/namespace discovery (the chart's RBAC grants none) unless -n names patterns.
    settings.scanning.disabled = not config.namespace_patterns
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Kopf retries a failed request (a watch too) after each of these delays, then starts
    # it afresh. Its default grows to 21 s, so a change made just after the API server came
    # back waited up to that long to be seen. About every second instead, as the Secret watch
    # does (jittered per replica); a 429's Retry-After still sets the pace.
    settings.networking.error_backoffs = tuple(reconnect_delay(n) for n in range(API_RETRIES))
    metrics = Metrics()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    reconciler = Reconciler(
        Kube(instance=memo.identity),
        ClientPool(config.egress),
        config.defaults,
        metrics,
        concurrency=config.concurrency,
        namespace_concurrency=config.namespace_share,
        shard=config.shard,
        # The re-list after a standby covers the watched namespaces; with patterns, every
        # namespace, of which the matching count.
        list_namespaces=() if config.namespace_patterns else config.namespaces,
        in_scope=partial(matches, config.namespaces) if config.namespace_patterns else None,
    )
    memo.reconciler = reconciler
    reconciler.start()
    memo.secret_watch = SecretWatch(  # Secrets as metadata only; see watches.py
        reconciler.kube,
        reconciler.secret_cache,
        namespaces=config.namespaces,
        all_namespaces=config.all_namespaces,
        label_selector=config.secret_label_selector,
    )
    memo.secret_watch.start()
    memo.connection_watch = ConnectionWatch(
        reconciler.kube,
        reconciler,
        namespaces=config.namespaces,
        all_namespaces=config.all_namespaces,
    )
    memo.connection_watch.start(after=memo.secret_watch)
    if config.peering_name is not None:
        settings.peering.lifetime = int(config.peering_lifetime)
        paths = peering_paths(config.peering_name, config.namespaces, config.all_namespaces)
        memo.peering = asyncio.create_task(
            follow(
                reconciler.kube,
                paths,
                config.peering_name,
                memo.identity,
                config.priority or 0,
                reconciler,
            ),
            name="llmconn peering",
        )
    log.info(
        "llmconn started: concurrency %d, default interval %ss, egress %s",
        config.concurrency,
        config.defaults.interval,
        config.egress.describe(),
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None:
        return
    if memo.get("peering") is not None:
        memo.peering.cancel()
    await memo.connection_watch.stop()
    await memo.secret_watch.stop()
    await reconciler.aclose(SHUTDOWN_GRACE)  # probes in flight write their status first


@kopf.on.probe(id="scheduler")
def scheduler_alive(memo: kopf.Memo, **_: Any) -> bool:
    """/healthz fails when the scheduler task has died: a restart is the cure."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None and not reconciler.alive:
        raise kopf.PermanentError("the validation scheduler has stopped")
    return True
