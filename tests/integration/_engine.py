"""A container engine of the test run's own, as ../shared/notes/containers.md describes: on a
machine without a daemon, `dockerd` with its own data root, exec root, socket and pid file,
started and stopped by pid, changing nothing on the host (no bridge, no iptables, no IP
forwarding: every container of compose.yaml runs on the host's network); a Debian base image
made by debootstrap (no registry is reachable); Docker Compose v2 from the tools venv.

`Engine.host_state()` snapshots what dockerd could change, so the test can show the host was
left as found.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCKER = "/usr/bin/docker"  # Debian's client: builds with BuildKit without buildx
BASE_IMAGE = "local/debian:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def compose_binary() -> Path | None:
    found = sorted((ROOT / ".venv" / "tools").glob("lib/python3*/site-packages/compose/"
                                                   "docker-compose"))
    return found[0] if found else None


def missing_tools() -> list[str]:
    """What this machine lacks to run the containers test (`.ci/run` installs it)."""
    missing = []
    if sys.platform != "linux" or os.geteuid() != 0:
        missing.append("root on Linux")
    for tool in ("dockerd", "debootstrap"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not Path(DOCKER).exists():
        missing.append(DOCKER)
    if compose_binary() is None:
        missing.append("docker compose v2 (make install: the tools venv)")
    return missing


def require_tools() -> None:
    """Skip where the tools are missing, except in CI, where the test must run."""
    missing = missing_tools()
    if not missing:
        return
    message = f"the containers test needs {', '.join(missing)} (.ci/run installs them)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _mirror() -> str:
    """The Debian mirror apt already uses (debootstrap fetches from it)."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if source.exists():
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and len(words) > 1 and "security" not in words[1]:
                    return words[1]
    return "http://deb.debian.org/debian"


def host_state() -> dict[str, str]:
    """What a dockerd could change on the host: interfaces, forwarding, iptables rules."""
    def out(argv: Sequence[str]) -> str:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True,
                                  check=False).stdout
        except FileNotFoundError:
            return "absent"

    return {
        "links": " ".join(sorted(line.split(":")[1].strip() for line in
                                 out(["ip", "-o", "link"]).splitlines() if ":" in line)),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "iptables": out(["iptables-save"]) and "\n".join(
            line for line in out(["iptables-save"]).splitlines() if not line.startswith("#")),
    }


@dataclass
class Engine:
    root: Path
    socket: Path
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "FLEETLINE_DOCKER": DOCKER,
                "DOCKER_CONFIG": str(self.root / "config")}

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()[-1000:]}")
        return done.stdout

    def base_image(self) -> None:
        """`local/debian:bookworm` (Python 3.11 from Debian), debootstrapped once per checkout
        (the tarball is kept in tests/artifacts/)."""
        tarball = ARTIFACTS / "debian-bookworm-python3.tar"
        if not tarball.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            rootfs = self.root / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                 "bookworm", str(rootfs), _mirror()],
                check=True, capture_output=True, timeout=300,
            )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                         "usr/share/man", "usr/share/locale", "usr/share/info"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
            shutil.rmtree(rootfs, ignore_errors=True)
        with tarball.open("rb") as stream:
            done = subprocess.run([DOCKER, "import", "-", BASE_IMAGE], stdin=stream,
                                  env=self.env, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()[-500:]


@contextmanager
def engine() -> Iterator[Engine]:
    """A dockerd of this test run's own; stopped by pid, its directories removed."""
    root = Path(tempfile.mkdtemp(prefix="fl-docker-", dir="/var/tmp"))
    # Everything the daemon writes (layers, build cache, containers: about 2 GB of writes for
    # a run) in memory: the builds wait less on the disk, and removing it all at the end is
    # an unmount instead of deleting hundreds of thousands of files.
    # On a disk where tmpfs cannot be mounted, it stays a directory.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0700", "tmpfs", str(root)],
                   capture_output=True, check=False)
    socket = root / "docker.sock"
    (root / "config").mkdir()
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "-H", f"unix://{socket}", "-p", str(root / "docker.pid"),
         # Nothing on the host changes: no docker0, no iptables rules, no forwarding.
         "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
         "--ip-masq=false"],
        stdout=log, stderr=log, start_new_session=True,
    )
    running = Engine(root=root, socket=socket, process=process)
    try:
        deadline = time.monotonic() + 30
        # The server's version, not `docker version` (it prints the client's part to stdout
        # while the daemon is still starting).
        while running.docker("version", "--format", "{{.Server.Version}}", check=False,
                             timeout=10).strip() == "":
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"dockerd did not start: {(root / 'dockerd.log').read_text()[-1000:]}")
            time.sleep(0.3)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        # Mounts dockerd left behind (it unmounts on a clean stop) and the tmpfs, deepest
        # first, then the directory.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(root))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)
