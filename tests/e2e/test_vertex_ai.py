"""Vertex AI end to end: a Secret holding a (test-generated) service-account JSON key, the
operator on the real control plane, a loopback Google token service that verifies the signed
JWT, and a loopback Vertex AI. The key validates; once the token service forgets the key (it
was deleted in Google Cloud), a requested validation says InvalidAPIKey and Stalled; an
express-mode key validates beside it. No piece of the private key, the minted tokens or the
express key reaches the status, the Events or the operator's log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opkit import Api, OperatorProcess, condition, manifest, secret, wait_for

from controlplane.cluster import ControlPlane
from servers import google_token, vertex_dialect
from servers.serve import serve


def pieces(value: str) -> list[str]:
    return [value[i : i + 12] for i in range(0, len(value) - 11, 3)]


def test_a_service_account_key_validates_and_its_deletion_is_seen(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    account = google_token.make_account()
    token_app = google_token.make_app()
    token_app.state.dialect.trust(account)
    vertex_app = vertex_dialect.make_app(issued=token_app.state.dialect.issued)
    tokens: google_token.TokenState = token_app.state.dialect
    with serve(token_app) as token_url, serve(vertex_app) as vertex_url:
        key_file = account.key_file(token_url + "/token")

        def spec(key: str) -> dict[str, Any]:
            return {
                "provider": "vertex-ai",
                "endpoint": vertex_url,
                "model": "gemini-2.5-flash",
                "vertexAI": {"project": vertex_dialect.PROJECT, "location": "us-central1"},
                "apiKeySecretRef": {"name": "gcp", "key": key},
            }

        docs = [
            secret(namespace, "gcp", {"key.json": key_file, "express": vertex_dialect.EXPRESS_KEY}),
            manifest(namespace, "gemini", spec("key.json")),
            manifest(namespace, "express", spec("express")),
        ]
        cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        op = OperatorProcess(cluster, tmp_path, "-n", namespace).start()
        try:
            api = Api(cluster)

            def ready(name: str, reason: str) -> dict[str, Any] | None:
                status = api.status(namespace, name)
                return status if status.get("reason") == reason else None

            good = wait_for("the key file's verdict", lambda: ready("gemini", "Validated"))
            assert condition(good, "Ready")["status"] == "True"
            assert good["details"]["serviceAccount"] == account.email
            assert good["endpoint"] == vertex_url
            wait_for("the express key's verdict", lambda: ready("express", "Validated"))
            assert tokens.issued  # the operator exchanged the key at the token service

            tokens.forget(account)  # the key is deleted in Google Cloud
            cluster.kubectl(
                "annotate",
                "llmconnection",
                "gemini",
                "-n",
                namespace,
                "--overwrite",
                "llmconn.dev/validate-requested-at=after-key-deletion",
            )
            bad = wait_for("InvalidAPIKey", lambda: ready("gemini", "InvalidAPIKey"))
            assert condition(bad, "Ready")["status"] == "False"
            assert condition(bad, "Stalled")["status"] == "True"
            assert bad["code"] == "invalid_grant" and "Invalid JWT Signature" in bad["message"]
            assert "key key.json of Secret gcp" in bad["message"]

            shown = json.dumps([api.conn(namespace, n) for n in ("gemini", "express")])
            shown += json.dumps(api.events(namespace)) + op.log()
            secrets = [
                *(line for line in account.private_pem.splitlines() if "PRIVATE" not in line),
                *tokens.issued,
                vertex_dialect.EXPRESS_KEY,
            ]
            leaked = [p for value in secrets for p in pieces(value) if p in shown]
            assert not leaked, f"{len(leaked)} pieces of secrets leaked"
        finally:
            op.stop()
