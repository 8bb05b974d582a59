"""A one-node Kubernetes for the local control plane: containerd + runc (Debian's packages), and
kubelet, kube-controller-manager and kube-scheduler built from the same Go module and version
as kube-apiserver (tests/controlplane/kube).

`ControlPlane(..., node=True)` starts it after the apiserver and stops it first; this module
holds what the node needs and how it leaves the machine as it found it.

What the machine is like, and what follows (see docs/development.md, "The test node"):

- No systemd, cgroup v1: the cgroupfs driver everywhere.
- Root without CAP_SYS_RESOURCE: containerd restricts the OOM score adjustments the kubelet asks
  for, and the kubelet keeps its own at 0.
- The kubelet would write kernel settings of the shared kernel (vm.overcommit_memory,
  kernel.panic, ...). It runs in a mount namespace of its own, in which those /proc/sys files
  are bind-mounted files that already hold the values it wants, with `protectKernelDefaults`
  on: it refuses to start rather than write one. Its root directory is an rshared bind mount,
  so the tmpfs volumes it mounts there (projected ServiceAccount tokens) reach containerd.
- Loopback only: the kubelet serves on 127.0.0.1, the API server reaches it by the node's
  Hostname address `localhost` (never by its InternalIP, the machine's own non-loopback
  address, which the kubelet insists on), containerd's streaming server is on 127.0.0.1, pods
  run in the host's network, and the one CNI network is loopback only (without one the node
  is NotReady).
- No registry: the sandbox image and the operator's image are archives (tests/node/images.py)
  imported into containerd at start; image garbage collection is off, so nothing needs
  pulling back.

Teardown stops the kubelet, kube-controller-manager and kube-scheduler, kills and deletes
every container, stops containerd and its shims, unmounts everything under the node's
directory, removes the cgroups the node created in every hierarchy, and removes what the
kubelet and containerd made outside their directories (/var/lib/kubelet, /var/log/containers,
/run/containerd) when it was not there before. It works from the recorded state alone, so
`cluster.py down` in a new process cleans up after a crashed run too.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from controlplane.cluster import ControlPlaneError, free_port

if TYPE_CHECKING:
    from controlplane.cluster import ControlPlane

NODE_NAME = "localhost"  # also its Hostname address: the API server dials it on loopback
NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "unshare", "mount")
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
SANDBOX_IMAGE = "localhost/llmconn-test/pause:1"
# What the kubelet would write into the shared kernel (pkg/kubelet/cm, setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Paths the kubelet and containerd use whatever their directories are set to.
OUTSIDE_PATHS = (
    Path("/var/lib/kubelet"),  # device-plugins/
    Path("/var/log/containers"),  # the kubelet's links to the pods' logs
    Path("/run/containerd"),  # the shims' sockets (s/)
)
NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "k8s.io")
READY_TIMEOUT = 120.0


class NodeError(ControlPlaneError):
    """The node could not be started or stopped cleanly."""


def missing_tools(bin_dir: Path) -> list[str]:
    """Node binaries and Debian tools that are not there."""
    missing = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    missing += [name for name in HOST_TOOLS if shutil.which(name) is None]
    if not (CNI_BIN_DIR / "loopback").exists():
        missing.append(str(CNI_BIN_DIR / "loopback"))
    return missing


class Node:
    """The node of one ControlPlane: its files under `<root>/node`."""

    def __init__(self, plane: ControlPlane, images: Iterable[Path] = ()) -> None:
        self.plane = plane
        self.images = [Path(image) for image in images]
        self.dir = plane.root_dir / "node"
        self.state_file = self.dir / "state.json"
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.pki = self.dir / "pki"

    # -- before the API server starts -----------------------------------------------------

    def prepare(self) -> tuple[list[str], list[str]]:
        """Identities and certificates; returns (API server flags, token file lines)."""
        missing = missing_tools(self.plane.bin_dir)
        if missing:
            raise NodeError(
                f"the node needs {', '.join(missing)}: `make node-binaries` builds the "
                "Kubernetes ones; containerd, runc, the CNI plugins and podman are Debian's "
                "packages (see .ci/run)"
            )
        self.stop()  # a crashed run's leftovers
        others = [str(h / n) for h in _hierarchies() for n in CGROUP_NAMES if (h / n).exists()]
        if others:
            raise NodeError(
                f"{others[0]} exists: another node runs on this machine (one at a time: they "
                "would share these cgroups), or a crashed one left it; stop it with `make "
                "cluster-down` in its clone"
            )
        shutil.rmtree(self.dir, ignore_errors=True)
        for folder in (self.dir, self.pki, self.pod_logs, self.kubelet_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._record_outside()
        ca_key, ca_cert = _certificate("llmconn-test-kubelet-client-ca", None)
        client_key, client_cert = _certificate(
            "kube-apiserver-kubelet-client", (ca_key, ca_cert), organization="system:masters"
        )
        (self.pki / "kubelet-client-ca.crt").write_bytes(ca_cert)
        (self.pki / "apiserver-kubelet-client.crt").write_bytes(client_cert)
        key_file = self.pki / "apiserver-kubelet-client.key"
        key_file.write_bytes(client_key)
        key_file.chmod(0o600)
        lines = []
        for name, user, groups in (
            ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            ("kube-controller-manager", "system:kube-controller-manager", ""),
            ("kube-scheduler", "system:kube-scheduler", ""),
        ):
            token = os.urandom(24).hex()
            lines.append(
                f'{token},{user},{user}-uid,"{groups}"' if groups else f"{token},{user},{user}-uid"
            )
            self._state_update({f"token-{name}": token})
        flags = [
            # The node's pods need their ServiceAccount token volumes.
            "--enable-admission-plugins=ServiceAccount",
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={key_file}",
            # Logs, exec and port-forward by the node's name, which is loopback; never by its
            # InternalIP.
            "--kubelet-preferred-address-types=Hostname",
        ]
        return flags, lines

    # -- after the API server answers -----------------------------------------------------

    def start(self) -> None:
        try:
            self._start_containerd()
            self._import_images()
            self._start_controllers()
            self._start_kubelet()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _kubeconfig(self, name: str) -> Path:
        token = self._state()[f"token-{name}"]
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.plane.server,
                                "certificate-authority": str(self.plane.ca_file),
                            },
                        }
                    ],
                    "users": [{"name": name, "user": {"token": token}}],
                    "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
                    "current-context": name,
                }
            )
        )
        path.chmod(0o600)
        return path

    def _start_containerd(self) -> None:
        c = self.containerd_dir
        cni = self.dir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-loopback.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "llmconn-loopback",
                    "plugins": [{"type": "loopback"}],
                }
            )
        )
        cri = {
            "sandbox_image": SANDBOX_IMAGE,
            # The kubelet asks -998 for sandboxes; without CAP_SYS_RESOURCE none may be lowered.
            "restrict_oom_score_adj": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {
                            "SystemdCgroup": False,
                            "BinaryName": shutil.which("runc"),
                            "Root": str(c / "runc"),
                        },
                    }
                },
            },
            "cni": {"bin_dir": str(CNI_BIN_DIR), "conf_dir": str(cni)},
        }
        config = "\n".join(
            [
                "version = 2",
                f'root = "{c / "root"}"',
                f'state = "{c / "state"}"',
                "disabled_plugins = ["
                + ", ".join(
                    f'"io.containerd.{p}"'
                    for p in (
                        "snapshotter.v1.btrfs",
                        "snapshotter.v1.zfs",
                        "snapshotter.v1.devmapper",
                        "snapshotter.v1.aufs",
                        "tracing.processor.v1.otlp",
                        "internal.v1.tracing",
                    )
                )
                + "]",
                "[grpc]",
                f'address = "{self.socket}"',
                "[ttrpc]",
                f'address = "{self.socket}.ttrpc"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'path = "{c / "opt"}"',
                _toml_table('plugins."io.containerd.grpc.v1.cri"', cri),
            ]
        )
        (c / "config.toml").parent.mkdir(parents=True, exist_ok=True)
        (c / "config.toml").write_text(config + "\n")
        proc = self.plane._spawn_command(
            "containerd",
            [shutil.which("containerd") or "containerd", "--config", str(c / "config.toml")],
        )
        self.plane._wait("containerd", proc, lambda: self.ctr("version", timeout=5).returncode == 0)

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ctr",
                "--address",
                str(self.socket),
                "--connect-timeout",
                "2s",
                "-n",
                "k8s.io",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _import_images(self) -> None:
        for image in self.images:
            result = self.ctr("images", "import", str(image), timeout=300)
            if result.returncode != 0:
                raise NodeError(f"ctr images import {image} failed:\n{result.stderr}")

    def _start_controllers(self) -> None:
        self.plane._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self._kubeconfig('kube-controller-manager')}",
                # Each controller with a ServiceAccount of its own (tokens by TokenRequest).
                "--use-service-account-credentials=true",
                # What pods trust the API server by: the kube-root-ca.crt ConfigMaps.
                f"--root-ca-file={self.plane.ca_file}",
                "--leader-elect=false",
                "--secure-port=0",
                "--allocate-node-cidrs=false",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
            ],
        )
        self.plane._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self._kubeconfig('kube-scheduler')}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )

    def _start_kubelet(self) -> None:
        state = self._state()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": state["kubelet-port"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": state["kubelet-healthz-port"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "kubelet-client-ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "protectKernelDefaults": True,
            "makeIPTablesUtilChains": False,
            "oomScoreAdj": 0,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1%",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "failSwapOn": False,
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "staticPodPath": "",
            "registerNode": True,
        }
        config_file = self.dir / "kubelet.yaml"
        config_file.write_text(yaml.safe_dump(config))
        # Files holding the values the kubelet wants, bind-mounted over /proc/sys in its
        # namespace only.
        sysctls = self.dir / "sysctl"
        sysctls.mkdir(exist_ok=True)
        binds = []
        for key, value in KUBELET_SYSCTLS.items():
            if _read_sysctl(key) != value:
                path = sysctls / key.replace("/", ".")
                path.write_text(f"{value}\n")
                binds.append(f"mount --bind {path} /proc/sys/{key}")
        # The kubelet's root: an rshared bind mount in the host's namespace, so its copy in the
        # kubelet's namespace stays a peer and the volumes it mounts reach containerd.
        self._mount("--bind", str(self.kubelet_dir), str(self.kubelet_dir))
        self._mount("--make-rshared", str(self.kubelet_dir))
        kubelet = self.plane.bin_dir / "kubelet"
        script = "\n".join(
            [
                "set -e",
                "mount --make-rprivate /proc",
                *binds,
                'exec "$@"',
            ]
        )
        self.plane._spawn_command(
            "kubelet",
            [
                "unshare",
                "--mount",
                "--propagation",
                "unchanged",
                "--",
                "sh",
                "-c",
                script,
                "kubelet",
                str(kubelet),
                f"--config={config_file}",
                f"--kubeconfig={self._kubeconfig('kubelet')}",
                f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        checks = {
            "the node Ready": lambda: (
                self.plane.kubectl(
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                    check=False,
                ).stdout.strip()
                == "True"
            ),
            # kube-controller-manager at work: the default ServiceAccount and the CA ConfigMap.
            "kube-controller-manager": lambda: (
                self.plane.kubectl(
                    "get", "serviceaccount/default", "configmap/kube-root-ca.crt", check=False
                ).returncode
                == 0
            ),
        }
        for what, check in checks.items():
            while not check():
                for name in ("kubelet", "kube-controller-manager", "kube-scheduler", "containerd"):
                    pid = self.plane.pids().get(name)
                    if pid is None or not self.plane._alive(pid):
                        raise NodeError(f"{name} exited:\n{self.plane._log_tail(name)}")
                if time.monotonic() > deadline:
                    raise NodeError(
                        f"waited {READY_TIMEOUT:.0f}s for {what}:\n"
                        f"{self.plane._log_tail('kubelet')}"
                    )
                time.sleep(0.2)

    # -- teardown -------------------------------------------------------------------------

    def stop(self) -> None:
        """Leave the machine as it was before the node started (idempotent)."""
        if not self.dir.exists():
            return
        pids = self.plane.pids()
        # No one may start or restart a container from here on.
        self.plane._terminate(
            [pids[n] for n in ("kubelet", "kube-controller-manager", "kube-scheduler") if n in pids]
        )
        if "containerd" in pids and self.socket.exists():
            self._delete_containers()
        self._kill_cgroup_members()
        if "containerd" in pids:
            self.plane._terminate([pids["containerd"]])
        self._kill_shims()
        self._unmount_all()
        self._remove_cgroups()
        self._remove_outside()
        for name in ("kubelet", "kube-controller-manager", "kube-scheduler", "containerd"):
            (self.plane.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def _delete_containers(self) -> None:
        listing = self.ctr("containers", "list", "--quiet", timeout=30)
        ids = listing.stdout.split() if listing.returncode == 0 else []
        # Application containers first, sandboxes (their parents) last: the kubelet's order.
        for cid in ids:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, timeout=30)
        for cid in ids:
            self.ctr("tasks", "delete", "--force", cid, timeout=30)
            self.ctr("containers", "delete", cid, timeout=30)

    def _kill_cgroup_members(self) -> None:
        for _ in range(50):
            members = {
                int(pid)
                for group in self._our_cgroups()
                for pid in _read_lines(group / "cgroup.procs")
            }
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        """containerd's shims detach from it: find ours by the address they were given."""
        needle = str(self.socket).encode()
        shims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and needle in cmdline:
                    shims.append(int(proc.name))
        if shims:
            self.plane._terminate(shims)

    def _unmount_all(self) -> None:
        """Everything mounted under the node's directory (deepest first), and the netns the
        node's containerd made."""
        state = self._state()
        before = set(state.get("netns", []))
        targets = [m for m in _mount_points() if m == str(self.dir) or m.startswith(f"{self.dir}/")]
        for folder in NETNS_DIRS:
            targets += [
                m for m in _mount_points() if m.startswith(f"{folder}/cni-") and m not in before
            ]
        for point in sorted(set(targets), key=lambda m: m.count("/"), reverse=True):
            for _ in range(3):
                if point not in _mount_points():
                    break
                subprocess.run(["umount", point], capture_output=True, check=False)
            if point in _mount_points():
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
            if "/netns/cni-" in point:
                with contextlib.suppress(OSError):
                    Path(point).unlink()

    def _our_cgroups(self) -> list[Path]:
        """The node's cgroups in every hierarchy, deepest first."""
        found: list[Path] = []
        for hierarchy in _hierarchies():
            for name in CGROUP_NAMES:
                top = hierarchy / name
                if top.is_dir() and str(top) not in self._state().get("cgroups-before", []):
                    found += [Path(p) for p, _, _ in os.walk(top)]
        return sorted(found, key=lambda p: len(p.parts), reverse=True)

    def _remove_cgroups(self) -> None:
        for _ in range(50):
            left = []
            for group in self._our_cgroups():
                try:
                    group.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(group)
            if not left:
                return
            time.sleep(0.1)
        raise NodeError(f"cgroups still busy: {', '.join(map(str, left[:5]))}")

    def _record_outside(self) -> None:
        self._state_update(
            {
                "outside-before": [str(p) for p in OUTSIDE_PATHS if p.exists()],
                "cgroups-before": [
                    str(h / n) for h in _hierarchies() for n in CGROUP_NAMES if (h / n).exists()
                ],
                "netns": [str(p) for d in NETNS_DIRS if d.is_dir() for p in d.iterdir()],
                "netns-dirs-before": [str(d) for d in NETNS_DIRS if d.exists()],
                "kubelet-port": free_port(),
                "kubelet-healthz-port": free_port(),
            }
        )

    def _remove_outside(self) -> None:
        state = self._state()
        if "outside-before" not in state:
            return
        for path in OUTSIDE_PATHS:
            if str(path) not in state["outside-before"]:
                shutil.rmtree(path, ignore_errors=True)
        for folder in NETNS_DIRS:
            if str(folder) not in state.get("netns-dirs-before", []) and not folder.is_symlink():
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NodeError(f"mount {' '.join(args)}: {result.stderr}")

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _state_update(self, values: dict[str, Any]) -> None:
        state = {**self._state(), **values}
        self.state_file.write_text(json.dumps(state))
        self.state_file.chmod(0o600)


# -- what the machine looks like ----------------------------------------------------------


def machine_state(node_dir: Path) -> dict[str, list[str]]:
    """What a node could leave behind on the machine, to compare before and after one ran:
    mounts under its directory or of container runtimes, cgroups of pods and containers, the
    kernel settings the kubelet wants, network namespaces, netfilter rules, the paths used
    outside its directory, and processes that still name its directory."""
    runtime_mounts = ("/run/containerd", "/var/lib/kubelet", "/run/netns", "/var/run/netns")
    state: dict[str, list[str]] = {
        "mounts": sorted(
            m
            for m in _mount_points()
            if m.startswith(f"{node_dir}/") or m == str(node_dir) or m.startswith(runtime_mounts)
        ),
        "cgroups": sorted(
            str(group)
            for hierarchy in _hierarchies()
            for group in hierarchy.iterdir()
            if group.is_dir()
            and (group.name in CGROUP_NAMES or group.name.startswith(("libpod", "buildah")))
        ),
        "sysctls": [f"{key}={_read_sysctl(key)}" for key in KUBELET_SYSCTLS],
        "netns": sorted(str(p) for d in NETNS_DIRS if d.is_dir() for p in d.iterdir()),
        "paths": [str(p) for p in OUTSIDE_PATHS if p.exists()],
        "processes": sorted(
            f"{proc.name} {cmdline[:200]!r}"
            for proc in Path("/proc").iterdir()
            if proc.name.isdigit()
            and proc.name != str(os.getpid())
            and str(node_dir).encode() in (cmdline := _cmdline(proc))
        ),
    }
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            result = subprocess.run([tool], capture_output=True, text=True, check=False)
            state[tool] = [
                line
                for line in result.stdout.splitlines()
                if line and not line.startswith("#") and not line.startswith(":")
            ]
    return state


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


# -- helpers ------------------------------------------------------------------------------


def _read_sysctl(key: str) -> int | None:
    try:
        return int(Path(f"/proc/sys/{key}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, named, v2)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            point = Path(_unescape(line.split()[4]))
            if point.is_relative_to(CGROUP_ROOT):
                found.append(point)
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_points() -> list[str]:
    return [
        _unescape(line.split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]


def _certificate(
    common_name: str, issuer: tuple[bytes, bytes] | None, organization: str | None = None
) -> tuple[bytes, bytes]:
    """A key and certificate (PEM): a CA when `issuer` is None, else a client certificate
    signed by the issuer's (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    subject = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer[1])
        issuer_name = issuer_cert.subject
        loaded = serialization.load_pem_private_key(issuer[0], password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signing_key = loaded
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def _toml_table(name: str, table: dict[str, Any]) -> str:
    """A nested dict as TOML tables (strings, booleans and numbers only)."""
    lines = [f"[{name}]"]
    nested = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append(_toml_table(f"{name}.{key}", value))
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join([*lines, *nested])
