"""`kubectl llmconn` through the real kubectl's plugin discovery, on the real control plane.

kubectl finds the plugin as the package's `kubectl-llmconn` console script on PATH (the venv's
bin directory), exactly as a user's kubectl would after `pip install`.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opkit import Api, ControlledProvider, OperatorProcess, condition, manifest, secret, wait_for

from controlplane.cluster import CONTEXT, ControlPlane
from servers.serve import serve

GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
BAD_KEY = "sk-bad-" + pysecrets.token_hex(12)
REQUESTED_AT = "llmconn.dev/validate-requested-at"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[ControlledProvider, str]]:
    p = ControlledProvider(keys={GOOD_KEY})
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(autouse=True)
def _reset_provider(provider: tuple[ControlledProvider, str]) -> None:
    provider[0].mode, provider[0].delay = "ok", 0.0


@pytest.fixture
def env(cluster: ControlPlane) -> dict[str, str]:
    """The cluster's environment with the venv's bin on PATH, where kubectl finds the plugin."""
    env = cluster.env()
    env["PATH"] = f"{cluster.bin_dir}:{VENV_BIN}:{env['PATH']}"
    return env


def kubectl(
    cluster: ControlPlane, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


@pytest.fixture
def operator(cluster: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, tmp_path, "-n", namespace, "--default-interval", "1h").start()
    yield op
    op.stop()


def create(cluster: ControlPlane, namespace: str, name: str, key: str, url: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=secret(namespace, f"{name}-key", {"apiKey": key}))
    spec = {
        "provider": "openai-compatible",
        "endpoint": url,
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": f"{name}-key"},
    }
    cluster.kubectl("apply", "-f", "-", input=manifest(namespace, name, spec))


def first_verdict(api: Api, namespace: str, name: str) -> dict:
    return wait_for(f"{name}'s first verdict", lambda: api.status(namespace, name).get("result"))


def test_kubectl_discovers_the_plugin(cluster, env) -> None:
    listed = kubectl(cluster, env, "plugin", "list")
    assert str(VENV_BIN / "kubectl-llmconn") in listed.stdout, listed.stdout + listed.stderr
    helped = kubectl(cluster, env, "llmconn", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: kubectl llmconn")
    for command in ("validate", "explain", "check"):
        assert command in helped.stdout


def test_validate_wait_prints_the_new_verdict(cluster, env, namespace, operator, provider) -> None:
    p, url = provider
    api = Api(cluster)
    create(cluster, namespace, "vllm", GOOD_KEY, url)
    assert first_verdict(api, namespace, "vllm") == "success"

    # The provider breaks, and answers slowly: the old verdict (success) is still there when
    # kubectl wait starts, so only waiting for the request's own verdict prints the failure.
    p.mode, p.delay = "unavailable", 2.0
    done = kubectl(cluster, env, "llmconn", "validate", "vllm", "-n", namespace, "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["NAME", "PROVIDER", "RESULT", "REASON", "LATENCY", "MESSAGE"]
    assert row.split()[:4] == ["vllm", "openai-compatible", "failed", "ProviderUnavailable"]
    obj = api.conn(namespace, "vllm")
    assert obj["status"]["lastHandledRequestedAt"] == obj["metadata"]["annotations"][REQUESTED_AT]

    p.mode = "ok"  # still slow: the failure just printed is there when kubectl wait starts
    done = kubectl(
        cluster, env, "llmconn", "validate", "vllm", "-n", namespace, "--wait", "-o", "json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [printed] = json.loads(done.stdout)
    assert (printed["name"], printed["namespace"]) == ("vllm", namespace)
    assert printed["status"]["result"] == "success"
    assert printed["status"]["lastHandledRequestedAt"] != obj["status"]["lastHandledRequestedAt"]


def test_validate_without_wait_only_asks(cluster, env, namespace) -> None:
    create(cluster, namespace, "vllm", GOOD_KEY, "http://127.0.0.1:9/v1")
    done = kubectl(cluster, env, "llmconn", "validate", "vllm", "-n", namespace)
    assert done.returncode == 0, done.stderr
    value = Api(cluster).conn(namespace, "vllm")["metadata"]["annotations"][REQUESTED_AT]
    assert done.stdout.strip() == (
        f"validation of {namespace}/vllm requested ({REQUESTED_AT}={value})"
    )


def test_validate_wait_without_operator_gives_up_with_2(cluster, env, namespace) -> None:
    create(cluster, namespace, "vllm", GOOD_KEY, "http://127.0.0.1:9/v1")
    done = kubectl(
        cluster, env, "llmconn", "validate", "vllm", "-n", namespace, "--wait", "--timeout", "2s"
    )
    assert done.returncode == 2
    assert f"no verdict for {namespace}/vllm within 2s: is the operator running" in done.stderr


def test_validate_refuses_a_suspended_connection(cluster, env, namespace) -> None:
    spec = {"provider": "openai-compatible", "endpoint": "http://127.0.0.1:9/v1", "suspend": True}
    cluster.kubectl("apply", "-f", "-", input=manifest(namespace, "paused", spec))
    done = kubectl(cluster, env, "llmconn", "validate", "paused", "-n", namespace, "--wait")
    assert done.returncode == 2
    assert "is suspended (spec.suspend is true)" in done.stderr
    assert REQUESTED_AT not in (Api(cluster).conn(namespace, "paused")["metadata"] or {}).get(
        "annotations", {}
    )


def test_validate_unknown_connection_relays_kubectls_error(cluster, env, namespace) -> None:
    done = kubectl(cluster, env, "llmconn", "validate", "nope", "-n", namespace)
    assert done.returncode == 2
    assert "NotFound" in done.stderr and '"nope" not found' in done.stderr


def test_connection_flags_reach_kubectl(cluster, env, namespace) -> None:
    """kubectl refuses flags before a plugin's name; the plugin takes them and passes them on."""
    create(cluster, namespace, "vllm", GOOD_KEY, "http://127.0.0.1:9/v1")
    bare = {k: v for k, v in env.items() if k != "KUBECONFIG"}
    args = ["llmconn", "validate", "vllm", "-n", namespace]
    without = kubectl(cluster, bare, *args)
    assert without.returncode == 2
    flags = [f"--kubeconfig={cluster.kubeconfig}", "--context", CONTEXT]
    done = kubectl(cluster, bare, *args, *flags)
    assert done.returncode == 0, done.stderr
    wrong = kubectl(cluster, bare, *args, f"--kubeconfig={cluster.kubeconfig}", "--context=nope")
    assert wrong.returncode == 2
    assert "nope" in wrong.stderr


def test_explain_a_failure(cluster, env, namespace, operator, provider) -> None:
    _, url = provider
    api = Api(cluster)
    create(cluster, namespace, "old-key", BAD_KEY, url)
    assert first_verdict(api, namespace, "old-key") == "failed"
    wait_for("the transition's Event", lambda: api.events(namespace))
    used = api.status(namespace, "old-key")["observedSecrets"][0]["resourceVersion"]

    done = kubectl(cluster, env, "llmconn", "explain", "old-key", "-n", namespace)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"old-key (namespace {namespace})\n")
    assert f"target      provider openai-compatible, model gpt-4o, endpoint {url}" in out
    assert "Ready       False (InvalidAPIKey) since " in out
    assert "Stalled     True: only a person can fix this" in out
    assert "latest      failed InvalidAPIKey, HTTP 401, code invalid_api_key" in out
    assert "means       The provider rejected the credentials" in out
    assert "what to do  Put a valid key in the Secret and key the message names." in out
    [row] = [line for line in out.splitlines() if line.startswith("  old-key-key")]
    assert row.split() == ["old-key-key", used, used]
    assert "Latest transitions (Events)" in out
    assert "Warning   ValidationFailed   InvalidAPIKey: The provider rejected the API key" in out
    assert BAD_KEY not in out

    # A rotation the operator has not seen yet (it is stopped) shows as a newer version.
    operator.stop()
    cluster.kubectl(
        "apply", "-f", "-", input=secret(namespace, "old-key-key", {"apiKey": GOOD_KEY})
    )
    done = kubectl(cluster, env, "llmconn", "explain", "old-key", "-n", namespace)
    [row] = [line for line in done.stdout.splitlines() if line.startswith("  old-key-key")]
    assert row.split()[1] == used
    assert row.endswith("(changed since)") and row.split()[2] != used


def test_explain_before_any_verdict(cluster, env, namespace) -> None:
    create(cluster, namespace, "new", GOOD_KEY, "http://127.0.0.1:9/v1")
    done = kubectl(cluster, env, "llmconn", "explain", "new", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert "verdict     none yet: the operator has written no status." in done.stdout
    assert "Transitions: no Events" in done.stdout


def test_explain_a_stale_verdict(cluster, env, namespace, operator, provider) -> None:
    _, url = provider
    api = Api(cluster)
    create(cluster, namespace, "vllm", GOOD_KEY, url)
    assert first_verdict(api, namespace, "vllm") == "success"
    operator.stop()
    cluster.kubectl(
        "patch", "llmconnection", "vllm", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"model": "gpt-5"}}',
    )  # fmt: skip
    done = kubectl(cluster, env, "llmconn", "explain", "vllm", "-n", namespace)
    assert "this verdict is about generation 1; generation 2 (the spec now) is not validated" in (
        done.stdout
    )
    assert condition(api.status(namespace, "vllm"), "Ready")["status"] == "True"


def test_check_is_the_offline_validator(cluster, env, provider, tmp_path) -> None:
    _, url = provider

    def check(key: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "connections.yaml"
        docs = [
            yaml.safe_load(secret("default", "vllm-key", {"apiKey": key})),
            yaml.safe_load(
                manifest(
                    "default",
                    "vllm",
                    {
                        "provider": "openai-compatible",
                        "endpoint": url,
                        "model": "gpt-4o",
                        "apiKeySecretRef": {"name": "vllm-key"},
                    },
                )
            ),
        ]
        path.write_text(yaml.safe_dump_all(docs))
        return kubectl(cluster, env, "llmconn", "check", "-f", str(path), "-o", "json")

    good = check(GOOD_KEY)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)[0]["status"]["reason"] == "Validated"
    bad = check(BAD_KEY)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)[0]["status"]["reason"] == "InvalidAPIKey"
    assert BAD_KEY not in bad.stdout + bad.stderr
    unusable = kubectl(cluster, env, "llmconn", "check", "-f", str(tmp_path / "missing.yaml"))
    assert unusable.returncode == 2
