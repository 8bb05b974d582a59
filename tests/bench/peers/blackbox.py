"""Prometheus' blackbox_exporter as `make bench`'s peer (--peer blackbox).

The exporter probes the benchmark's loopback provider the way llmconn validates it: GET
{endpoint}/models with the key as a bearer token, HTTP 200 required, and the model in the list
(a regular expression over the body, the exporter's way to look into an answer). The benchmark
drives it as Prometheus does, by requesting /probe?module=...&target=... for every probe, at the
rate llmconn validates (connections / interval), and measures the exporter's CPU per probe.

The exporter opens a new connection for every probe (its HTTP prober disables keep-alives:
prober/http.go) where llmconn keeps pooled connections to a provider.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx2
import yaml

MODULE = "llm_models"


def config(key: str, model: str) -> str:
    """The exporter's configuration: one http module (CONFIGURATION.md of blackbox_exporter)."""
    module = {
        "prober": "http",
        "timeout": "10s",
        "http": {
            "method": "GET",
            "valid_status_codes": [200],
            "headers": {"Authorization": f"Bearer {key}"},
            "fail_if_body_not_matches_regexp": [f'"id":\\s*"{re.escape(model)}"'],
            "preferred_ip_protocol": "ip4",
        },
    }
    return yaml.safe_dump({"modules": {MODULE: module}}, sort_keys=False)


def command(binary: str, config_file: str, port: int) -> list[str]:
    return [
        binary,
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]


async def drive(exporter: str, target: str, rate: float, seconds: float) -> dict[str, Any]:
    """Request rate probes a second for `seconds`, evenly spaced, as Prometheus' scrapes of
    rate targets would be; returns how many succeeded (probe_success 1) and failed."""
    counts = {"succeeded": 0, "failed": 0, "errors": 0}
    total = max(1, round(rate * seconds))
    params = {"module": MODULE, "target": target}

    async def one(client: httpx2.AsyncClient) -> None:
        try:
            resp = await client.get(f"{exporter}/probe", params=params)
        except httpx2.HTTPError:
            counts["errors"] += 1
            return
        success = re.search(r"^probe_success (\S+)$", resp.text, flags=re.MULTILINE)
        ok = resp.status_code == 200 and success is not None and float(success[1]) == 1
        counts["succeeded" if ok else "failed"] += 1

    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx2.AsyncClient(timeout=15, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client)))
        await asyncio.gather(*tasks)
    counts["probes"] = total
    return counts
