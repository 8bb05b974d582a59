"""Kopf wiring, and nothing else: connection watch events go to the Reconciler; startup
builds it and starts the Secret watch (secretwatch.py: metadata only, which Kopf cannot do).

Only event-level handlers are used, so Kopf writes nothing to the objects (no finalizers, no
last-handled-configuration annotation, no progress storage): the status PATCH per validation
is the operator's only write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from llmconn.config import Config
from llmconn.http import ClientPool
from llmconn.kube import GROUP, PLURAL, VERSION, Kube
from llmconn.metrics import Metrics
from llmconn.peering import follow, peering_paths
from llmconn.reconciler import Reconciler
from llmconn.secretwatch import SecretWatch, reconnect_delay

log = logging.getLogger("llmconn")
SHUTDOWN_GRACE = 10.0  # seconds for probes in flight to finish and write their status
API_RETRIES = 80  # Kopf's retries of one API request, about a second apart: about a minute


class NoEssence(kopf.DiffBaseStorage):
    """No change detection by Kopf: it serves on.create/update handlers, of which there are
    none. Kopf would deep-copy every watched object (its status included) on every event to
    build an essence nothing reads: 5% of the CPU at 10,000 connections. The Reconciler tells
    changes from the generation and the annotations (triggers.py)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Config = memo.config
    settings.posting.enabled = False  # Kopf would post Events for log lines; ours are ours
    settings.persistence.diffbase_storage = NoEssence()
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
        # Re-lists (after a standby, and the periodic check for vanished objects) cover the
        # watched namespaces; with patterns, every namespace (filtered by Kopf's events).
        list_namespaces=() if config.namespace_patterns else config.namespaces,
    )
    memo.reconciler = reconciler
    reconciler.start()
    memo.secret_watch = SecretWatch(  # Secrets as metadata only; see secretwatch.py
        reconciler.kube,
        reconciler.secret_cache,
        namespaces=config.namespaces,
        all_namespaces=config.all_namespaces,
        label_selector=config.secret_label_selector,
    )
    memo.secret_watch.start()
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
    await memo.secret_watch.stop()
    await reconciler.aclose(SHUTDOWN_GRACE)  # probes in flight write their status first


@kopf.on.probe(id="scheduler")
def scheduler_alive(memo: kopf.Memo, **_: Any) -> bool:
    """/healthz fails when the scheduler task has died: a restart is the cure."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None and not reconciler.alive:
        raise kopf.PermanentError("the validation scheduler has stopped")
    return True


@kopf.on.event(GROUP, VERSION, PLURAL)
async def connection_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.connection_event(event["type"], event["object"])
