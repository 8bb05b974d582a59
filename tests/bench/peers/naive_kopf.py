"""The operator a Kopf user writes in an afternoon to validate LLMConnections.

`make bench --peer naive-kopf` runs it with `kopf run` against the benchmark's control plane
and loopback provider, and measures it the way it measures llmconn. It is naive on purpose, in
the ways Kopf's own documentation and examples lead a first operator:

- `@kopf.on.create` and `@kopf.on.update` validate at once, and `@kopf.timer(interval=60)`
  validates every object again: one timer task per object, and a finalizer on each (Kopf adds
  one for every object a timer serves);
- Kopf's default storages: the last handled configuration and the handlers' progress go into
  annotations and the status, and Kopf posts its handler log lines as Events;
- the official `kubernetes` client reads the Secret, with a new API client per call as Kopf's
  examples make it (`kubernetes.client.CoreV1Api()` in the handler);
- a new HTTP client per probe, and plain sync handlers (Kopf runs them in its thread pool);
- the verdict is written with Kopf's `patch`.

The check is the one llmconn makes for an OpenAI-compatible connection with a model: GET
{endpoint}/models with the key as a bearer token, and the model must be in the list.
"""

from __future__ import annotations

import base64
import datetime
import os
import time
from typing import Any

import httpx2
import kopf
import kubernetes

GROUP, VERSION, PLURAL = "llmconn.dev", "v1alpha1", "llmconnections"
# A user writes 60; the benchmark passes its --interval so that both operators do the same work.
INTERVAL = float(os.environ.get("NAIVE_KOPF_INTERVAL", "60"))


@kopf.on.startup()
def login(**_: Any) -> None:
    kubernetes.config.load_kube_config()  # KUBECONFIG; in a pod, load_incluster_config()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL)
def validate(spec: kopf.Spec, namespace: str, patch: kopf.Patch, **_: Any) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = time.monotonic()
    result, reason, message = check(spec, namespace)
    patch.status["result"] = result
    patch.status["reason"] = reason
    patch.status["message"] = message
    patch.status["latencyMs"] = int((time.monotonic() - started) * 1000)
    patch.status["lastValidationTime"] = now
    ready = "True" if result == "success" else "False"
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": ready,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }
    ]


def check(spec: kopf.Spec, namespace: str) -> tuple[str, str, str]:
    ref = spec["apiKeySecretRef"]
    try:
        secret = kubernetes.client.CoreV1Api().read_namespaced_secret(ref["name"], namespace)
    except kubernetes.client.ApiException as e:
        return "failed", "SecretNotFound", f"Cannot read the Secret: HTTP {e.status}"
    key = base64.b64decode(secret.data[ref.get("key", "apiKey")]).decode()
    url = spec["endpoint"].rstrip("/") + "/models"
    try:
        with httpx2.Client(timeout=10) as client:
            resp = client.get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx2.HTTPError as e:
        return "failed", "ConnectionFailed", type(e).__name__
    if resp.status_code != 200:
        return "failed", "HTTPError", f"GET /models answered HTTP {resp.status_code}"
    models = [m.get("id") for m in resp.json().get("data", [])]
    if spec.get("model") and spec["model"] not in models:
        return "failed", "ModelNotFound", f"Model {spec['model']} is not listed"
    return "success", "Validated", "The connection is reachable"
