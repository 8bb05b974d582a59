"""Start and stop a local Kubernetes control plane (etcd + kube-apiserver) for tests and the demo.

It runs the way controller-runtime's envtest does: etcd and kube-apiserver on free loopback
ports, no controller-manager, no nodes; or, with `node=True` (`up --node`), with one real
node: containerd, kubelet, kube-controller-manager and kube-scheduler (see node.py). The apiserver makes its own serving certificate in its
cert dir (the kubeconfig trusts exactly that), an admin bearer token from a token file is in
`system:masters`, RBAC is on, and a service-account key pair lets `kubectl create token` work.

Layout under the root dir (`.local` for `make cluster-up`, a temp dir for the test session):

    bin/                    kube-apiserver, kubectl, etcd (built by `make control-plane`); the
                            node's kubelet, kube-controller-manager, kube-scheduler
    controlplane/           this cluster's state; wiped on every start
    node/                   the node's state, when it has one (node.py)
    logs/etcd.log, logs/kube-apiserver.log
    run/*.pid               every process to stop on `down` (the demo adds its own)
    kubeconfig

Command line: `python tests/controlplane/cluster.py up|down|status --dir .local`; `up --node
--image ARCHIVE...` starts the node too, with those image archives imported.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from controlplane.node import Node

BINARIES = ("etcd", "kube-apiserver", "kubectl")
START_TIMEOUT = 120.0  # seconds; a cold apiserver on 2 busy cores needs far less
STOP_GRACE = 10.0
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTEXT = "llmconn-local"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, or a command against it failed."""


class MissingBinariesError(ControlPlaneError):
    pass


@dataclass(frozen=True)
class RequestCounts:
    """`apiserver_request_total` samples at one moment: label sets and their counts."""

    samples: tuple[tuple[Mapping[str, str], float], ...]

    def total(self, **labels: str) -> int:
        """Sum of the samples whose labels match all the given ones (verb="PATCH", ...)."""
        return int(
            sum(
                value
                for sample, value in self.samples
                if all(sample.get(key) == want for key, want in labels.items())
            )
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane:
    """One etcd and one kube-apiserver, with their files under `root_dir`."""

    def __init__(
        self,
        root_dir: Path | str,
        bin_dir: Path | str | None = None,
        *,
        audit: bool = False,
        node: bool = False,
        images: Sequence[Path | str] = (),
    ) -> None:
        self.root_dir = Path(root_dir).absolute()
        self.audit = audit
        self.with_node = node
        self.images = [Path(image).absolute() for image in images]
        self.bin_dir = Path(bin_dir).absolute() if bin_dir else self.root_dir / "bin"
        self.state_dir = self.root_dir / "controlplane"
        self.run_dir = self.root_dir / "run"
        self.log_dir = self.root_dir / "logs"
        self.kubeconfig = self.root_dir / "kubeconfig"
        self.cert_dir = self.state_dir / "certs"
        self._state_file = self.state_dir / "state.json"
        self.audit_log = self.log_dir / "audit.log"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- facts about a running control plane ----------------------------------------------

    @property
    def _state(self) -> dict[str, str]:
        try:
            state: dict[str, str] = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state

    @property
    def server(self) -> str:
        """The apiserver's URL, e.g. https://127.0.0.1:40123."""
        return self._state.get("server", "")

    @property
    def token(self) -> str:
        """The admin bearer token (system:masters)."""
        return self._state.get("token", "")

    @property
    def ca_file(self) -> Path:
        # The self-made serving certificate, followed by the CA that signed it.
        return self.cert_dir / "apiserver.crt"

    def pids(self) -> dict[str, int]:
        """Processes recorded in run/, by name (the file name without .pid).

        A pid whose process started after its file was written has been reused by another
        process since: it is left out, so `down` never signals a stranger.
        """
        found = {}
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                started = _process_start_time(pid)
                if started is not None and started <= pid_file.stat().st_mtime + 1:
                    found[pid_file.stem] = pid
        return found

    def healthy(self) -> bool:
        """Whether the apiserver recorded in the state dir answers /readyz with ok."""
        if not self.server or not self.ca_file.exists():
            return False
        try:
            return self._get("/readyz", timeout=2).strip() == b"ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> bool:
        """Start etcd and kube-apiserver (and the node) unless already healthy; True when
        started now.

        Returns only once /readyz answers and the kubeconfig is written; with the node, once
        the node is Ready and kube-controller-manager has made the default ServiceAccount.
        """
        if self.healthy() and (not self.with_node or "kubelet" in self.pids()):
            self._write_kubeconfig()  # in case it was removed; the cluster is the same
            return False
        self.stop()  # leftovers of a half-dead cluster: start clean
        self._check_binaries()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for folder in (self.state_dir, self.cert_dir, self.run_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._write_kubeconfig()
            if self.with_node:
                self.node().start()
        except BaseException:
            self.stop()
            raise
        return True

    def node(self) -> Node:
        """The node of this control plane (whether it runs or not)."""
        from controlplane.node import Node

        return Node(self, self.images)

    def stop(self) -> None:
        """Stop the node (leaving nothing of it behind), then every process recorded in run/:
        others first, then the apiserver, then etcd."""
        self.node().stop()
        pids = self.pids()
        last = ("kube-apiserver", "etcd")
        waves = [[pid for name, pid in pids.items() if name not in last]]
        waves += [[pids[name]] for name in last if name in pids]
        for wave in waves:
            self._terminate(wave)
        for pid_file in self.run_dir.glob("*.pid"):
            pid_file.unlink(missing_ok=True)
        self._procs.clear()

    def _check_binaries(self) -> None:
        missing = [name for name in BINARIES if not os.access(self.bin_dir / name, os.X_OK)]
        if missing:
            raise MissingBinariesError(
                f"missing {', '.join(missing)} in {self.bin_dir}: run `make binaries` first "
                "(it builds them from the Go modules under tests/controlplane)"
            )

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        return self._spawn_command(name, [str(self.bin_dir / name), *args])

    def _spawn_command(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start `argv` in the background, logging to logs/NAME.log, recorded as run/NAME.pid."""
        with open(self.log_dir / f"{name}.log", "wb") as log:
            # A session of its own: the processes outlive `make cluster-up` and a Ctrl-C in
            # the terminal that started them; `down` signals the whole group.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self._procs[proc.pid] = proc
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _start_etcd(self) -> str:
        client = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        proc = self._spawn(
            "etcd",
            [
                "--name=llmconn",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=llmconn={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")

        self._wait("etcd", proc, etcd_healthy)
        return client

    def _start_apiserver(self, etcd_url: str) -> None:
        port = free_port()
        server = f"https://127.0.0.1:{port}"
        token = secrets.token_urlsafe(32)
        node_flags, node_tokens = self.node().prepare() if self.with_node else ([], [])
        tokens_file = self.state_dir / "tokens.csv"
        tokens_file.write_text(
            "".join(
                f"{line}\n" for line in [f"{token},admin,admin-uid,system:masters", *node_tokens]
            )
        )
        tokens_file.chmod(0o600)
        sa_key = self.state_dir / "service-account.key"
        sa_key.write_bytes(_rsa_private_key_pem())
        sa_key.chmod(0o600)
        self._state_file.write_text(
            json.dumps({"server": server, "etcd": etcd_url, "token": token})
        )
        self._state_file.chmod(0o600)
        proc = self._spawn(
            "kube-apiserver",
            [
                *self._audit_flags(),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                # Without it the apiserver looks for a non-loopback interface to advertise.
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.cert_dir}",
                f"--token-auth-file={tokens_file}",
                *(node_flags or ["--authorization-mode=RBAC"]),
                f"--service-account-issuer={server}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # No controller-manager makes default ServiceAccounts, so pods would be refused
                # (the node turns it on: it has one, and its pods need their tokens).
                *([] if self.with_node else ["--disable-admission-plugins=ServiceAccount"]),
                # Endpoints for 127.0.0.1 are invalid; the reconciler would only log errors.
                "--endpoint-reconciler-type=none",
            ],
        )
        self._wait("kube-apiserver", proc, self.healthy)

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        # Writes only, at Metadata level: who changed what, never a body (Secrets stay out).
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
                    "rules": [
                        {"level": "None", "verbs": ["get", "list", "watch"]},
                        {"level": "Metadata"},
                    ],
                }
            )
        )
        self.audit_log.unlink(missing_ok=True)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # Each event is on disk before its response goes out: counts are exact at once.
            "--audit-log-mode=blocking",
        ]

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode}:\n{self._log_tail(name)}"
                )
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError, ssl.SSLError):
                if ready():
                    return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {START_TIMEOUT:.0f}s:\n{self._log_tail(name)}"
        )

    def _log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _terminate(self, pids: Iterable[int]) -> None:
        """SIGTERM, then SIGKILL after a grace period; returns when all are gone."""
        alive = [pid for pid in pids if self._alive(pid)]
        for pid in alive:
            self._signal(pid, signal.SIGTERM)
        for sig, grace in ((signal.SIGKILL, STOP_GRACE), (None, STOP_GRACE)):
            deadline = time.monotonic() + grace
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [pid for pid in alive if self._alive(pid)]
            if sig is None:
                break
            for pid in alive:
                self._signal(pid, sig)
        if alive:
            raise ControlPlaneError(f"processes {alive} survived SIGKILL")

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # Our processes lead their own group: signal the group, so children go too. A pid file
        # written by someone else may name a process inside a shared group: signal only it.
        with contextlib.suppress(ProcessLookupError):
            try:
                group_leader = os.getpgid(pid) == pid
            except ProcessLookupError:
                return
            if group_leader:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def _alive(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll() is None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # A zombie is dead; its parent (often init) has just not reaped it yet.
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def _write_kubeconfig(self) -> None:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT,
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": CONTEXT,
                    "context": {"cluster": CONTEXT, "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": CONTEXT,
        }
        self.kubeconfig.touch(mode=0o600)
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- talking to it --------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 10) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body: bytes = response.read()
        return body

    def env(self) -> dict[str, str]:
        """The environment for a process that should use this cluster (kubectl on PATH)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.root_dir / "kubectl-cache")
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with check, a failure raises with its stderr."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each named CRD is Established. (`kubectl wait --for=condition=...`
        fails at once, instead of waiting, on a CRD whose status has no conditions yet.)"""
        deadline = time.monotonic() + timeout
        for crd in crds:
            while True:
                result = self.kubectl(
                    "get",
                    f"crd/{crd}",
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                    check=False,
                )
                if result.stdout.strip() == "True":
                    break
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"{crd} is not Established: {result.stderr}")
                time.sleep(0.1)

    def public_issuer_discovery(self) -> None:
        """Let anyone read the service-account issuer's discovery document and keys
        (`/.well-known/openid-configuration`, `/openid/v1/jwks`), as a cloud that trusts the
        cluster reads them: the binding Kubernetes documents for a public issuer."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "public-service-account-issuer-discovery"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:service-account-issuer-discovery",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "system:unauthenticated",
                }
            ],
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(binding))

    def create_namespace(self, hint: str = "test") -> str:
        """Create a namespace with a unique name derived from `hint`; returns the name."""
        base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
        name = f"{base}-{secrets.token_hex(3)}"
        self.kubectl("create", "namespace", name)
        return name

    def delete_namespace(self, name: str) -> None:
        # Nothing finalizes namespaces without a controller-manager: never wait for it.
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    def apiserver_metrics(self) -> RequestCounts:
        """The apiserver's request counters, to count the writes a test caused."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self._get("/metrics").decode()
        samples = tuple(
            (dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == "apiserver_request"
            for sample in family.samples
            if sample.name == "apiserver_request_total"
        )
        return RequestCounts(samples)

    def audit_events(self) -> list[dict[str, Any]]:
        """Every write so far (audit events at Metadata level); needs ControlPlane(audit=True).

        Unlike the metrics, events name the namespace, object and user, so a test can count
        its own writes while other tests write elsewhere: filter on `objectRef.namespace`,
        `objectRef.resource`, `objectRef.subresource`, `verb`, `user.username`.
        """
        if not self.audit:
            raise ControlPlaneError("audit events need ControlPlane(..., audit=True)")
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def writes(
        self,
        namespace: str,
        resource: str = "llmconnections",
        subresource: str | None = None,
        username: str | None = None,
    ) -> int:
        """How many successful writes hit `resource` (and `subresource`, "" for the object
        itself, None for both) in `namespace`, optionally by one user."""
        count = 0
        for event in self.audit_events():
            ref = event.get("objectRef", {})
            if (
                ref.get("namespace") == namespace
                and ref.get("resource") == resource
                and (subresource is None or ref.get("subresource", "") == subresource)
                and (username is None or event.get("user", {}).get("username") == username)
                and 200 <= event.get("responseStatus", {}).get("code", 0) < 300
            ):
                count += 1
        return count


def _process_start_time(pid: int) -> float | None:
    """When a process started (seconds since the epoch), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    # Field 22 (starttime, in clock ticks since boot); the name in parentheses may hold spaces.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _rsa_private_key_pem() -> bytes:
    # cryptography comes with the mcp dependency (pyjwt[crypto]); the stdlib makes no keys.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it, for printing."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".local", help="root dir for state, logs and pids")
    parser.add_argument("--bin-dir", default=None, help="where the binaries are (DIR/bin)")
    parser.add_argument("--node", action="store_true", help="up: with a node (see node.py)")
    parser.add_argument(
        "--image", action="append", default=[], help="up --node: an image archive to import"
    )
    args = parser.parse_args(argv)
    plane = ControlPlane(args.dir, args.bin_dir, node=args.node, images=args.image)

    if args.command == "down":
        names = sorted(plane.pids())
        plane.stop()
        print(f"stopped: {', '.join(names)}" if names else "nothing was running")
        return 0
    if args.command == "status":
        if plane.healthy():
            pids = ", ".join(f"{name} {pid}" for name, pid in plane.pids().items())
            print(f"running at {plane.server} (pids: {pids})")
            return 0
        print("not running")
        return 1

    started = time.monotonic()
    try:
        if not plane.start():
            print(f"control plane already running at {plane.server}")
        else:
            print(f"control plane ready at {plane.server} in {time.monotonic() - started:.1f}s")
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kubectl = plane.bin_dir / "kubectl"
    print(f"logs in {_shown(plane.log_dir)}/; use it with:")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {_shown(kubectl)} get ns")
    return 0


if __name__ == "__main__":
    # As a script its own folder is on the path, not tests/: run the `controlplane.cluster`
    # that node.py imports too, so that both share one ControlPlaneError.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from controlplane.cluster import main as package_main

    sys.exit(package_main())
