"""`make demo`: the operator on the local control plane, with local providers and samples.

Starts a local OpenAI-style provider and a local MCP server (the loopback servers the tests
use), applies sample Secrets and LLMConnections (healthy ones and ones broken in different
ways) into the `llmconn-demo` namespace, runs the operator in the background, waits until
every connection has a verdict and prints `kubectl get llmconnections -o wide`.

Every process it starts is recorded in .local/run/*.pid, so `make cluster-down` stops them.
Running it again replaces the previous demo's processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from controlplane.cluster import ControlPlane, free_port  # noqa: E402

NS = "llmconn-demo"
GOOD_KEY = "sk-demo-good-key"  # accepted by the demo provider; nothing real
ROTATED_KEY = "sk-demo-rotated-key"
WRONG_KEY = "sk-demo-wrong-key"
MCP_TOKEN = "demo-mcp-token"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class Demo:
    def __init__(self, local: Path) -> None:
        self.cp = ControlPlane(local)
        self.run_dir = local / "run"
        self.log_dir = local / "logs"

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cp.kubectl(*args, input=input).stdout

    def background(self, name: str, cmd: list[str], ready_url: str | None = None) -> None:
        """Start a process in its own session, record its pid, wait until it answers."""
        self.stop(name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cp.env(),
                start_new_session=True,
                cwd=ROOT,
            )
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 60
        while ready_url is not None:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited; see {self.log_dir / f'{name}.log'}")
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers, with whatever status
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"{name} did not start; see {self.log_dir / f'{name}.log'}"
                    ) from None
                time.sleep(0.2)

    def stop(self, name: str) -> None:
        pid_file = self.run_dir / f"{name}.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)

    def run(self) -> None:
        if not self.cp.healthy():
            raise SystemExit("the local control plane is not running: run `make cluster-up`")
        provider_port, mcp_port, metrics_port = free_port(), free_port(), free_port()
        py = sys.executable
        say(f"starting a local OpenAI-style provider on 127.0.0.1:{provider_port}")
        self.background(
            "demo-provider",
            [
                py,
                "tests/servers/openai_dialect.py",
                "--port",
                str(provider_port),
                "--key",
                GOOD_KEY,
                "--key",
                ROTATED_KEY,
                "--model",
                "gpt-4o",
                "--model",
                "gpt-4o-mini",
            ],
            ready_url=f"http://127.0.0.1:{provider_port}/v1/models",
        )
        say(f"starting a local MCP server on 127.0.0.1:{mcp_port}")
        self.background(
            "demo-mcp",
            [py, "tests/servers/mcp_server.py", "--port", str(mcp_port), "--token", MCP_TOKEN],
            ready_url=f"http://127.0.0.1:{mcp_port}/mcp",
        )
        say(f"starting the operator (watching namespace {NS}; metrics on :{metrics_port})")
        self.background(
            "demo-operator",
            [
                py,
                "-m",
                "llmconn",
                "run",
                "-n",
                NS,
                "--default-interval",
                "1m",
                "--missing-secret-grace",
                "30s",
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                str(free_port()),
            ],
        )
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        )
        say("applying sample Secrets and LLMConnections")
        docs = manifests(f"http://127.0.0.1:{provider_port}/v1", f"http://127.0.0.1:{mcp_port}/mcp")
        self.kubectl(
            "apply", "-n", NS, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs)
        )
        names = [d["metadata"]["name"] for d in docs if d["kind"] == "LLMConnection"]
        self.wait_for_verdicts(names)
        print()
        print(self.kubectl("get", "llmconnections", "-n", NS, "-o", "wide"))
        print(NEXT_STEPS.format(ns=NS, rotated=ROTATED_KEY, metrics=metrics_port))

    def wait_for_verdicts(self, names: list[str]) -> None:
        deadline = time.monotonic() + 120
        while True:
            items = json.loads(self.kubectl("get", "llmconnections", "-n", NS, "-o", "json"))[
                "items"
            ]
            judged = {i["metadata"]["name"] for i in items if (i.get("status") or {}).get("result")}
            say(f"{len(judged & set(names))}/{len(names)} connections have a verdict")
            if set(names) <= judged:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"no verdict after 120s; see {self.log_dir / 'demo-operator.log'}")
            time.sleep(1)


def connection(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name},
        "spec": spec,
    }


def manifests(provider: str, mcp: str) -> list[dict[str, Any]]:
    key = {"name": "demo-openai", "key": "apiKey"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-openai"},
            "stringData": {"apiKey": GOOD_KEY},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-openai-wrong"},
            "stringData": {"apiKey": WRONG_KEY},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-mcp"},
            "stringData": {"token": MCP_TOKEN},
        },
        connection(
            "openai-healthy",
            {
                "provider": "openai-compatible",
                "endpoint": provider,
                "model": "gpt-4o",
                "apiKeySecretRef": key,
            },
        ),
        connection(
            "openai-wrong-key",
            {
                "provider": "openai-compatible",
                "endpoint": provider,
                "model": "gpt-4o",
                "apiKeySecretRef": {"name": "demo-openai-wrong"},
            },
        ),
        connection(
            "openai-missing-model",
            {
                "provider": "openai-compatible",
                "endpoint": provider,
                "model": "gpt-9-preview",
                "apiKeySecretRef": key,
            },
        ),
        connection(
            "mcp-healthy",
            {
                "provider": "mcp",
                "endpoint": mcp,
                "apiKeySecretRef": {"name": "demo-mcp", "key": "token"},
                "validation": {"type": "Model"},
            },
        ),
        connection(
            "secret-missing",
            {
                "provider": "openai-compatible",
                "endpoint": provider,
                "apiKeySecretRef": {"name": "not-created-yet"},
            },
        ),
        connection(
            "port-closed",
            {
                "provider": "openai-compatible",
                "endpoint": "http://127.0.0.1:9/v1",
                "apiKeySecretRef": key,
            },
        ),
        connection(
            "metadata-address",
            {
                "provider": "openai-compatible",
                "endpoint": "http://169.254.169.254/v1",
                "apiKeySecretRef": key,
            },
        ),
    ]


NEXT_STEPS = """\
The operator keeps running in the background (log: .local/logs/demo-operator.log). Try:

  export KUBECONFIG=$PWD/.local/kubeconfig PATH=$PWD/.local/bin:$PATH
  kubectl get llmconnections -n {ns} -w                  # watch verdicts change
  kubectl describe llmconnection openai-wrong-key -n {ns}

  # rotate the wrong key to a good one and watch openai-wrong-key turn Ready:
  kubectl create secret generic demo-openai-wrong -n {ns} --from-literal=apiKey={rotated} \\
      --dry-run=client -o yaml | kubectl apply -f -

  # ask for a validation now:
  kubectl annotate llmconnection openai-healthy -n {ns} --overwrite \\
      llmconn.dev/validate-requested-at="$(date -u +%FT%TZ)"

  kubectl wait llmconnection/openai-healthy -n {ns} --for=condition=Ready
  curl -s localhost:{metrics}/metrics | grep llmconn_

  make cluster-down      # stops the control plane, the operator and the demo servers
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT / ".local"))
    args = ap.parse_args(argv)
    Demo(Path(args.dir).absolute()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
