"""What `llmconn run` sets up around Kopf: settings under which Kopf writes nothing to the
objects it watches (no last-handled configuration, no progress, no Events for log lines), a
paged list, and the garbage collector's tuning. (That Kopf runs the handlers against a real
API server: tests/e2e/test_kopf_runner.py.)"""

from __future__ import annotations

import gc

import kopf

from llmconn.controller import handlers, runner
from llmconn.controller.config import Config
from llmconn.controller.watches import PAGE


def body() -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "llmconn.dev/v1alpha1",
            "kind": "LLMConnection",
            "metadata": {"name": "c", "namespace": "n", "annotations": {"a": "b"}},
            "spec": {"provider": "openai"},
        }
    )


def test_kopf_keeps_no_state_on_the_objects() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Config())
    diffbase, progress = (
        settings.persistence.diffbase_storage,
        settings.persistence.progress_storage,
    )
    patch = kopf.Patch()
    # Nothing is read from the object or built from it, and nothing stored goes into a patch.
    assert diffbase.fetch(body=body()) is None
    assert diffbase.build(body=body()) == {}
    diffbase.store(body=body(), patch=patch, essence=diffbase.build(body=body()))
    progress.store(key=kopf.HandlerId("h"), record={}, body=body(), patch=patch)
    progress.touch(body=body(), patch=patch, value="x")
    progress.purge(key=kopf.HandlerId("h"), body=body(), patch=patch)
    assert progress.fetch(key=kopf.HandlerId("h"), body=body()) is None
    assert not patch
    assert settings.posting.enabled is False
    assert settings.watching.chunk_size == PAGE  # a restart holds one page at a time
    # The API server refuses timeoutSeconds=300.0: Kopf sends the number as it is.
    assert isinstance(settings.watching.server_timeout, int)


def test_namespace_discovery_only_for_patterns() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Config(namespaces=("a",)))
    assert settings.scanning.disabled  # the chart's RBAC grants no namespace list
    handlers.configure(settings, Config(namespaces=("shop-*",)))
    assert not settings.scanning.disabled


def test_the_collector_is_tuned_for_a_long_lived_heap() -> None:
    before = gc.get_threshold()
    try:
        runner.tune_gc()
        assert gc.get_threshold() == runner.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # the modules loaded by now are out of its way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
