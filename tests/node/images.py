"""Images for the test node, without a registry.

- The sandbox (pause) image: the project's own static `pause` program (tests/node/pause), one
  layer, written here as an OCI image archive.
- The operator's image: `operator/Dockerfile` built unchanged by podman (buildah inside), its
  `PYTHON_IMAGE` a Debian base that `make image` makes with mmdebstrap, saved as an archive.

The node imports both archives into its containerd (`ctr images import`) when it starts.
podman runs with storage, run state, temp files and settings of its own under
`.local/podman`, so it leaves nothing in the machine's container storage.

Command line (the Makefile's `image` and `pause-image` targets):

    python tests/node/images.py pause --binary .local/bin/pause --out .local/images/pause.tar
    python tests/node/images.py operator --base .local/images/base.tar \\
        --out .local/images/llmconn.tar
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_VERSION = str(
    yaml.safe_load((ROOT / "charts" / "llmconn" / "Chart.yaml").read_text())["appVersion"]
)
# podman's name for a short name it built: the chart then runs with
# image.repository=localhost/llmconn (its tag, the appVersion, stays the chart's default).
OPERATOR_REPOSITORY = "localhost/llmconn"
OPERATOR_IMAGE = f"{OPERATOR_REPOSITORY}:{CHART_VERSION}"
BASE_IMAGE = "localhost/llmconn-base:bookworm"
PAUSE_IMAGE = "localhost/llmconn-test/pause:1"
# The host's trust roots, for RUN steps that fetch packages through a TLS proxy only the host
# trusts: mounted read-only while they run, never copied into the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PODMAN_NPROC = 32768
# Where podman keeps its blob cache whatever its storage settings say.
MACHINE_STORAGE = Path("/var/lib/containers")
EPOCH = 0  # fixed timestamps: the same binary gives the same image


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data))


def oci_archive(binary: Path, ref: str, out: Path) -> None:
    """A one-layer OCI image archive whose only file is `binary` as /pause, its entrypoint."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "pause", binary.read_bytes(), 0o755)
    diff_id = _sha256(layer_tar.getvalue())
    layer = gzip.compress(layer_tar.getvalue(), mtime=EPOCH)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha256(layer),
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _sha256(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(tar, "index.json", index)
        for blob in (config, manifest, layer):
            _add(tar, "blobs/sha256/" + _sha256(blob).split(":", 1)[1], blob)
    partial.replace(out)


class Podman:
    """podman with everything of its own under `home`: storage, run state, settings, temp."""

    def __init__(self, home: Path) -> None:
        self.home = home.absolute()
        self.tmp = self.home / "tmp"
        for folder in (self.home, self.tmp, self.home / "networks"):
            folder.mkdir(parents=True, exist_ok=True)
        # Without CAP_SYS_RESOURCE no limit can be raised again once lowered: runc must set
        # limits no higher than those its parent has. podman's defaults are higher; and podman
        # lowers its own limit of processes to PODMAN_NPROC before it starts conmon.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        if nproc == resource.RLIM_INFINITY or nproc > PODMAN_NPROC:
            nproc = PODMAN_NPROC
        limits = [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]
        self.ulimits = [arg for limit in limits for arg in ("--ulimit", limit)]
        conf = self.home / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f"default_ulimits = {json.dumps(limits)}\n"
            "[engine]\n"
            # No systemd here: plain cgroupfs, and events in a file of our own.
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.home / "events.log"}"\n'
            f'tmp_dir = "{self.home / "libpod-tmp"}"\n'
            'runtime = "runc"\n'
            "[network]\n"
            f'network_config_dir = "{self.home / "networks"}"\n'
        )
        storage = self.home / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.home / "storage"}"\n'
            f'runroot = "{self.home / "run"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(storage),
            "TMPDIR": str(self.tmp),
        }

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, check=True, text=True, **kwargs)

    def __enter__(self) -> Podman:
        self._had_machine_storage = MACHINE_STORAGE.exists()
        return self

    def __exit__(self, *exc: object) -> None:
        """Unmount whatever the storage still has mounted; remove the cache podman keeps in
        the machine's container storage whatever its settings say, unless that was there."""
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self("unmount", "--all", capture_output=True)
        for mount in reversed(_mounts_under(self.home)):
            subprocess.run(["umount", "-l", mount], check=False)
        if not self._had_machine_storage:
            shutil.rmtree(MACHINE_STORAGE, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.absolute()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix[:-1] or point.startswith(prefix):
            found.append(point)
    return found


def build_operator(base: Path, out: Path, home: Path) -> float:
    """Import `base` (an mmdebstrap tarball) as the base image, build operator/Dockerfile on
    it and save the result as a docker archive at `out`. Returns the seconds it took."""
    started = time.monotonic()
    with Podman(home) as podman:
        podman("import", "--quiet", str(base), BASE_IMAGE, stdout=subprocess.DEVNULL)
        volumes = []
        if HOST_CA_BUNDLE.is_file():
            volumes = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        podman(
            "build",
            "--file",
            str(ROOT / "operator" / "Dockerfile"),
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            # RUN steps in the host's network: no bridge, no netfilter rules.
            "--network",
            "host",
            # buildah's own limits for RUN steps, not containers.conf's: the current ones too.
            *podman.ulimits,
            *volumes,
            "--tag",
            OPERATOR_IMAGE,
            str(ROOT),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.unlink(missing_ok=True)  # podman save refuses an existing file
        podman(
            "save",
            "--quiet",
            "--format",
            "docker-archive",
            "--output",
            str(partial),
            OPERATOR_IMAGE,
        )
        partial.replace(out)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pause = sub.add_parser("pause", help="the sandbox image from the pause binary")
    pause.add_argument("--binary", type=Path, required=True)
    pause.add_argument("--out", type=Path, required=True)
    operator = sub.add_parser("operator", help="operator/Dockerfile on the Debian base")
    operator.add_argument("--base", type=Path, required=True)
    operator.add_argument("--out", type=Path, required=True)
    operator.add_argument("--podman-home", type=Path, default=ROOT / ".local" / "podman")
    args = parser.parse_args(argv)
    if args.command == "pause":
        oci_archive(args.binary, PAUSE_IMAGE, args.out)
        print(f"{PAUSE_IMAGE} in {args.out}")
        return 0
    if shutil.which("podman") is None:
        print("podman is missing: install Debian's podman (see .ci/run)", file=sys.stderr)
        return 1
    took = build_operator(args.base, args.out, args.podman_home)
    print(f"built {OPERATOR_IMAGE} from operator/Dockerfile in {took:.0f}s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
