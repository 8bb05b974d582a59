"""The operator's options: one flag each, each also read from an LLMCONN_* variable.

Precedence: a flag wins over its variable. List options (-n, --egress-deny, --egress-allow)
take the values of both, the variable's first, so a chart's flags and an administrator's
variables add up. The scope is the command line's when it names one: -A there ignores
LLMCONN_NAMESPACE, and -n there ignores LLMCONN_ALL_NAMESPACES (but adds LLMCONN_NAMESPACE's
names).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from llmconn.controller.budget import DEFAULT_WRITE_BURST, DEFAULT_WRITE_RATE
from llmconn.controller.peering import MAX_LIFETIME, MAX_PRIORITY, Shard
from llmconn.model.fields import parse_duration
from llmconn.model.limits import MIN_INTERVAL_SECONDS
from llmconn.model.verdict import CloudEndpoints, Defaults
from llmconn.net.egress import EgressPolicy


@dataclass(frozen=True)
class Config:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    concurrency: int = 32
    namespace_concurrency: int | None = None  # None: see namespace_share
    defaults: Defaults = field(default_factory=Defaults)
    egress: EgressPolicy = field(default_factory=EgressPolicy.from_strings)
    metrics_port: int = 8080
    health_port: int = 8081
    listen_address: str = "0.0.0.0"  # noqa: S104  (the metrics and health ports'; in a pod, the pod IP)
    peering: str | None = None
    priority: int | None = None  # peering priority; None: a random one (see runner)
    peering_lifetime: float = 60.0  # seconds a silent replica counts as alive
    shard: Shard = field(default_factory=Shard)
    log_level: str = "info"
    log_format: str = "plain"
    secret_label_selector: str | None = None  # narrows the Secret watch
    write_rate: float | None = None  # status writes a second per namespace; see write_budget
    write_burst: int = DEFAULT_WRITE_BURST  # status writes at once per namespace

    @property
    def namespace_patterns(self) -> bool:
        """Whether -n names patterns (shop-*): Kopf then needs to watch namespaces."""
        return any(ch in ns for ns in self.namespaces for ch in "*?[!")

    @property
    def namespace_share(self) -> int | None:
        """Workers one namespace may hold: --namespace-concurrency; else every worker when the
        operator watches a single namespace (there is no one to share with, and a quarter
        would cap its throughput for nothing); else None, the reconciler's default share."""
        if self.namespace_concurrency is not None:
            return self.namespace_concurrency
        if self.single_namespace:
            return self.concurrency
        return None

    @property
    def single_namespace(self) -> bool:
        return not self.all_namespaces and len(self.namespaces) == 1 and not self.namespace_patterns

    @property
    def write_budget(self) -> float:
        """Status writes a second one namespace may make (0: no budget): --namespace-write-rate;
        else none when the operator watches a single namespace (no other tenant to protect,
        as with --namespace-concurrency), else DEFAULT_WRITE_RATE."""
        if self.write_rate is not None:
            return self.write_rate
        return 0.0 if self.single_namespace else DEFAULT_WRITE_RATE

    @property
    def health_endpoint(self) -> str | None:
        """Kopf's liveness endpoint URL on --listen-address, or None when turned off."""
        if not self.health_port:
            return None
        host = f"[{self.listen_address}]" if ":" in self.listen_address else self.listen_address
        return f"http://{host}:{self.health_port}/healthz"

    @property
    def peering_name(self) -> str | None:
        """One peering object per shard: replicas of different shards must not stand by
        behind one leader."""
        if self.peering is None or self.shard.count <= 1:
            return self.peering
        return f"{self.peering}-shard-{self.shard.index}"


TRUE = ("1", "true", "yes")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"LLMCONN_{name.upper().replace('-', '_')}", default)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _list(values: Sequence[str] | None) -> list[str]:
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def _merged(variable: str | None, flags: Sequence[str] | None) -> list[str]:
    """A list option's values: the variable's, then the flags', each once."""
    return list(dict.fromkeys(_list([variable or ""]) + _list(flags)))


POD_ORDINAL = "pod-ordinal"


def _shard_index(value: str, count: int) -> int:
    """--shard-index as given, or from the pod's name. A StatefulSet names its pods
    <name>-<ordinal>, and the chart passes that name in POD_ID (also Kopf's peering identity):
    ordinal i serves shard i % count, so that pods count..2*count-1 are the standbys of shards
    0..count-1, and scaling the StatefulSet down removes standbys first."""
    if value != POD_ORDINAL:
        try:
            return int(value)
        except ValueError:
            raise ValueError(
                f"--shard-index must be a number or {POD_ORDINAL!r}, not {value!r}"
            ) from None
    pod = os.environ.get("POD_ID", "")
    ordinal = pod.rpartition("-")[2]
    if not (ordinal.isascii() and ordinal.isdigit()):
        raise ValueError(
            f"--shard-index={POD_ORDINAL} needs POD_ID set to a StatefulSet pod's name "
            f"(<name>-<ordinal>), not {pod!r}"
        )
    return int(ordinal) % count


def parser() -> argparse.ArgumentParser:
    # Defaults are strings where a variable supplies them: argparse converts a string default
    # as it would the flag, so a bad variable is a usage error that names the option.
    p = argparse.ArgumentParser(
        prog="llmconn run",
        description="Run the llmconn operator against $KUBECONFIG or the in-cluster config. "
        "Every option also reads an LLMCONN_* environment variable "
        "(e.g. --metrics-port / LLMCONN_METRICS_PORT). A flag wins over its variable; "
        "list options (-n, --egress-deny, --egress-allow) take the values of both.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (LLMCONN_ALL_NAMESPACES)",
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace; repeat or comma-separate (LLMCONN_NAMESPACE)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=_env("concurrency") or "32",
        help="probes in flight at most (default 32)",
    )
    p.add_argument(
        "--namespace-concurrency",
        type=int,
        default=int(_env("namespace-concurrency", "0") or 0) or None,
        help="probes in flight at most for the connections of one namespace, so that one "
        "namespace's slow endpoints cannot hold every worker (default: a quarter of "
        "--concurrency, at least 1)",
    )
    p.add_argument(
        "--default-interval",
        type=_duration,
        default=_env("default-interval", "5m"),
        help="re-validation interval when the spec sets none (default 5m)",
    )
    p.add_argument(
        "--default-timeout",
        type=_duration,
        default=_env("default-timeout", "10s"),
        help="probe timeout when the spec sets none (default 10s)",
    )
    p.add_argument(
        "--default-failure-threshold",
        type=int,
        default=_env("default-failure-threshold") or "3",
        help="transient failures in a row before Ready turns False (default 3)",
    )
    inference = p.add_mutually_exclusive_group()
    inference.add_argument(
        "--inference-min-interval",
        type=_duration,
        default=_env("inference-min-interval", "1h"),
        help="floor on the interval of Inference validations (default 1h)",
    )
    inference.add_argument(
        "--no-inference",
        action="store_true",
        default=_env("no-inference", "") in TRUE,
        help="forbid Inference validations (they spend tokens)",
    )
    p.add_argument(
        "--min-interval",
        type=_duration,
        default=_env("min-interval", f"{MIN_INTERVAL_SECONDS}s"),
        help="floor on every connection's validation.interval (0 stays 0: no periodic "
        "re-validation); a tenant's interval of 1s cannot make the operator probe and write "
        f"every second (default {MIN_INTERVAL_SECONDS}s)",
    )
    p.add_argument(
        "--namespace-write-rate",
        type=float,
        default=_env("namespace-write-rate") or None,
        help="status writes a second one namespace may make, sustained; writes past it wait "
        f"(never dropped), a new or changed connection's first; 0: no budget (default "
        f"{DEFAULT_WRITE_RATE:g}; none when -n names a single namespace)",
    )
    p.add_argument(
        "--namespace-write-burst",
        type=int,
        default=_env("namespace-write-burst") or str(DEFAULT_WRITE_BURST),
        help="status writes one namespace may make at once before --namespace-write-rate "
        f"applies, so that creating many connections is not slowed (default "
        f"{DEFAULT_WRITE_BURST})",
    )
    p.add_argument(
        "--missing-secret-grace",
        type=_duration,
        default=_env("missing-secret-grace", "2m"),
        help="how long a missing Secret or ServiceAccount is waited for before Stalled "
        "(default 2m)",
    )
    p.add_argument(
        "--egress-deny",
        action="append",
        default=None,
        help="CIDR or host pattern to refuse, added to the built-in link-local and "
        "metadata denies; repeat or comma-separate (LLMCONN_EGRESS_DENY)",
    )
    p.add_argument(
        "--egress-allow",
        action="append",
        default=None,
        help="when given, only these CIDRs or host patterns are allowed (LLMCONN_EGRESS_ALLOW)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env("metrics-port") or "8080",
        help="Prometheus metrics port, 0 to turn off (default 8080)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=_env("health-port") or "8081",
        help="liveness endpoint port, GET /healthz; 0 to turn off (default 8081)",
    )
    p.add_argument(
        "--listen-address",
        default=_env("listen-address", "0.0.0.0"),  # noqa: S104
        help="the address the metrics and health ports listen on: 0.0.0.0 (every IPv4 "
        "interface, the pod IP included), :: (every interface), 127.0.0.1, or one address "
        "(default 0.0.0.0)",
    )
    p.add_argument(
        "--peering",
        default=_env("peering"),
        help="Kopf peering name for active/standby replicas (default: standalone)",
    )
    p.add_argument(
        "--peering-lifetime",
        type=_duration,
        default=_env("peering-lifetime", "60s"),
        help="how long a replica that stopped announcing itself still counts as alive, "
        "i.e. how soon a standby takes over (default 60s)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=_env("priority") or None,
        help="peering priority of this replica (default: random, so that of equal replicas "
        "one is active and the others stand by)",
    )
    p.add_argument(
        "--shard-index",
        default=_env("shard-index", "0"),
        help=f"the slice this replica owns: a number, or {POD_ORDINAL!r} for the ordinal at "
        "the end of this pod's name (POD_ID), modulo --shard-count, as in a StatefulSet",
    )
    p.add_argument(
        "--shard-count",
        type=int,
        default=_env("shard-count") or "1",
        help="split connections into N stable hash slices; this replica owns one",
    )
    p.add_argument(
        "--log-level",
        default=_env("log-level", "info"),
        choices=LOG_LEVELS,
    )
    p.add_argument("--log-format", default=_env("log-format", "plain"), choices=LOG_FORMATS)
    p.add_argument(
        "--secret-label-selector",
        default=_env("secret-label-selector") or None,
        help="watch only the Secrets with these labels (e.g. llmconn.dev/watch=true); other "
        "referenced Secrets are still read when validated, but their changes are not seen "
        "until the next validation",
    )
    clouds = CloudEndpoints()
    p.add_argument(
        "--aws-sts-endpoint",
        default=_env("aws-sts-endpoint") or None,
        help="where spec.identity.aws tokens are exchanged, for every connection: a VPC, FIPS "
        "or private endpoint of STS (default: sts.amazonaws.com, or the STS of the "
        "connection's stsRegion)",
    )
    p.add_argument(
        "--azure-authority-host",
        default=_env("azure-authority-host") or clouds.azure_authority_host,
        help="the Entra ID authority spec.identity.azure tokens are exchanged at, e.g. "
        f"https://login.microsoftonline.us for Azure Government (default "
        f"{clouds.azure_authority_host})",
    )
    p.add_argument(
        "--gcp-sts-endpoint",
        default=_env("gcp-sts-endpoint") or clouds.gcp_sts,
        help=f"Google's STS for spec.identity.gcp (default {clouds.gcp_sts})",
    )
    p.add_argument(
        "--gcp-iam-credentials-endpoint",
        default=_env("gcp-iam-credentials-endpoint") or clouds.gcp_iam_credentials,
        help="IAM Credentials, for spec.identity.gcp.serviceAccountEmail (default "
        f"{clouds.gcp_iam_credentials})",
    )
    return p


def _endpoint(p: argparse.ArgumentParser, option: str, value: str) -> str:
    """An exchange endpoint: an absolute http or https URL, without query or fragment."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        p.error(f"{option} must be an absolute http or https URL without a query: {value!r}")
    return value.rstrip("/")


def _address(p: argparse.ArgumentParser, value: str) -> str:
    """--listen-address: an IPv4 or IPv6 address (not a name: it is bound, not resolved)."""
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        p.error(f"--listen-address must be an IP address, not {value!r}")


def from_args(argv: Sequence[str]) -> Config:
    p = parser()
    args = p.parse_args(list(argv))
    all_namespaces, namespaces = _scope(p, args.all_namespaces, args.namespace)
    if args.shard_count < 1:
        p.error("--shard-count must be at least 1")
    try:
        shard_index = _shard_index(str(args.shard_index), args.shard_count)
    except ValueError as exc:
        p.error(str(exc))
    if not 0 <= shard_index < args.shard_count:
        p.error("--shard-index must be in [0, --shard-count)")
    for option, value, choices in (
        ("--log-level", args.log_level, LOG_LEVELS),
        ("--log-format", args.log_format, LOG_FORMATS),
    ):
        if value not in choices:  # argparse checks a flag's value, not a variable's
            p.error(f"argument {option}: invalid choice: {value!r} (choose from {choices})")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.namespace_concurrency is not None and args.namespace_concurrency < 1:
        p.error("--namespace-concurrency must be at least 1")
    if args.priority is not None and not -MAX_PRIORITY <= args.priority <= MAX_PRIORITY:
        p.error(f"--priority must be within +-{MAX_PRIORITY} (2**31)")
    if args.peering and any(ch in ns for ns in namespaces for ch in "*?[!"):
        # Kopf keeps a peering object in each namespace it finds; the engine's follower
        # watches the namespaces named, and a pattern names none (its path would be invalid).
        p.error("--peering takes namespace names, not patterns: name each namespace with -n")
    listen = _address(p, args.listen_address)
    if args.namespace_write_rate is not None and not (
        0 <= args.namespace_write_rate < float("inf")  # NaN too
    ):
        p.error("--namespace-write-rate must be a number, 0 or more")
    if args.namespace_write_burst < 1:
        p.error("--namespace-write-burst must be at least 1")
    durations = {
        k: _duration(v) if isinstance(v, str) else v
        for k, v in vars(args).items()
        if k
        in (
            "default_interval",
            "default_timeout",
            "inference_min_interval",
            "missing_secret_grace",
            "peering_lifetime",
            "min_interval",
        )
    }
    if not 0 < durations["peering_lifetime"] <= MAX_LIFETIME:
        p.error(f"--peering-lifetime must be more than 0 and at most {MAX_LIFETIME:.0f}s")
    clouds = CloudEndpoints(
        aws_sts=_endpoint(p, "--aws-sts-endpoint", args.aws_sts_endpoint)
        if args.aws_sts_endpoint
        else None,
        azure_authority_host=_endpoint(p, "--azure-authority-host", args.azure_authority_host),
        gcp_sts=_endpoint(p, "--gcp-sts-endpoint", args.gcp_sts_endpoint),
        gcp_iam_credentials=_endpoint(
            p, "--gcp-iam-credentials-endpoint", args.gcp_iam_credentials_endpoint
        ),
    )
    try:
        egress = EgressPolicy.from_strings(
            deny=_merged(_env("egress-deny"), args.egress_deny),
            allow=_merged(_env("egress-allow"), args.egress_allow),
        )
    except ValueError as exc:
        p.error(str(exc))
    return Config(
        namespaces=tuple(namespaces),
        all_namespaces=all_namespaces,
        concurrency=args.concurrency,
        namespace_concurrency=args.namespace_concurrency,
        defaults=Defaults(
            interval=durations["default_interval"],
            timeout=durations["default_timeout"],
            failure_threshold=args.default_failure_threshold,
            inference_min_interval=None
            if args.no_inference
            else durations["inference_min_interval"],
            missing_secret_grace=durations["missing_secret_grace"],
            min_interval=durations["min_interval"],
            clouds=clouds,
        ),
        egress=egress,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        listen_address=listen,
        peering=args.peering,
        peering_lifetime=durations["peering_lifetime"],
        priority=args.priority,
        shard=Shard(shard_index, args.shard_count),
        log_level=args.log_level,
        log_format=args.log_format,
        secret_label_selector=args.secret_label_selector,
        write_rate=args.namespace_write_rate,
        write_burst=args.namespace_write_burst,
    )


def _scope(
    p: argparse.ArgumentParser, all_flag: bool, namespace_flags: Sequence[str] | None
) -> tuple[bool, list[str]]:
    """(all namespaces, the namespaces): the command line's scope if it names one."""
    if all_flag:
        return True, []
    namespaces = _merged(_env("namespace"), namespace_flags)
    env_all = _env("all-namespaces", "") in TRUE
    if namespace_flags:
        return False, namespaces
    if env_all and namespaces:
        p.error("LLMCONN_ALL_NAMESPACES and LLMCONN_NAMESPACE are both set: say one")
    if not env_all and not namespaces:
        p.error("say which namespaces to watch: -A, or -n NAMESPACE (repeatable)")
    return env_all, namespaces
