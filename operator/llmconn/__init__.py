"""llmconn: a Kubernetes operator that validates LLM and MCP provider connections.

The folders are the layers, lowest first. A module imports only from its own line and the
lines before it, and no import forms a cycle, function-level imports included
(tests/unit/test_layers.py checks both): the spec knows no provider, providers register into
`probes.base` and never import the `probes` package, and nothing below `controller` knows
Kubernetes. `pkg.*` is every module of that folder.

1. model.* (what a connection is and what a verdict says: data and pure functions)
2. net.* (the probes' network layer: egress, pooled clients, bodies, tracing, tokens)
3. probes.base (what a probe is and declares; the registry)
4. probes.* (the shared probe parts and one module per provider)
5. probes (imports every provider: the complete registry, and parse_spec against it)
6. validation.* (spec and Secrets in, one probe, a verdict out: shared by CLI and operator)
7. controller.* (the operator: Kopf's wiring, the engine, reconciler, watches, API client)
8. cli.*, __main__ (the command-line front ends)
"""
