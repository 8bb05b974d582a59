"""`make soak`: faults under load, one after another, with recovery measured and checked.

Starts its own control plane, a loopback provider whose faults can be switched
(tests/servers/faulty.py) and the operator, as separate processes, creates N connections
(--connections, default 1,000) validating every --interval (default 30s, timeout 5s), waits
until all are validated, then runs each fault in turn:

  a. kube-apiserver killed (SIGKILL), --apiserver-down seconds down (20), started again;
  b. etcd frozen (SIGSTOP) for --etcd-frozen seconds (30), then SIGCONT;
  c. the operator killed (SIGKILL) while validations are in flight (the provider answers
     slowly until then), and started again;
  d. the provider resets every connection, then stalls every request (longer than the
     validation timeout), then flips between good and bad answers, --fault-seconds each (30).

After each, from the fault's end (for c: the operator's restart) it waits until every
connection has a status validated after that moment with the right verdict, and checks
(tests/soakkit.py says exactly how): that this recovery comes within one interval (plus
its 10% jitter) plus --allowance seconds (30); no status older than the one before; no
duplicate Events; no write storm (status PATCHes per validation during the recovery); the
operator did not exit on its own and answers /healthz. It prints a table, writes JSON
(default .local/bench/soak.json) and exits 1 when a check failed.

With --noisy-neighbour it runs tests/bench/noisy.py instead (its own options follow): one
namespace runs issue 23's attacks while another measures /healthz, its new connections'
verdicts, the operator's RSS and the Events and writes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

import bench  # the benchmark's pieces (its directory is this script's: first on sys.path)
from bench import KEY, NS, ROOT, Proc, connection, create_many, metric_sum

sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from ownplane import kill_apiserver, start_apiserver

from controlplane.cluster import ControlPlane, free_port
from llmconn.controller.triggers import JITTER
from soakkit import Harness, Verdict, status_log, table

SLOW = 2.0  # seconds the provider takes per answer before the operator is killed (fault c)


def progress(text: str) -> None:
    print(f"[soak] {text}", file=sys.stderr, flush=True)


class Operator:
    """The operator as a supervised process: an exit we did not cause is counted, and it is
    started again (as a kubelet would)."""

    def __init__(self, work: Path, env: dict[str, str], concurrency: int) -> None:
        self.work, self.env, self.concurrency = work, env, concurrency
        self.proc: Proc | None = None
        self.starts = 0
        self.unexpected_exits = 0
        self.exits: list[dict[str, Any]] = []
        self.metrics_port = self.health_port = 0

    def start(self) -> float:
        """Start it; returns the wall time it was started, once /healthz answers."""
        self.metrics_port, self.health_port = free_port(), free_port()
        cmd = [
            sys.executable,
            "-m",
            "llmconn",
            "run",
            "-n",
            NS,
            "--concurrency",
            str(self.concurrency),
            # One namespace holds every connection: no per-namespace write budget (the
            # default 5/s is for tenants; this namespace writes 33 a second by design).
            "--namespace-write-rate",
            "0",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--log-level",
            "warning",  # Kopf logs every event at info: at 1,000 connections, CPU of its own
        ]
        started = time.time()
        self.proc = Proc(f"operator-{self.starts}", cmd, self.work, self.env)
        self.starts += 1
        deadline = time.monotonic() + 120
        while not self.healthy():
            if self.proc.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start; see {self.proc.log}")
            time.sleep(0.2)
        return started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.p.send_signal(signal.SIGKILL)
        self.proc.p.wait()
        self.proc = None

    def supervise(self) -> None:
        if self.proc is not None and self.proc.p.poll() is not None:
            self.unexpected_exits += 1
            # A stop it was told to make (a SIGTERM from outside) is told apart from a crash.
            told = "Signal SIGTERM is received" in self.proc.log.read_text(errors="replace")
            self.exits.append({"code": self.proc.p.returncode, "sigterm_received": told})
            progress(f"the operator exited on its own ({self.exits[-1]}): starting it again")
            self.start()

    def healthy(self) -> bool:
        with contextlib.suppress(httpx2.HTTPError):
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            return httpx2.get(url, timeout=2).status_code == 200
        return False

    def metrics(self) -> str:
        return httpx2.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text

    def usage(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds) of the running process."""
        assert self.proc is not None
        return self.proc.usage()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.interval = bench._seconds(args.interval)
        self.deadline = self.interval * (1 + JITTER) + args.allowance
        self.names = [f"c{i:05d}" for i in range(args.connections)]
        self.work = Path(tempfile.mkdtemp(prefix="llmconn-soak-"))
        self.cp = ControlPlane(self.work, bin_dir=ROOT / ".local" / "bin")
        self.procs: list[Proc] = []
        self.verdicts: list[Verdict] = []
        self.origin = time.time()

    # --- the parts ------------------------------------------------------------------
    def provider(self, mode: str, delay: float = 0.0) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.provider_port}/_fault/{mode}?delay={delay}"
        stats: dict[str, Any] = httpx2.get(url, timeout=10).json()
        return stats

    def writes_reading(self) -> tuple[dict[str, int], int]:
        """(status PATCHes by HTTP code, validations written), read as close together as
        two processes allow."""
        counts = self.cp.apiserver_metrics()
        by_code: dict[str, int] = {}
        for labels, value in counts.samples:
            if (
                labels.get("resource") == "llmconnections"
                and labels.get("subresource") == "status"
                and labels.get("verb") == "PATCH"
            ):
                code = labels.get("code", "")
                by_code[code] = by_code.get(code, 0) + int(value)
        done = metric_sum(
            self.operator.metrics(), "llmconn_validations", "llmconn_validations_total"
        )
        return by_code, int(done)

    # --- the run --------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        try:
            progress(f"starting the control plane in {self.work}")
            self.cp.start()
            self.cp.kubectl("apply", "-f", str(ROOT / "crds" / "llmconnections.yaml"))
            self.cp.wait_established("llmconnections.llmconn.dev")
            self.cp.kubectl("create", "namespace", NS)
            self.cp.kubectl(
                "create", "secret", "generic", "bench-key", "-n", NS, f"--from-literal=apiKey={KEY}"
            )
            self.client_args = {
                "base_url": self.cp.server,
                "headers": {"Authorization": f"Bearer {self.cp.token}"},
                "verify": ssl.create_default_context(cafile=str(self.cp.ca_file)),
            }
            self.provider_port = free_port()
            faulty = ROOT / "tests" / "servers" / "faulty.py"
            cmd = [sys.executable, str(faulty), "--port", str(self.provider_port), "--key", KEY]
            self.procs.append(Proc("provider", cmd, self.work, self.cp.env()))
            for _ in range(100):
                with contextlib.suppress(httpx2.HTTPError):
                    self.provider("stats")
                    break
                time.sleep(0.1)
            self.operator = Operator(self.work, self.cp.env(), args.concurrency)
            self.operator.start()
            with (
                status_log(self.client_args, NS) as self.log,
                httpx2.Client(**self.client_args, timeout=60) as self.api,
            ):
                self.harness = Harness(
                    api=self.api,
                    namespace=NS,
                    log=self.log,
                    names=self.names,
                    writes=self.writes_reading,
                    boundary=args.concurrency,
                    operator_exits=lambda: self.operator.unexpected_exits,
                    healthy=self.operator.healthy,
                    supervise=self.operator.supervise,
                    extra=lambda: {"operator_rss_mib": round(self.operator.usage()[0], 1)},
                    settle=args.settle,
                    origin=self.origin,
                )
                self.create()
                faults: dict[str, Callable[[], None]] = {
                    "a": self.fault_apiserver,
                    "b": self.fault_etcd,
                    "c": self.fault_operator,
                    "d": self.fault_provider,
                }
                for letter in args.faults:
                    faults[letter]()
                result = self.result()
                with open(self.work / "statuses.jsonl", "w") as f:  # every status seen
                    for rec in self.log.snapshot():
                        f.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            print(self.summary(result))
            print(f"\nJSON written to {args.out}; logs in {self.work}")
            return 0 if result["passed"] else 1
        finally:
            if getattr(self, "operator", None) is not None:
                self.operator.stop()
            for p in reversed(self.procs):
                p.stop()
            with contextlib.suppress(OSError):  # a frozen etcd must not hang stop()
                os.kill(self.cp.pids().get("etcd", 0) or os.getpid(), signal.SIGCONT)
            self.cp.stop()

    def create(self) -> None:
        args = self.args
        url = f"http://127.0.0.1:{self.provider_port}/v1"
        progress(f"creating {args.connections} connections (interval {args.interval})")
        docs = []
        for name in self.names:
            doc = connection(name, url, args.interval)
            doc["spec"]["validation"]["timeout"] = args.timeout
            docs.append(doc)

        async def create() -> None:
            async with httpx2.AsyncClient(**self.client_args, timeout=60) as c:
                await create_many(c, docs, 32)

        started = time.time()
        asyncio.run(create())
        while True:
            current = self.log.current()
            done = sum(1 for n in self.names if n in current and current[n].fresh_and_right)
            if done == len(self.names):
                break
            progress(f"{done}/{len(self.names)} validated")
            time.sleep(2)
        self.created_s = round(time.time() - started, 1)
        progress(f"all validated {self.created_s}s after the first create; settling one interval")
        time.sleep(self.interval)

    def fault(
        self, letter: str, what: str, inject: Callable[[], tuple[float, dict[str, Any]]]
    ) -> None:
        """Run one fault: `inject` makes it and returns (its end, figures of its own)."""
        progress(f"fault {letter}: {what}")
        verdict = self.harness.run(
            letter, what, inject, deadline_s=self.deadline, wait_s=2 * self.deadline
        )
        self.verdicts.append(verdict)
        progress(
            f"fault {letter}: recovery {verdict.recovery_s}s (allowed {verdict.deadline_s}s), "
            + ("ok" if verdict.passed else "FAIL: " + "; ".join(verdict.failures))
        )

    # --- the faults -------------------------------------------------------------------
    def fault_apiserver(self) -> None:
        down = self.args.apiserver_down

        def inject() -> tuple[float, dict[str, Any]]:
            flags = kill_apiserver(self.cp)
            killed = time.time()
            time.sleep(down)
            start_apiserver(self.cp, flags)
            end = time.time()
            return end, {"down_s": round(end - killed, 1)}

        self.fault("a apiserver kill -9", f"kube-apiserver SIGKILL, {down:.0f}s down", inject)

    def fault_etcd(self) -> None:
        frozen = self.args.etcd_frozen

        def inject() -> tuple[float, dict[str, Any]]:
            etcd = self.cp.pids()["etcd"]
            os.kill(etcd, signal.SIGSTOP)
            try:
                time.sleep(frozen)
                alive = self.operator.proc is not None and self.operator.proc.p.poll() is None
            finally:
                os.kill(etcd, signal.SIGCONT)
            return time.time(), {"operator_alive_while_frozen": alive}

        self.fault("b etcd SIGSTOP", f"etcd SIGSTOP for {frozen:.0f}s", inject)

    def fault_operator(self) -> None:
        def inject() -> tuple[float, dict[str, Any]]:
            self.provider("slow", SLOW)
            want = max(1, min(8, self.args.concurrency // 8))
            held, deadline = 0, time.monotonic() + 60
            while held < want and time.monotonic() < deadline:
                time.sleep(0.1)
                held = int(self.provider("stats")["held"])
            self.operator.kill()
            self.provider("ok")
            end = self.operator.start()
            return end, {"probes_in_flight_at_kill": held, "restart_s": round(time.time() - end, 1)}

        self.fault("c operator kill -9", "operator SIGKILL mid-probe, started again", inject)

    def fault_provider(self) -> None:
        seconds = self.args.fault_seconds
        for mode, what in (
            ("reset", "resets every connection"),
            ("stall", f"stalls every request (timeout {self.args.timeout})"),
            ("flip", "flips between good and bad (401) answers"),
        ):

            def inject(mode: str = mode) -> tuple[float, dict[str, Any]]:
                before = self.provider(mode)
                time.sleep(seconds)
                after = self.provider("ok")
                counts = {
                    k: after.get(k, 0) - before.get(k, 0)
                    for k in ("requests", "good", "bad", "reset", "stall")
                }
                return time.time(), {"provider": counts}

            self.fault(f"d provider {mode}", f"the provider {what} for {seconds:.0f}s", inject)

    # --- the result -------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        return {
            "connections": self.args.connections,
            "interval": self.args.interval,
            "timeout": self.args.timeout,
            "operator_concurrency": self.args.concurrency,
            "allowed_recovery_s": round(self.deadline, 1),
            "all_validated_after_create_s": self.created_s,
            "origin": self.origin,  # wall time the faults' `started` and `ended` count from
            "operator": {
                "starts": self.operator.starts,
                "unexpected_exits": self.operator.unexpected_exits,
                "exits": self.operator.exits,
            },
            "status_log": {
                "records": len(self.log.records),
                "relists": self.log.relists,
                "reconnects": self.log.reconnects,
            },
            "faults": [v.as_dict() for v in self.verdicts],
            "passed": all(v.passed for v in self.verdicts),
        }

    def summary(self, r: dict[str, Any]) -> str:
        return "\n".join(
            [
                f"llmconn soak: {r['connections']} connections at {r['interval']} (timeout"
                f" {r['timeout']}), operator --concurrency {r['operator_concurrency']};"
                f" recovery allowed: {r['allowed_recovery_s']}s from each fault's end",
                "",
                table(self.verdicts),
                "",
                f"operator started {r['operator']['starts']} times"
                f" ({r['operator']['unexpected_exits']} exits of its own);"
                f" {r['status_log']['records']} statuses watched",
                "PASSED" if r["passed"] else "FAILED",
            ]
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--noisy-neighbour" in argv:  # one namespace attacks, another measures (noisy.py)
        import noisy

        return noisy.main([a for a in argv if a != "--noisy-neighbour"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--interval", default="30s", help="their validation interval (default 30s)")
    ap.add_argument("--timeout", default="5s", help="their validation timeout (default 5s)")
    ap.add_argument("--concurrency", type=int, default=64, help="the operator's (default 64)")
    ap.add_argument(
        "--allowance",
        type=float,
        default=30.0,
        help="seconds allowed beyond one interval (and its jitter) for every connection to "
        "be fresh after a fault (default 30)",
    )
    ap.add_argument("--apiserver-down", type=float, default=20.0)
    ap.add_argument("--etcd-frozen", type=float, default=30.0)
    ap.add_argument("--fault-seconds", type=float, default=30.0, help="each provider fault")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds for the last Events")
    ap.add_argument("--faults", default="abcd", help="which faults, in order (default abcd)")
    ap.add_argument("--out", default=str(ROOT / ".local" / "bench" / "soak.json"))
    args = ap.parse_args(argv)
    if set(args.faults) - set("abcd"):
        ap.error("--faults takes letters among a, b, c, d")
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
