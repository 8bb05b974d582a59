"""What `llmconn run` sets up around Kopf: Kopf watches none of our resources (the
operator's own watches feed the Reconciler), so it writes nothing to the objects; the
garbage collector's tuning."""

from __future__ import annotations

import gc

import kopf

from llmconn import handlers, runner
from llmconn.kube import GROUP, PLURAL, VERSION


def test_kopf_has_no_handlers_for_connections() -> None:
    registry = kopf.get_default_registry()
    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    assert handlers.startup  # the module is imported: its handlers are registered
    # Any resource handler would make Kopf watch the connections a second time; a
    # create/update handler, daemon or timer would make it write to the objects.
    assert not registry._watching.has_handlers(resource=resource)
    assert not registry._changing.has_handlers(resource=resource)
    assert not registry._spawning.has_handlers(resource=resource)
    assert registry._activities.get_all_handlers()  # startup, cleanup, the liveness probe


def test_the_collector_is_tuned_for_a_long_lived_heap() -> None:
    before = gc.get_threshold()
    try:
        runner.tune_gc()
        assert gc.get_threshold() == runner.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # the modules loaded by now are out of its way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
