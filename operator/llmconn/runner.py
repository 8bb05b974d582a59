"""`llmconn run`: parse options, configure logging, and hand the loop to Kopf."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import kopf

from llmconn import logs
from llmconn.config import from_args
from llmconn.peering import own_identity


def main(argv: Sequence[str]) -> int:
    config = from_args(argv)
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    logs.guard()
    import llmconn.handlers  # noqa: F401  (registers the handlers with Kopf)

    # Kopf freezes every operator of a peering when their priorities are equal, and a
    # Deployment cannot give each replica its own: a random one picks the active replica.
    if config.priority is None:
        config = dataclasses.replace(config, priority=random.randint(1, 2**31))
    identity = own_identity()
    kopf.run(
        clusterwide=config.all_namespaces,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering_name,
        priority=config.priority,
        identity=identity,  # type: ignore[arg-type]  # Kopf's Identity is a NewType of str
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz"
        if config.health_port
        else None,
        memo=kopf.Memo(config=config, identity=identity),
    )
    return 0
