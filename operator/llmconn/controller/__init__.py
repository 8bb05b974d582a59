"""The operator: Kopf's wiring (handlers), the engine behind it, the reconciler with its
schedule and memory, the Secret watch, the status writer, peering and metrics, and the
Kubernetes API client. Only this layer knows Kubernetes."""
