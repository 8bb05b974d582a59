"""`kubectl llmconn`: a kubectl plugin to validate a connection now, explain its verdict, and
check manifests offline.

kubectl finds the `kubectl-llmconn` console script on PATH and runs it with the words after
`llmconn`. Every API call goes through kubectl itself, so the plugin signs in exactly as the
user's kubectl does (contexts, exec credential plugins, OIDC, proxies) and needs no Kubernetes
client library. kubectl refuses global flags before a plugin's name, so the plugin takes
`--context`, `--kubeconfig` and `-n` itself and hands them on.

Exit codes, as for `llmconn validate`: 0 the connection validated, 1 it failed or could not be
judged, 2 nothing to judge (not found, suspended, no verdict in time, a kubectl error, a wrong
command line).

Its length is one adapter's: three kubectl subcommands over kubectl's own output and exit
codes, with their help and the reasons' advice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from llmconn.model.fields import parse_duration

PROG = "kubectl llmconn"
RESOURCE = "llmconnections.llmconn.dev"
REQUESTED_AT = "llmconn.dev/validate-requested-at"
OK, FAILED, UNUSABLE = 0, 1, 2

# What each reason means and what to do about it: the Reasons table of docs/reference.md, as plain
# text (a test keeps the two the same).
REASONS: dict[str, tuple[str, str]] = {
    "Validated": ("The probe succeeded.", "Nothing."),
    "Pending": ("Ready condition only: not validated yet.", "Wait for the first probe."),
    "Suspended": (
        "Ready condition only: spec.suspend is true.",
        "Set spec.suspend: false to resume.",
    ),
    "InvalidAPIKey": (
        "The provider rejected the credentials: 401, invalid_api_key, authentication_error, "
        "Gemini API_KEY_INVALID, xAI's 400 for a wrong key, AWS UnrecognizedClientException "
        "or InvalidSignatureException, an MCP 401, or a service-account key that Google's "
        "token service refuses (invalid_grant).",
        "Put a valid key in the Secret and key the message names. For DashScope and Azure, "
        "also check that the endpoint is the key's region or resource.",
    ),
    "PermissionDenied": (
        "The credentials are valid but not allowed: 403, permission_error, Gemini "
        "FAILED_PRECONDITION, or on Vertex AI a missing aiplatform.endpoints.predict, a "
        "disabled API or billing.",
        "Check the key's project, region, scopes or the server's access rules.",
    ),
    "ModelNotFound": (
        "The model or deployment does not exist or is not accessible: 404, absent from the "
        "model list, Azure DeploymentNotFound, or not pulled on Ollama.",
        "Fix spec.model or spec.azure.deployment, or deploy or pull the model. New Azure "
        "deployments take about 5 minutes to show.",
    ),
    "ModelRetired": (
        "The provider has retired the model: requests naming it fail. Seen where the "
        "provider says so for free (Anthropic's model lookup, OpenAI's shutdown_date passed, "
        "Azure's deprecation.inference passed for the model a deployment serves, or Azure's "
        "410).",
        "Move spec.model to a current model (Azure: the deployment to a current model "
        "version). Deprecated models still validate, with a Deprecated condition that counts "
        "the days to retirement.",
    ),
    "QuotaExceeded": (
        'Out of credits or quota: insufficient_quota, 402, "credit balance", DashScope '
        "Arrearage, spend limits, or a Gemini quota of 0.",
        "Add credit or raise the quota with the provider.",
    ),
    "RateLimited": (
        "429 rate limit: the probe could not judge the connection.",
        "Nothing. The next probe waits for Retry-After.",
    ),
    "Timeout": (
        "No complete answer within spec.validation.timeout.",
        "Check the provider's latency, or raise the timeout.",
    ),
    "DNSFailure": (
        "The endpoint's host name did not resolve, or the lookup did not answer in time.",
        "Check the host in spec.endpoint and the cluster's DNS.",
    ),
    "ConnectionFailed": (
        "The TCP connection was refused or did not complete, or it broke mid-answer.",
        "Check the endpoint's host and port, and network policies.",
    ),
    "TLSError": (
        "The TLS handshake failed or the certificate was not trusted.",
        "For a private CA, set spec.tls.caBundleSecretRef. Check that the scheme is https.",
    ),
    "ProviderUnavailable": (
        '5xx, Anthropic 529, or "overloaded".',
        "Wait, and check the provider's status page.",
    ),
    "UnexpectedResponse": (
        "The answer is not the provider's API: an HTML page, invalid JSON, a path that does "
        "not exist, a redirect to another host, or a body over 1 MiB.",
        "Check spec.endpoint: the base URL as the provider's SDK takes it.",
    ),
    "ProtocolError": (
        "The MCP handshake broke the protocol.",
        "Check the MCP URL and spec.mcp.transport.",
    ),
    "InvalidConfiguration": (
        "The spec cannot work. Examples: Inference that is forbidden or unsupported, Model "
        "without a model, a Secret value that cannot go in a header, an unusable CA bundle, or "
        "a request the provider refused as invalid (400, 422, an unsupported Azure "
        "api-version).",
        "Fix the spec as the message says.",
    ),
    "SecretNotFound": (
        "The referenced Secret does not exist in the connection's namespace.",
        "Create the Secret. Stalled turns True only after --missing-secret-grace (default 2m), "
        "counted from when the operator process first saw the connection's current generation "
        "(a restart or a replica taking over starts it again), because Secrets often arrive a "
        "moment later from External Secrets, Sealed Secrets or Vault.",
    ),
    "SecretKeyNotFound": (
        "The Secret exists but lacks the key. The message lists the keys it has.",
        "Add the key, or fix the key in the reference.",
    ),
    "ServiceAccountNotFound": (
        "The ServiceAccount spec.identity names does not exist in the connection's namespace.",
        "Create the ServiceAccount. Stalled turns True only after --missing-secret-grace "
        "(default 2m), as for Secrets. The operator cannot watch ServiceAccounts: it asks "
        "again every 10 s during the grace period, then at the interval (or when asked: "
        "kubectl llmconn validate).",
    ),
    "IdentityExchangeFailed": (
        "The cloud refused the ServiceAccount's token (trust policy, audience, subject, "
        "unknown client or role), or the API server refused to mint one. The message names "
        "the step (AWS STS AssumeRoleWithWebIdentity, Entra ID token request, Google STS token "
        "exchange, IAM Credentials generateAccessToken, or TokenRequest) and code holds the "
        "cloud's error code (AccessDenied, InvalidIdentityToken, AADSTS700213, invalid_grant, "
        "...).",
        "Fix the trust on the cloud's side as the message says (it names the token's issuer "
        "and subject), or give the operator create on serviceaccounts/token (the chart's "
        "identity.enabled). See Identity.",
    ),
    "EgressDenied": (
        "The operator's egress policy refused the endpoint, and nothing was sent.",
        "Use another endpoint, or ask the operator's administrator (see Security).",
    ),
}


class KubectlError(Exception):
    """kubectl failed; the message is what it printed on stderr."""


class Kubectl:
    """kubectl with the user's connection flags."""

    def __init__(self, binary: str, flags: Sequence[str]) -> None:
        self.binary = binary
        self.flags = list(flags)

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            [self.binary, *self.flags, *args], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise KubectlError(proc.stderr.strip() or f"kubectl exited with {proc.returncode}")
        return proc.stdout

    def get(self, *args: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.run("get", *args, "-o", "json"))
        return obj


# -- command line ---------------------------------------------------------------------------


def _timeout(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return text


def parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("-n", "--namespace", help="the connection's namespace")
    connection.add_argument("--context", help="the kubeconfig context to use")
    connection.add_argument("--kubeconfig", help="the kubeconfig file to use")

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Validate LLMConnections now, explain their verdicts, check manifests.",
    )
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    v = commands.add_parser(
        "validate",
        parents=[connection],
        help="ask the operator to validate a connection now",
        description=f"Set the {REQUESTED_AT} annotation so that the operator validates the "
        "connection now. With --wait, wait for that validation's verdict and print it; exit 0 "
        "when it succeeded, 1 when it failed or could not judge, 2 without a verdict.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("--wait", action="store_true", help="wait for the verdict and print it")
    v.add_argument(
        "--timeout",
        type=_timeout,
        default="2m",
        metavar="DURATION",
        help="how long --wait waits for the verdict (default 2m)",
    )
    v.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="with --wait: table (default) or json ({name, namespace, status})",
    )
    e = commands.add_parser(
        "explain",
        parents=[connection],
        help="explain a connection's verdict: what it means, the fix, Secrets, transitions",
    )
    e.add_argument("name", metavar="NAME")
    commands.add_parser(
        "check",
        add_help=False,
        help="validate manifests offline: the options of `llmconn validate` (-f FILE ...)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["check"]:
        # The offline validator as it is: same options, output and exit codes. Imported here,
        # so that the other commands do not load the probes.
        from llmconn.cli import main as cli

        return cli.main(["validate", *args_list[1:]])
    args = parser().parse_args(args_list)
    binary = shutil.which("kubectl")
    if binary is None:
        return _fail("kubectl is not on PATH")
    flags = [
        f"--{name}={value}"
        for name in ("kubeconfig", "context", "namespace")
        if (value := getattr(args, name))
    ]
    kubectl = Kubectl(binary, flags)
    try:
        if args.command == "validate":
            return validate(kubectl, args.name, args.wait, args.timeout, args.output)
        return explain(kubectl, args.name)
    except KubectlError as exc:
        return _fail(str(exc))


def shown(text: str, *, lines: bool = False) -> str:
    """`text` with every character a terminal would not print as it is (controls, ESC and
    CSI sequences' starts, bidi and zero-width characters) escaped, as Python escapes them
    (`lines` keeps line breaks): what the operator stored came from tenants and providers."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or (lines and c == "\n") else c.encode("unicode_escape").decode()
        for c in text
    )


def _fail(message: str) -> int:
    print(f"{PROG}: {shown(message)}", file=sys.stderr)
    return UNUSABLE


# -- validate -------------------------------------------------------------------------------


def validate(kubectl: Kubectl, name: str, wait: bool, timeout: str, output: str) -> int:
    obj = kubectl.get(RESOURCE, name)
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{name}"
    if (obj.get("spec") or {}).get("suspend") is True:
        return _fail(
            f"{where} is suspended (spec.suspend is true): the operator validates it "
            "only after it is set back to false"
        )
    value = request_value(
        dt.datetime.now(dt.UTC), (meta.get("annotations") or {}).get(REQUESTED_AT)
    )
    kubectl.run("annotate", RESOURCE, name, "--overwrite", f"{REQUESTED_AT}={value}")
    if not wait:
        print(shown(f"validation of {where} requested ({REQUESTED_AT}={value})"))
        return OK
    try:
        kubectl.run(
            "wait",
            f"{RESOURCE}/{name}",
            f"--for=jsonpath={{.status.lastHandledRequestedAt}}={value}",
            f"--timeout={timeout}",
        )
    except KubectlError as exc:
        return _fail(
            f"no verdict for {where} within {timeout}: is the operator running and "
            f"watching namespace {meta.get('namespace')}? ({exc})"
        )
    status = kubectl.get(RESOURCE, name).get("status") or {}
    if output == "json":
        print(
            json.dumps(
                [{"name": name, "namespace": meta.get("namespace"), "status": status}], indent=2
            )
        )
    else:
        sys.stdout.write(verdict_table(name, status))
    return OK if status.get("result") == "success" else FAILED


def request_value(now: dt.datetime, previous: str | None) -> str:
    """A new annotation value: the time in UTC to the millisecond, never the previous one
    (the operator acts only on a value it has not handled)."""
    while True:
        value = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        if value != previous:
            return value
        now += dt.timedelta(milliseconds=1)


def verdict_table(name: str, status: dict[str, Any]) -> str:
    """The columns of `llmconn validate`: NAME PROVIDER RESULT REASON LATENCY MESSAGE."""
    latency = status.get("latencyMs")
    return _table(
        [
            ("NAME", "PROVIDER", "RESULT", "REASON", "LATENCY", "MESSAGE"),
            (
                name,
                str(status.get("provider", "-")),
                str(status.get("result", "-")),
                str(status.get("reason", "-")),
                f"{latency}ms" if latency is not None else "-",
                str(status.get("message", "")),
            ),
        ]
    )


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        indent
        + "   ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "   "
        + row[-1]
        + "\n"
        for row in rows
    )


# -- explain --------------------------------------------------------------------------------


def explain(kubectl: Kubectl, name: str) -> int:
    obj = kubectl.get(RESOURCE, name)
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    namespace = str(meta.get("namespace"))
    out = [f"{name} (namespace {namespace})"]
    out += verdict_lines(meta, spec, status)
    out += secret_lines(kubectl, namespace, status)
    out += event_lines(kubectl, namespace, name, str(meta.get("uid", "")))
    print("\n".join(shown(line, lines=True) for line in out))
    return OK


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == kind), {}
    )
    return found


def verdict_lines(meta: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """The verdict and what it means, from the object alone."""
    target = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("provider", status.get("provider") or spec.get("provider")),
            ("model", status.get("model") or spec.get("model")),
            ("endpoint", status.get("endpoint") or spec.get("endpoint")),
        )
        if value
    )
    lines = [f"  target      {target}"]
    if not status.get("conditions"):
        lines.append("  verdict     none yet: the operator has written no status. Is it running,")
        lines.append("              and does it watch this namespace?")
        return lines
    ready, stalled = _condition(status, "Ready"), _condition(status, "Stalled")
    lines.append(
        f"  Ready       {ready.get('status', 'Unknown')} ({ready.get('reason', '-')}) since "
        f"{ready.get('lastTransitionTime', '-')}"
    )
    if stalled.get("status") == "True":
        lines.append("  Stalled     True: only a person can fix this")
    if _condition(status, "Reconciling").get("status") == "True":
        lines.append("  Reconciling True: the first validation is running")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        lines.append(
            f"  note        this verdict is about generation {observed}; generation "
            f"{generation} (the spec now) is not validated yet"
        )
    if ready.get("message"):
        lines.append(f"  message     {ready['message']}")
    if status.get("result"):
        facts = [f"{status['result']} {status.get('reason', '')}".strip()]
        if status.get("httpStatus") is not None:
            facts.append(f"HTTP {status['httpStatus']}")
        if status.get("code"):
            facts.append(f"code {status['code']}")
        if status.get("latencyMs") is not None:
            facts.append(f"{status['latencyMs']} ms")
        failures = int(status.get("consecutiveFailures") or 0)
        if failures:
            facts.append(f"{failures} failure{'s' if failures > 1 else ''} in a row")
        lines.append(f"  latest      {', '.join(facts)} at {status.get('lastValidationTime', '-')}")
        if status.get("lastSuccessTime"):
            lines.append(f"  last OK     {status['lastSuccessTime']}")
    # The latest probe's reason, which may differ from Ready's under damping (a tolerated
    # Timeout keeps Ready=True), unless no probe counts: suspended, or none has finished.
    reason = str(ready.get("reason") or "")
    if reason not in ("Suspended", "Pending") and status.get("reason"):
        reason = str(status["reason"])
    if reason in REASONS:
        meaning, fix = REASONS[reason]
        lines += ["", reason, f"  means       {meaning}", f"  what to do  {fix}"]
    return lines


def secret_lines(kubectl: Kubectl, namespace: str, status: dict[str, Any]) -> list[str]:
    """The Secret versions the latest validation used, and each Secret's version now."""
    used = status.get("observedSecrets") or []
    if not used:
        return []
    rows = [("NAME", "USED VERSION", "NOW")]
    for item in used:
        name, version = str(item.get("name")), str(item.get("resourceVersion", "-"))
        try:
            # Only the version comes back: kubectl applies the template, not this process.
            now = kubectl.run(
                "get",
                "secret",
                name,
                "-n",
                namespace,
                "-o",
                "go-template={{.metadata.resourceVersion}}",
            ).strip()
            note = now if now == version else f"{now} (changed since)"
        except KubectlError as exc:
            note = "gone" if "NotFound" in str(exc) else "unknown (cannot read it)"
        rows.append((name, version, note))
    return ["", "Secrets used by the latest validation", _table(rows, "  ").rstrip("\n")]


def event_lines(kubectl: Kubectl, namespace: str, name: str, uid: str) -> list[str]:
    """The latest transitions: the operator posts Events only when Ready changes."""
    selector = f"involvedObject.kind=LLMConnection,involvedObject.name={name}"
    if uid:
        selector += f",involvedObject.uid={uid}"
    try:
        events = kubectl.get("events", "-n", namespace, "--field-selector", selector)
    except KubectlError as exc:
        return ["", f"Transitions: cannot read Events ({exc})"]
    items = sorted(
        events.get("items") or [],
        key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
    )[-5:]
    if not items:
        return ["", "Transitions: no Events (they expire after an hour by default)"]
    rows = [("LAST SEEN", "TYPE", "REASON", "MESSAGE")]
    rows += [
        (
            str(e.get("lastTimestamp") or e.get("eventTime") or "-"),
            str(e.get("type", "")),
            str(e.get("reason", "")),
            str(e.get("message", "")),
        )
        for e in reversed(items)
    ]
    return ["", "Latest transitions (Events)", _table(rows, "  ").rstrip("\n")]
