"""Kopf wiring, and nothing else: Kopf watches the LLMConnections and hands every event to the
engine (engine.py), which owns the reconciler, the Secret watch and the peering follower;
startup builds and starts it, cleanup stops it, the liveness probe asks it.

Kopf writes nothing to the objects: the connection handler is an event handler (no
finalizer, no progress), it returns nothing (Kopf would store a result in the status), and the
storages below keep no last-handled configuration and no progress. The status PATCH per
validation stays the operator's only write. Kopf's posting of log lines as Events is off.

`llmconn run` (runner.py) starts Kopf with the options; `kopf run -m
llmconn.controller.handlers` works too, with the options (the scope of the Secret watch
included) from LLMCONN_* variables.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

from llmconn.controller.config import Config, from_args
from llmconn.controller.engine import Engine
from llmconn.controller.kube import GROUP, PLURAL, VERSION, login
from llmconn.controller.peering import own_identity
from llmconn.controller.watches import PAGE, SERVER_TIMEOUT, reconnect_delay
from llmconn.model import logs

API_RETRIES = 80  # Kopf's retries of one API request, about a second apart: about a minute


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled configuration: event handlers compare nothing. Kopf's default would
    deep-copy every object on every event to build an essence nobody reads."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class NoProgress(kopf.ProgressStorage):
    """No handler progress: event handlers are called once per event and never retried."""

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
        pass

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def configure(settings: kopf.OperatorSettings, config: Config) -> None:
    """Kopf's settings for this operator."""
    settings.posting.enabled = False  # Kopf would post Events for log lines; ours are ours
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
    # No CRD/namespace discovery (the chart's RBAC grants none) unless -n names patterns.
    settings.scanning.disabled = not config.namespace_patterns
    # The list of connections in pages: a restart at 10,000 holds one page at a time.
    settings.watching.chunk_size = PAGE
    # Whole seconds: Kopf puts the number in the query as it is, and the API server refuses
    # timeoutSeconds=300.0 (400 Bad Request).
    settings.watching.server_timeout = int(SERVER_TIMEOUT)
    settings.watching.client_timeout = int(SERVER_TIMEOUT) + 30
    settings.networking.request_timeout = 60
    # Kopf retries a failed request (a watch too) after each of these delays, then starts
    # it afresh. Its default grows to 21 s, so a change made just after the API server came
    # back waited up to that long to be seen. About every second instead, as the Secret watch
    # does (jittered per replica); a 429's Retry-After still sets the pace.
    settings.networking.error_backoffs = tuple(reconnect_delay(n) for n in range(API_RETRIES))
    settings.peering.lifetime = int(config.peering_lifetime)


@kopf.on.login()
def credentials(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """One login for Kopf and the engine's API client (a pod's service account, else
    $KUBECONFIG)."""
    info = login()
    memo.credentials = info
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Config = memo.get("config") or from_args([])
    identity: str = memo.get("identity") or own_identity()
    logs.guard()
    configure(settings, config)
    memo.engine = Engine(config, identity, credentials=memo.get("credentials"))
    await memo.engine.start()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def connection(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every event of every LLMConnection, as the raw object (no view, no copy)."""
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        engine.connection_event(event["type"], cast(dict[str, Any], event["object"]))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        await engine.stop()  # probes in flight write their status first


@kopf.on.probe(id="scheduler")
def scheduler_alive(memo: kopf.Memo, **_: Any) -> bool:
    """/healthz fails when the validation scheduler has stopped: a restart is the cure."""
    engine: Engine | None = memo.get("engine")
    if engine is not None and not engine.alive:
        raise kopf.PermanentError("the validation scheduler has stopped")
    return True
