"""`llmconn validate`: manifests in, verdicts out, exit codes 0/1/2, JSON only on stdout.

The provider is the real openai probe against the OpenAI-dialect loopback server.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmconn.cli.main import main
from llmconn.cli.oneshot import load
from servers.openai_dialect import Dialect, make_app
from servers.serve import free_port, serve

KEY = "sk-test"
WRONG_KEY = "sk-wrong-0123456789abcdefghij"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(make_app(Dialect(keys=frozenset({KEY})))) as url:
        yield url + "/v1"


def connection(
    name: str,
    endpoint: str,
    secret: str | None = "creds",
    namespace: str | None = None,
    **spec: Any,
) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {"provider": "openai", "endpoint": endpoint, "model": "gpt-4o", **spec},
    }
    if secret is not None:
        doc["spec"]["apiKeySecretRef"] = {"name": secret}
    return json.dumps(doc)  # JSON is YAML


def secret(name: str, value: str, namespace: str | None = None, *, string: bool = False) -> str:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta}
    if string:
        body["stringData"] = {"apiKey": value}
    else:
        body["data"] = {"apiKey": base64.b64encode(value.encode()).decode()}
    return json.dumps(body)


def write(tmp_path: Path, *docs: str, name: str = "in.yaml") -> str:
    path = tmp_path / name
    path.write_text("\n---\n".join(docs) + "\n")
    return str(path)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any], str]:
    code = main(["validate", *argv, "-o", "json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


# --- exit 0 / 1 ------------------------------------------------------------------------


def test_all_valid_exits_0_and_prints_only_json(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("gpt", server), secret("creds", KEY))
    code, items, err = run_json(capsys, "-f", path)
    assert code == 0
    assert err == ""
    [item] = items
    assert item["name"] == "gpt" and item["namespace"] == "default"
    status = item["status"]
    assert status["result"] == "success" and status["reason"] == "Validated"
    assert isinstance(status["latencyMs"], int) and not isinstance(status["latencyMs"], bool)
    assert status["endpoint"] == server
    assert status["validation"]["type"] == "Model"
    assert status["lastValidationTime"].endswith("Z")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Validated"


def test_any_failure_exits_1_and_the_key_is_never_printed(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        connection("good", server),
        connection("bad-key", server, secret="wrong"),
        secret("creds", KEY),
        secret("wrong", WRONG_KEY, string=True),
    )
    code = main(["validate", "-f", path, "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 1
    items = json.loads(out)
    assert [i["status"]["reason"] for i in items] == ["Validated", "InvalidAPIKey"]
    assert items[1]["status"]["result"] == "failed"
    assert WRONG_KEY not in out + err
    assert WRONG_KEY[:12] not in out + err


def test_a_missing_secret_is_a_verdict_with_json_and_exit_1(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("orphan", server, secret="nowhere"))
    code, items, _ = run_json(capsys, "-f", path)
    assert code == 1
    status = items[0]["status"]
    assert status["reason"] == "SecretNotFound"
    assert "nowhere" in status["message"]
    assert "latencyMs" not in status


def test_secrets_resolve_only_within_their_namespace(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        connection("a", server, namespace="team-a"),
        connection("b", server, namespace="team-b"),
        secret("creds", KEY, namespace="team-a"),
    )
    code, items, _ = run_json(capsys, "-f", path)
    assert code == 1
    by_ns = {i["namespace"]: i["status"]["reason"] for i in items}
    assert by_ns == {"team-a": "Validated", "team-b": "SecretNotFound"}


def test_several_files_and_stdin_are_read_together(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = write(tmp_path, connection("gpt", server), name="conn.yaml")
    monkeypatch.setattr("sys.stdin", io.StringIO(secret("creds", KEY)))
    code, items, _ = run_json(capsys, "-f", conn, "-f", "-")
    assert code == 0
    assert items[0]["status"]["result"] == "success"


def test_string_data_wins_over_data(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    both = json.loads(secret("creds", WRONG_KEY))
    both["stringData"] = {"apiKey": KEY}
    code, items, _ = run_json(
        capsys, "-f", write(tmp_path, connection("gpt", server), json.dumps(both))
    )
    assert code == 0, items


def test_a_list_document_is_unpacked_and_other_kinds_are_skipped_with_a_note(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    items_doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [json.loads(connection("gpt", server)), json.loads(secret("creds", KEY))],
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}
    path = write(tmp_path, json.dumps(items_doc), json.dumps(config_map))
    code, items, err = run_json(capsys, "-f", path)
    assert code == 0
    assert [i["name"] for i in items] == ["gpt"]
    assert "skipping ConfigMap settings" in err


def test_many_connections_are_validated_in_input_order(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"conn-{i:02d}" for i in range(24)]
    docs = [connection(n, server) for n in names] + [secret("creds", KEY)]
    code, items, _ = run_json(capsys, "-f", write(tmp_path, *docs), "--concurrency", "4")
    assert code == 0
    assert [i["name"] for i in items] == names


def test_a_suspended_connection_is_not_validated_and_does_not_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    path = write(tmp_path, connection("paused", unreachable, suspend=True), secret("creds", KEY))
    code, items, _ = run_json(capsys, "-f", path)
    assert code == 0
    status = items[0]["status"]
    assert "result" not in status
    assert status["conditions"][0]["reason"] == "Suspended"


def test_an_identity_connection_is_not_probed_and_says_it_needs_a_cluster(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """spec.identity: nothing to mint a token with here. The static-key connection beside it
    is validated as usual; the identity one is listed as not validated, with why."""
    azure = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": "keyless"},
        "spec": {
            "provider": "azure-openai",
            "endpoint": server,  # never asked: nothing would be sent there
            "azure": {"deployment": "gpt-4o"},
            "identity": {
                "serviceAccountName": "agent",
                "azure": {
                    "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "clientId": "11111111-2222-3333-4444-555555555555",
                },
            },
        },
    }
    path = write(tmp_path, connection("keyed", server), secret("creds", KEY), json.dumps(azure))
    code, items, err = run_json(capsys, "-f", path)
    assert code == 0  # as for suspended connections: only validated ones count
    keyed, keyless = items
    assert keyed["status"]["reason"] == "Validated"
    assert keyless["status"] == {}
    assert "spec.identity needs a cluster" in keyless["notValidated"]
    assert "default/keyless" in err and "spec.identity needs a cluster" in err
    assert main(["validate", "-f", path]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:4] == ["keyless", "azure-openai", "-", "-"]
    assert "not validated: spec.identity needs a cluster" in table[2]


def test_no_inference_refuses_inference(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, connection("gpt", server, validation={"type": "Inference"}), secret("creds", KEY)
    )
    code, items, _ = run_json(capsys, "-f", path, "--no-inference")
    assert code == 1
    assert items[0]["status"]["reason"] == "InvalidConfiguration"


def test_egress_flags_apply_and_loopback_is_allowed_by_default(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("gpt", server), secret("creds", KEY))
    code, items, _ = run_json(capsys, "-f", path, "--egress-deny", "127.0.0.0/8")
    assert code == 1
    assert items[0]["status"]["reason"] == "EgressDenied"
    code, items, _ = run_json(capsys, "-f", path)
    assert code == 0


def test_the_default_timeout_flag_applies_when_the_spec_sets_none(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("gpt", server), secret("creds", KEY))
    _, items, _ = run_json(capsys, "-f", path, "--default-timeout", "3s")
    assert items[0]["status"]["validation"]["timeout"] == "3s"


def test_the_table_has_one_row_per_connection(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        connection("good", server),
        connection("orphan", server, secret="nowhere"),
        secret("creds", KEY),
    )
    code = main(["validate", "-f", path])
    out, _ = capsys.readouterr()
    assert code == 1
    header, good, orphan = out.splitlines()
    assert header.split() == ["NAME", "PROVIDER", "RESULT", "REASON", "LATENCY", "MESSAGE"]
    assert good.split()[:4] == ["good", "openai", "success", "Validated"]
    assert good.split()[4].endswith("ms")
    assert orphan.split()[:5] == ["orphan", "openai", "failed", "SecretNotFound", "-"]


# --- exit 2 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [unclosed", "not valid YAML (line 1"),
        ("- just\n- a list\n", "document 1: not a Kubernetes manifest"),
        ("kind: LLMConnection\n", "not a Kubernetes manifest"),
        (
            '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}',
            "no LLMConnection in /",
        ),
        (
            '{"apiVersion": "llmconn.dev/v1", "kind": "LLMConnection", "metadata": {"name": "x"}}',
            "apiVersion llmconn.dev/v1 is not served",
        ),
        (
            '{"apiVersion": "llmconn.dev/v1alpha1", "kind": "LLMConnection", "metadata": {}}',
            "has no metadata.name",
        ),
        (
            '{"apiVersion": "llmconn.dev/v1alpha1", "kind": "LLMConnection", '
            '"metadata": {"name": "x"}, "spec": {"provider": "openai", "endpoint": "ftp://h"}}',
            "LLMConnection default/x is invalid: spec.endpoint: Value error, endpoint must be",
        ),
        (
            '{"apiVersion": "llmconn.dev/v1alpha1", "kind": "LLMConnection", '
            '"metadata": {"name": "x"}, "spec": {"provider": "openai", "colour": "red"}}',
            "spec.colour: Extra inputs are not permitted",
        ),
        (
            '{"apiVersion": "llmconn.dev/v1alpha1", "kind": "LLMConnection", '
            '"metadata": {"name": "x"}, "spec": {"provider": "nope"}}',
            "spec.provider: Value error, unknown provider 'nope'",
        ),
        (
            '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, '
            '"data": {"apiKey": "not base64!"}}',
            "Secret data.apiKey is not valid base64",
        ),
    ],
)
def test_unusable_input_exits_2_with_a_message_and_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(content)
    code = main(["validate", "-f", str(path), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert message in err
    assert str(path) in err


def test_an_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", "-f", str(tmp_path / "missing.yaml")])
    _, err = capsys.readouterr()
    assert code == 2
    assert "missing.yaml: cannot read: No such file or directory" in err


def test_a_connection_defined_twice_exits_2(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("gpt", server), connection("gpt", server))
    assert main(["validate", "-f", path]) == 2
    assert "LLMConnection default/gpt is defined twice" in capsys.readouterr().err


def test_a_bad_egress_rule_exits_2(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, connection("gpt", server), secret("creds", KEY))
    assert main(["validate", "-f", path, "--egress-deny", "10.0.0.1/8"]) == 2
    assert "did you mean 10.0.0.0/8" in capsys.readouterr().err


def test_command_line_mistakes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as missing_file:
        main(["validate"])
    assert missing_file.value.code == 2
    with pytest.raises(SystemExit) as bad_output:
        main(["validate", "-f", "x.yaml", "-o", "yaml"])
    assert bad_output.value.code == 2
    assert main([]) == 2
    assert "validate" in capsys.readouterr().err


# Every option of `llmconn run`, none at its default.
RUN_ARGV = [
    "--namespace=team-a",
    "-n",
    "team-b",
    "--concurrency=7",
    "--namespace-concurrency=2",
    "--default-interval=90s",
    "--default-timeout=2500ms",
    "--default-failure-threshold=5",
    "--no-inference",
    "--missing-secret-grace=30s",
    "--egress-deny=10.0.0.0/8",
    "--egress-allow=192.0.2.0/24",
    "--metrics-port=9090",
    "--health-port=9091",
    "--listen-address=127.0.0.3",
    "--min-interval=10s",
    "--namespace-write-rate=3",
    "--namespace-write-burst=30",
    "--peering=ha",
    "--peering-lifetime=20s",
    "--priority=42",
    "--shard-index=1",
    "--shard-count=3",
    "--log-level=debug",
    "--log-format=json",
    "--secret-label-selector=llmconn.dev/watch=true",
    "--aws-sts-endpoint=https://sts.eu-west-1.amazonaws.com",
    "--azure-authority-host=https://login.microsoftonline.us",
    "--gcp-sts-endpoint=https://sts.p.googleapis.com",
    "--gcp-iam-credentials-endpoint=https://iamcredentials.p.googleapis.com",
]


def test_run_hands_every_argument_to_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from llmconn.controller import config
    from llmconn.model import logs

    # `--inference-min-interval` and `-A` exclude two options above; they get their own run.
    options = {o for a in config.parser()._actions for o in a.option_strings}
    given = {arg.split("=", 1)[0] for arg in RUN_ARGV if arg.startswith("-")}
    assert options - given == {"-h", "--help", "-A", "--all-namespaces", "--inference-min-interval"}
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: runs.append(kwargs))
    monkeypatch.setattr(logs, "guard", lambda: None)

    assert main(["run", *RUN_ARGV]) == 0
    assert main(["run", "-A", "--inference-min-interval=2h"]) == 0

    given_config = runs[0]["memo"].config
    assert given_config == config.from_args(RUN_ARGV)
    assert given_config.namespaces == ("team-a", "team-b")
    assert given_config.concurrency == 7 and given_config.secret_label_selector.endswith("true")
    assert runs[0]["namespaces"] == ("team-a", "team-b") and not runs[0]["clusterwide"]
    assert runs[0]["peering_name"] == "ha-shard-1" and runs[0]["priority"] == 42
    assert runs[0]["liveness_endpoint"] == "http://127.0.0.3:9091/healthz"
    assert given_config.defaults.min_interval == 10
    assert (given_config.write_rate, given_config.write_burst) == (3, 30)
    assert runs[1]["clusterwide"] and runs[1]["memo"].config.defaults.inference_min_interval == 7200


def test_run_help_is_the_operators(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["run", "--help"])
    assert shown.value.code == 0
    assert "llmconn run" in capsys.readouterr().out


# --- static cloud credentials, offline ----------------------------------------------------


def test_static_cloud_credentials_validate_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from servers.bedrock_dialect import HAIKU, BedrockState
    from servers.bedrock_dialect import make_app as bedrock_app

    key_id, secret_key = "AKIAOFFLINE000000001", "offline/secret-access-key-0123456789abcd"
    api_key, xai_key = "ABSK-offline-bedrock-api-key-0123456789", "xai-offline-key-0123456789ab"
    state = BedrockState(access_keys={key_id: (secret_key, None)}, api_keys=frozenset({api_key}))
    xai = Dialect(flavour="xai", keys=frozenset({xai_key}), models=("grok-4",))

    def doc(kind: str, name: str, body: dict[str, Any]) -> str:
        api = "v1" if kind == "Secret" else "llmconn.dev/v1alpha1"
        return json.dumps({"apiVersion": api, "kind": kind, "metadata": {"name": name}, **body})

    with serve(bedrock_app(state)) as aws, serve(make_app(xai)) as url:
        bedrock = {"provider": "bedrock", "endpoint": aws, "bedrock": {"region": "us-east-1"}}
        path = write(
            tmp_path,
            doc(
                "Secret",
                "aws",
                {"stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key}},
            ),
            doc("Secret", "bedrock-key", {"stringData": {"apiKey": api_key}}),
            doc("Secret", "xai", {"stringData": {"apiKey": xai_key}}),
            doc(
                "LLMConnection",
                "sigv4",
                {"spec": {**bedrock, "model": HAIKU, "awsCredentialsSecretRef": {"name": "aws"}}},
            ),
            doc(
                "LLMConnection",
                "bearer",
                {"spec": {**bedrock, "apiKeySecretRef": {"name": "bedrock-key"}}},
            ),
            doc(
                "LLMConnection",
                "grok",
                {
                    "spec": {
                        "provider": "xai",
                        "endpoint": url + "/v1",
                        "model": "grok-4",
                        "apiKeySecretRef": {"name": "xai"},
                    }
                },
            ),
        )
        code, items, err = run_json(capsys, "-f", path)
    assert code == 0, items
    assert [item["status"]["reason"] for item in items] == ["Validated"] * 3
    printed = json.dumps(items) + err
    assert not [s for s in (key_id, secret_key, api_key, xai_key) if s in printed]
    schemes = {seen.headers["authorization"].split()[0] for seen in state.seen}
    assert schemes == {"AWS4-HMAC-SHA256", "Bearer"}


def test_yaml_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    """An unquoted date stays text (kubectl's YAML becomes JSON, which has no dates), and a
    field left empty or null is dropped as the API server prunes it: what `kubectl apply`
    takes, `llmconn validate` takes too."""
    path = tmp_path / "azure.yaml"
    path.write_text(
        "apiVersion: llmconn.dev/v1alpha1\n"
        "kind: LLMConnection\n"
        "metadata: {name: az}\n"
        "spec:\n"
        "  provider: azure-openai\n"
        "  endpoint: https://demo.openai.azure.com\n"
        "  azure:\n"
        "    deployment: gpt-4o\n"
        "    apiVersion: 2024-10-21\n"
        "  tls:\n"
        "  headers: null\n"
        "  suspend: null\n"
        "  apiKeySecretRef: {name: creds}\n"
    )
    [conn] = load([str(path)]).connections
    assert conn.spec.azure is not None and conn.spec.azure.api_version == "2024-10-21"
    assert conn.spec.headers == {} and conn.spec.suspend is False
    assert conn.spec.tls.insecure_skip_verify is False
