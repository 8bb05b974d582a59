"""`llmconn run`: parse options, configure logging, and hand the loop to Kopf."""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Sequence

import kopf

from llmconn.controller.config import from_args
from llmconn.controller.peering import own_identity
from llmconn.model import logs

# The cyclic garbage collector's thresholds (CPython's defaults: 700, 10, 10). The operator's
# heap is mostly long-lived: some 65 objects per connection (Kopf's memory of the object, the
# spec, the metrics series, the status), 700,000 at 10,000 connections. With the defaults a
# full collection walked them all every 5 to 10 seconds, 0.4 to 0.9 s each with the event
# loop stopped: 5% of a core, and the outliers of the schedule lag and of the reaction time.
# A young generation ten times larger lets more short-lived cycles die there; a full
# collection comes after 100 collections of the middle one instead of 10.
GC_THRESHOLDS = (10_000, 10, 100)


def tune_gc() -> None:
    """What is loaded by now (modules, classes, the registry of probes) lives as long as the
    process: out of every collection's way. Then the thresholds above."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str]) -> int:
    config = from_args(argv)
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    logs.guard()
    import llmconn.controller.handlers  # noqa: F401  (registers the handlers with Kopf)

    # Kopf freezes every operator of a peering when their priorities are equal, and a
    # Deployment cannot give each replica its own: a random one picks the active replica.
    if config.priority is None:
        config = dataclasses.replace(config, priority=random.randint(1, 2**31))
    identity = own_identity()
    tune_gc()
    kopf.run(
        clusterwide=config.all_namespaces,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering_name,
        priority=config.priority,
        identity=identity,  # type: ignore[arg-type]  # Kopf's Identity is a NewType of str
        liveness_endpoint=config.health_endpoint,
        memo=kopf.Memo(config=config, identity=identity),
    )
    return 0
