"""llmconn: a Kubernetes operator that validates LLM and MCP provider connections.

Layers, lowest first. A module imports only from its own line and the lines before it, and
no import forms a cycle, function-level imports included (tests/unit/test_layers.py checks
both): the spec knows no provider, providers register into `probes.base` and never import
the `probes` package, and nothing before the last line knows Kubernetes.

1. reasons, redact, egress, spec, scheduler, peering, credentials, transport (import nothing of llmconn)
2. logs, http, transport, exchange, oauth (what log records and requests go through)
3. clouds, verdict, lifecycle, status, metrics, triggers, secretcache, memory
4. probes.base (what a probe is and declares; the registry)
5. probes.* (the shared probe parts and one module per provider)
6. probes (imports every provider: the complete registry, and parse_spec against it)
7. classify, identity, validate, oneshot (the validation core, and `llmconn validate`'s engine)
8. kube, watches, writer, reconciler, config, engine, handlers, runner, cli, kubectl_plugin, __main__
"""
