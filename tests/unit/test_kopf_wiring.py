"""What `llmconn run` sets up around Kopf: event-level handlers only, so Kopf writes nothing
to the objects and needs no change detection (NoEssence); the garbage collector's tuning."""

from __future__ import annotations

import gc

import kopf

from llmconn import handlers, runner
from llmconn.kube import GROUP, PLURAL, VERSION


def test_connections_have_event_handlers_only() -> None:
    registry = kopf.get_default_registry()
    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    assert handlers.connection_event  # registered when handlers.py was imported
    assert registry._watching.has_handlers(resource=resource)
    # A create/update/resume handler, daemon or timer would need Kopf's essence, which
    # NoEssence does not build, and would make Kopf write to the objects.
    assert not registry._changing.has_handlers(resource=resource)
    assert not registry._spawning.has_handlers(resource=resource)


def test_no_essence_is_built_or_kept() -> None:
    storage = handlers.NoEssence()
    body = kopf.Body({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"a": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=kopf.BodyEssence(spec={"a": 1}))
    assert not patch  # nothing written to the object


def test_the_collector_is_tuned_for_a_long_lived_heap() -> None:
    before = gc.get_threshold()
    try:
        runner.tune_gc()
        assert gc.get_threshold() == runner.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # the modules loaded by now are out of its way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
