"""Model lifecycle end to end: a provider announces a model's retirement (OpenAI's
`shutdown_date`; Azure's model list, for the model a deployment serves); the connection stays
Ready, says Deprecated with the days left, posts one Warning Event, and the retirement gauge is
scraped from the operator's metrics."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from opkit import Api, OperatorProcess, condition, manifest, secret, wait_for

from controlplane.cluster import ControlPlane
from servers import azure_dialect
from servers.serve import serve

KEY = "sk-lifecycle-0123456789abcdef"
SHUTDOWN = "2027-03-01"  # after today's date in these tests' world; a past one is ModelRetired


def openai_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def entry(name: str) -> dict[str, Any]:
        # openai SDK types/model.py: shutdown_date, "the date when the model will shut down"
        return {"id": name, "object": "model", "owned_by": "x", "shutdown_date": SHUTDOWN}

    async def model(request: Any) -> Any:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key", "code": "invalid_api_key"}}, 401)
        if "m" not in request.path_params:
            return JSONResponse({"object": "list", "data": [entry("gpt-4o")]})
        return JSONResponse(entry(request.path_params["m"]))

    return Starlette(routes=[Route("/v1/models", model), Route("/v1/models/{m:path}", model)])


# provider -> (app, key, spec without the endpoint, path after the URL, the announced date)
CASES: dict[str, tuple[Any, str, dict[str, Any], str, str]] = {
    "openai": (openai_app, KEY, {"provider": "openai", "model": "gpt-4o"}, "/v1", SHUTDOWN),
    # The deployment serves a model its resource lists as deprecating; Azure's model list tells
    # only for the model a completion showed (Inference).
    "azure-openai": (
        azure_dialect.make_app,
        azure_dialect.API_KEY,
        {
            "provider": "azure-openai",
            "azure": {"deployment": "gpt-4o-old"},
            "validation": {"type": "Inference"},
        },
        "",
        "2029-03-01T00:00:00Z",
    ),
}


@pytest.mark.parametrize("provider", list(CASES))
def test_a_deprecated_model_is_ready_with_a_warning_and_a_gauge(
    cluster: ControlPlane, namespace: str, tmp_path: Path, provider: str
) -> None:
    make_app, key, base, path, announced = CASES[provider]
    with serve(make_app()) as url:
        spec = {**base, "endpoint": url + path, "apiKeySecretRef": {"name": "creds"}}
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=secret(namespace, "creds", {"apiKey": key})
            + "\n---\n"
            + manifest(namespace, "old", spec),
        )
        op = OperatorProcess(cluster, tmp_path, "-n", namespace).start()
        try:
            api = Api(cluster)
            status = wait_for(
                "the Deprecated condition",
                lambda: (
                    (s := api.status(namespace, "old"))
                    and condition(s, "Deprecated").get("status") == "True"
                    and s
                ),
            )
            assert condition(status, "Ready")["status"] == "True"
            assert status["modelLifecycle"]["stage"] == "deprecated"
            assert "days" in condition(status, "Deprecated")["message"]
            shown = cluster.kubectl(
                "get",
                "llmconnection",
                "old",
                "-n",
                namespace,
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Deprecated")].message}',
            ).stdout
            assert announced in shown
            retires = cluster.kubectl(
                "get",
                "llmconnection",
                "old",
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.modelLifecycle.retiresAt}",
            ).stdout
            assert retires == announced
            events = wait_for(
                "the ModelDeprecated Event",
                lambda: [e for e in api.events(namespace) if e["reason"] == "ModelDeprecated"],
            )
            assert len(events) == 1 and events[0]["type"] == "Warning"
            when = dt.datetime.fromisoformat(announced.replace("Z", "+00:00"))
            when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
            series = (
                f'llmconn_model_retirement_timestamp_seconds{{name="old",namespace="{namespace}"}}'
            )
            metrics = wait_for("the gauge", lambda: series in op.metrics() and op.metrics())
            line = next(x for x in metrics.splitlines() if x.startswith(series))
            assert float(line.split()[-1]) == when.timestamp()
            assert json.dumps(status).count(key) == 0
        finally:
            op.stop()
