"""The `llmconn` command: `llmconn run` (the operator) and `llmconn validate` (one-shot).

`llmconn run ...` hands all of its arguments to `llmconn.controller.runner`, which owns the
operator's options; importing it (and Kopf) is left until it is asked for, so `validate`
stays light.

Exit codes of `validate`: 0 every connection validated, 1 any failed or could not be judged
(a missing Secret included), 2 the input is unusable or the command line is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from llmconn.cli.oneshot import NEEDS_CLUSTER, InputError, Outcome, exit_code, load, validate_all
from llmconn.model import logs
from llmconn.model.fields import parse_duration
from llmconn.model.verdict import Defaults
from llmconn.net.egress import EgressPolicy

USAGE_ERROR = 2


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmconn", description="Validate LLM and MCP provider connections."
    )
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "run",
        help="run the operator (see `llmconn run --help`)",
        add_help=False,
    )
    v = commands.add_parser(
        "validate",
        help="validate LLMConnection manifests once, without a cluster",
        description="Validate the LLMConnections in manifest files with the operator's own "
        "probes, resolving their Secret refs against the Secrets in the same files. "
        "Exit 0 when all succeed, 1 when any fails, 2 when the input is unusable.",
    )
    v.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="multi-document YAML with LLMConnections and Secrets; repeatable; - reads stdin",
    )
    v.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table (default) or json: a JSON list of {name, namespace, status} on stdout",
    )
    v.add_argument(
        "--default-timeout",
        type=_duration,
        default=Defaults().timeout,
        metavar="DURATION",
        help="probe timeout for connections whose spec sets none (default 10s)",
    )
    v.add_argument(
        "--concurrency",
        type=_positive,
        default=16,
        help="validations in flight at most (default 16)",
    )
    v.add_argument(
        "--no-inference",
        action="store_true",
        help="refuse Inference validations, as an operator started with --no-inference does",
    )
    v.add_argument(
        "--egress-deny",
        action="append",
        default=[],
        metavar="RULE",
        help="CIDR or host pattern to refuse, on top of link-local and metadata addresses; "
        "repeat or comma-separate",
    )
    v.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="what to log on stderr (default warning); secrets are redacted at every level",
    )
    v.add_argument(
        "--egress-allow",
        action="append",
        default=[],
        metavar="RULE",
        help="when given, only these CIDRs or host patterns may be reached",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"]:
        from llmconn.controller import runner  # Kopf and the operator load only for `run`

        return runner.main(args_list[1:])
    p = parser()
    args = p.parse_args(args_list)
    if args.command != "validate":
        p.print_help(sys.stderr)
        return USAGE_ERROR
    return _validate(args)


def _validate(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, "llmconn validate")
    try:
        egress = EgressPolicy.from_strings(deny=args.egress_deny, allow=args.egress_allow)
    except ValueError as exc:
        print(f"llmconn validate: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        manifests = load(args.filename, read_stdin=sys.stdin.read)
    except InputError as exc:
        print(f"llmconn validate: {exc}", file=sys.stderr)
        return USAGE_ERROR
    for skipped in manifests.skipped:
        print(f"llmconn validate: skipping {skipped}", file=sys.stderr)
    for conn in manifests.connections:
        if conn.spec.identity is not None and not conn.spec.suspend:
            print(
                f"llmconn validate: {conn.namespace}/{conn.name} ({conn.source}): {NEEDS_CLUSTER}",
                file=sys.stderr,
            )
    defaults = Defaults(
        timeout=args.default_timeout,
        inference_min_interval=None if args.no_inference else Defaults().inference_min_interval,
    )
    progress = _Progress(sys.stderr) if len(manifests.connections) > 1 else None
    outcomes = asyncio.run(
        validate_all(
            manifests,
            defaults,
            egress,
            concurrency=args.concurrency,
            progress=progress,
        )
    )
    if progress is not None:
        progress.clear()
    if args.output == "json":
        json.dump([_as_json(o) for o in outcomes], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(outcomes))
    return exit_code(outcomes)


def _as_json(outcome: Outcome) -> dict[str, object]:
    conn = outcome.connection
    shown: dict[str, object] = {"name": conn.name, "namespace": conn.namespace}
    if outcome.note is not None:
        shown["notValidated"] = outcome.note
    return {**shown, "status": outcome.status}


def table(outcomes: Sequence[Outcome]) -> str:
    """NAME PROVIDER RESULT REASON LATENCY MESSAGE, one row per connection."""
    several = len({o.connection.namespace for o in outcomes}) > 1
    rows = [("NAME", "PROVIDER", "RESULT", "REASON", "LATENCY", "MESSAGE")]
    for o in outcomes:
        conn, status = o.connection, o.status
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {}
        )
        latency = status.get("latencyMs")
        rows.append(
            (
                f"{conn.namespace}/{conn.name}" if several else conn.name,
                conn.spec.provider,
                str(status.get("result", "-")),
                str(status.get("reason") or ready.get("reason", "-")),
                f"{latency}ms" if latency is not None else "-",
                o.note or str(status.get("message") or ready.get("message", "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "   "
        + row[-1]
        + "\n"
        for row in rows
    )


class _Progress:
    """`validated 3/40` on one rewritten stderr line, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self._shown:
            self._stream.write(f"\rvalidated {done}/{total}")
            self._stream.flush()

    def clear(self) -> None:
        if self._shown:
            width = shutil.get_terminal_size().columns
            self._stream.write("\r" + " " * min(width, 40) + "\r")
            self._stream.flush()
