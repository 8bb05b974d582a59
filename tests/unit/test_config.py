"""`llmconn run`'s options as the operator parses them: every LLMCONN_* variable read, flags
winning over variables, list options taking both, the command line's scope, and bad values as
usage errors."""

from __future__ import annotations

import pytest

from llmconn.controller import config
from llmconn.controller.config import from_args

# One non-default value per option, as its variable.
EVERY_VARIABLE = {
    "LLMCONN_NAMESPACE": "team-a, team-b",
    "LLMCONN_CONCURRENCY": "7",
    "LLMCONN_NAMESPACE_CONCURRENCY": "2",
    "LLMCONN_DEFAULT_INTERVAL": "90s",
    "LLMCONN_DEFAULT_TIMEOUT": "2500ms",
    "LLMCONN_DEFAULT_FAILURE_THRESHOLD": "5",
    "LLMCONN_INFERENCE_MIN_INTERVAL": "2h",
    "LLMCONN_MISSING_SECRET_GRACE": "30s",
    "LLMCONN_MIN_INTERVAL": "15s",
    "LLMCONN_NAMESPACE_WRITE_RATE": "2.5",
    "LLMCONN_NAMESPACE_WRITE_BURST": "20",
    "LLMCONN_EGRESS_DENY": "10.0.0.0/8,*.internal",
    "LLMCONN_EGRESS_ALLOW": "192.0.2.0/24",
    "LLMCONN_METRICS_PORT": "9090",
    "LLMCONN_HEALTH_PORT": "9091",
    "LLMCONN_LISTEN_ADDRESS": "::1",
    "LLMCONN_PEERING": "ha",
    "LLMCONN_PEERING_LIFETIME": "20s",
    "LLMCONN_PRIORITY": "42",
    "LLMCONN_SHARD_INDEX": "1",
    "LLMCONN_SHARD_COUNT": "3",
    "LLMCONN_LOG_LEVEL": "debug",
    "LLMCONN_LOG_FORMAT": "json",
    "LLMCONN_SECRET_LABEL_SELECTOR": "llmconn.dev/watch=true",
    "LLMCONN_AWS_STS_ENDPOINT": "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com/",
    "LLMCONN_AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    "LLMCONN_GCP_STS_ENDPOINT": "https://sts.example-psc.p.googleapis.com",
    "LLMCONN_GCP_IAM_CREDENTIALS_ENDPOINT": "https://iamcredentials.example-psc.p.googleapis.com",
}
# Switches, and the one option that excludes another from the table above.
SWITCHES = {"LLMCONN_ALL_NAMESPACES", "LLMCONN_NO_INFERENCE"}


def variable(option: str) -> str:
    return "LLMCONN_" + option.removeprefix("--").upper().replace("-", "_")


def test_the_table_above_covers_every_option() -> None:
    options = {
        o for a in config.parser()._actions for o in a.option_strings if o.startswith("--")
    } - {"--help"}
    assert {variable(o) for o in options} == set(EVERY_VARIABLE) | SWITCHES


def test_every_option_is_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EVERY_VARIABLE.items():
        monkeypatch.setenv(name, value)

    c = from_args([])

    assert (c.all_namespaces, c.namespaces) == (False, ("team-a", "team-b"))
    assert (c.concurrency, c.namespace_concurrency) == (7, 2)
    assert c.defaults.interval == 90
    assert c.defaults.timeout == 2.5
    assert c.defaults.failure_threshold == 5
    assert c.defaults.inference_min_interval == 7200
    assert c.defaults.missing_secret_grace == 30
    assert c.defaults.min_interval == 15
    assert (c.write_rate, c.write_burst) == (2.5, 20)
    assert c.egress.check("db.internal", "192.0.2.7") is not None
    assert c.egress.check("x", "10.1.2.3") is not None
    assert c.egress.check("x", "192.0.2.7") is None
    assert c.egress.check("x", "198.51.100.7") is not None  # not in the allow list
    assert (c.metrics_port, c.health_port) == (9090, 9091)
    assert c.listen_address == "::1"
    assert c.health_endpoint == "http://[::1]:9091/healthz"
    assert (c.peering, c.peering_lifetime, c.priority) == ("ha", 20, 42)
    assert (c.shard.index, c.shard.count) == (1, 3)
    assert c.peering_name == "ha-shard-1"
    assert (c.log_level, c.log_format) == ("debug", "json")
    assert c.secret_label_selector == "llmconn.dev/watch=true"
    clouds = c.defaults.clouds
    assert clouds.aws_sts == "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com"
    assert clouds.azure_authority_host == "https://login.microsoftonline.us"
    assert clouds.gcp_sts == "https://sts.example-psc.p.googleapis.com"
    assert clouds.gcp_iam_credentials == "https://iamcredentials.example-psc.p.googleapis.com"


def test_the_clouds_default_to_their_public_endpoints() -> None:
    clouds = from_args(["-A"]).defaults.clouds
    assert clouds.aws_sts is None  # global, or the connection's stsRegion
    assert clouds.azure_authority_host == "https://login.microsoftonline.com"
    assert clouds.gcp_sts == "https://sts.googleapis.com"
    assert clouds.gcp_iam_credentials == "https://iamcredentials.googleapis.com"


@pytest.mark.parametrize(
    "flag",
    [
        "--aws-sts-endpoint=sts.amazonaws.com",
        "--azure-authority-host=ftp://login.example",
        "--gcp-sts-endpoint=https://sts.googleapis.com/?x=1",
    ],
)
def test_a_cloud_endpoint_must_be_an_http_url(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        from_args(["-A", flag])
    assert flag.split("=", 1)[0] in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_switches_are_read_from_their_variables(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LLMCONN_ALL_NAMESPACES", value)
    monkeypatch.setenv("LLMCONN_NO_INFERENCE", value)
    c = from_args([])
    assert c.all_namespaces
    assert c.defaults.inference_min_interval is None


def test_switches_stay_off_for_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCONN_NO_INFERENCE", "false")
    assert from_args(["-A"]).defaults.inference_min_interval == 3600


@pytest.mark.parametrize(
    ("name", "value", "flags", "read"),
    [
        ("LLMCONN_CONCURRENCY", "7", ["--concurrency", "9"], lambda c: c.concurrency == 9),
        (
            "LLMCONN_DEFAULT_INTERVAL",
            "90s",
            ["--default-interval=1m"],
            lambda c: c.defaults.interval == 60,
        ),
        ("LLMCONN_METRICS_PORT", "9090", ["--metrics-port=0"], lambda c: c.metrics_port == 0),
        ("LLMCONN_LOG_LEVEL", "debug", ["--log-level=error"], lambda c: c.log_level == "error"),
        ("LLMCONN_PEERING", "ha", ["--peering=other"], lambda c: c.peering == "other"),
        (
            "LLMCONN_SECRET_LABEL_SELECTOR",
            "a=b",
            ["--secret-label-selector=c=d"],
            lambda c: c.secret_label_selector == "c=d",
        ),
    ],
)
def test_a_flag_wins_over_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, flags: list[str], read
) -> None:
    monkeypatch.setenv(name, value)
    assert read(from_args(["-A", *flags]))


def test_list_options_take_the_values_of_both(monkeypatch: pytest.MonkeyPatch) -> None:
    # As the chart passes its rules as flags and an administrator adds some with extraEnv.
    monkeypatch.setenv("LLMCONN_EGRESS_DENY", "10.0.0.0/8, *.internal")
    monkeypatch.setenv("LLMCONN_EGRESS_ALLOW", "192.0.2.0/24")
    monkeypatch.setenv("LLMCONN_NAMESPACE", "team-a,team-b")
    c = from_args(
        [
            "-n",
            "team-c",
            "-n",
            "team-a",
            "--egress-deny=127.0.0.0/8",
            "--egress-allow=198.51.100.0/24",
            "--egress-allow=127.0.0.0/8",
        ]
    )
    assert c.namespaces == ("team-a", "team-b", "team-c")  # each once, the variable's first
    for host, ip in (("x", "10.1.2.3"), ("db.internal", "192.0.2.9"), ("x", "127.0.0.1")):
        assert c.egress.check(host, ip) is not None, (host, ip)
    assert c.egress.check("x", "192.0.2.9") is None
    assert c.egress.check("x", "198.51.100.9") is None
    assert c.egress.check("x", "203.0.113.9") is not None


def test_the_command_lines_scope_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCONN_ALL_NAMESPACES", "true")
    c = from_args(["-n", "team-a"])
    assert (c.all_namespaces, c.namespaces) == (False, ("team-a",))
    monkeypatch.delenv("LLMCONN_ALL_NAMESPACES")
    monkeypatch.setenv("LLMCONN_NAMESPACE", "team-a")
    c = from_args(["-A"])
    assert (c.all_namespaces, c.namespaces) == (True, ())


@pytest.mark.parametrize(
    ("variables", "argv", "complaint"),
    [
        ({}, [], "say which namespaces to watch"),
        (
            {"LLMCONN_ALL_NAMESPACES": "true", "LLMCONN_NAMESPACE": "a"},
            [],
            "LLMCONN_ALL_NAMESPACES and LLMCONN_NAMESPACE",
        ),
        ({"LLMCONN_CONCURRENCY": "many"}, ["-A"], "--concurrency: invalid int value: 'many'"),
        ({"LLMCONN_METRICS_PORT": "x"}, ["-A"], "--metrics-port"),
        ({"LLMCONN_DEFAULT_INTERVAL": "5 minutes"}, ["-A"], "--default-interval"),
        ({"LLMCONN_LOG_LEVEL": "verbose"}, ["-A"], "--log-level"),
        ({"LLMCONN_EGRESS_DENY": "10.0.0.1/8"}, ["-A"], "10.0.0.0/8"),
    ],
)
def test_a_bad_setting_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    argv: list[str],
    complaint: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        from_args(argv)
    assert stopped.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "share"),
    [
        (["-n", "team-a", "--concurrency", "40"], 40),  # one namespace: nobody to share with
        (["-n", "team-a", "-n", "team-b", "--concurrency", "40"], None),  # a quarter (default)
        (["-n", "team-*", "--concurrency", "40"], None),  # a pattern may match many
        (["-A", "--concurrency", "40"], None),
        (["-n", "team-a", "--concurrency", "40", "--namespace-concurrency", "5"], 5),
        (["-A", "--namespace-concurrency", "5"], 5),
    ],
)
def test_one_namespace_gets_every_worker_unless_told(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], share: int | None
) -> None:
    for name in EVERY_VARIABLE:
        monkeypatch.delenv(name, raising=False)
    assert from_args(argv).namespace_share == share


def test_budgets_default_to_a_floor_and_five_writes_a_second() -> None:
    c = from_args(["-A"])
    assert c.defaults.min_interval == 5
    assert (c.write_budget, c.write_burst) == (5, 100)
    assert from_args(["-n", "a,b"]).write_budget == 5
    # One namespace has no neighbour of this operator's to protect (as --namespace-concurrency).
    assert from_args(["-n", "a"]).write_budget == 0
    assert from_args(["-n", "a", "--namespace-write-rate=2"]).write_budget == 2


@pytest.mark.parametrize(
    "flag",
    [
        "--namespace-write-rate=-1",
        "--namespace-write-rate=nan",
        "--namespace-write-rate=inf",
        "--namespace-write-burst=0",
    ],
)
def test_a_budget_must_be_a_sane_number(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        from_args(["-A", flag])
    assert flag.split("=", 1)[0] in capsys.readouterr().err


def test_the_ports_listen_on_every_ipv4_interface_unless_told() -> None:
    c = from_args(["-A"])
    assert c.listen_address == "0.0.0.0"
    assert c.health_endpoint == "http://0.0.0.0:8081/healthz"
    assert from_args(["-A", "--listen-address=127.0.0.1"]).health_endpoint == (
        "http://127.0.0.1:8081/healthz"
    )
    assert from_args(["-A", "--health-port=0"]).health_endpoint is None


@pytest.mark.parametrize(
    "flag",
    [
        "--listen-address=localhost",
        "--listen-address=0.0.0.0:80",
        "--priority=4294967296",
        "--peering-lifetime=2h",
        "--peering-lifetime=0s",
    ],
)
def test_listen_address_priority_and_lifetime_are_checked(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        from_args(["-A", flag])
    assert flag.split("=", 1)[0] in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["team-*", "shop-?", "prod-[ab]"])
def test_peering_takes_namespace_names_not_patterns(
    pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The peering follower watches each named namespace's KopfPeering objects: a pattern
    would make a request path of its own (namespaces/team-*/kopfpeerings) and follow none."""
    with pytest.raises(SystemExit) as stopped:
        from_args(["-n", "default", "-n", pattern, "--peering", "llmconn"])
    assert stopped.value.code == 2
    assert "--peering takes namespace names, not patterns" in capsys.readouterr().err
    config = from_args(["-n", "default", "-n", "team-a", "--peering", "llmconn"])
    assert config.peering == "llmconn" and config.namespaces == ("default", "team-a")
    assert from_args(["-n", pattern]).namespace_patterns  # patterns alone stay allowed
