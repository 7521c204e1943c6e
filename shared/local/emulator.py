"""The embedded AWS emulator: moto server in a child process on 127.0.0.1, started through
`shared.local._moto_server`: moto with one gap filled (a rule delivers to an SNS topic) and
its throughput fixes (see that module).

Configured as ../shared/notes/emulator.md says: `MOTO_PORT` equals the port (Step Functions
tasks call back into the server), and state machine execution is switched on through
`/moto-api/config` (no environment variable does it; the setting survives a reset).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from shared.errors import ConfigurationError, FleetlineError

__all__ = ["Emulator", "EmulatorError", "configure_endpoint", "free_port", "port_in_use"]


class EmulatorError(FleetlineError):
    """The emulator could not be started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _post_json(url: str, body: object, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def configure_endpoint(endpoint_url: str) -> None:
    """Switch on state machine execution in the moto server at `endpoint_url`.

    Raises OSError (URLError) when nothing answers or it is not a moto server.
    """
    _post_json(
        f"{endpoint_url.rstrip('/')}/moto-api/config",
        {"stepfunctions": {"execute_state_machine": True}},
    )


@dataclass
class Emulator:
    """A moto server process. `start()` returns once it answers; `stop()` ends it."""

    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        """Spawn the server and return once it answers (see `spawn`, `wait_ready`)."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> Self:
        """Start the server process and return at once, so the caller can do other work
        while it boots. Raises ConfigurationError (moto missing) or EmulatorError (port)."""
        if self.process is not None:
            raise RuntimeError("Emulator already started.")
        # find_spec, not import: importing moto takes a second the caller need not wait for.
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise ConfigurationError(
                "moto server is not installed: run `pip install -e '.[local]'`"
            )
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port, self.host):
            raise EmulatorError(
                f"port {self.port} is in use: stop what listens there or pass another --port"
            )
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                # moto's server with fleetline's fixes (FLEETLINE_EMULATOR_FIXES=0 leaves
                # the throughput ones out, to compare; see shared.local._moto_server)
                [sys.executable, "-m", "shared.local._moto_server",
                 "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        return self

    def wait_ready(self, timeout: float = 20.0) -> Self:
        """Wait until the spawned server answers, then configure it. Raises EmulatorError
        when it exits or stays silent for `timeout` seconds (it is stopped then)."""
        if self.process is None:
            raise RuntimeError("Emulator.spawn() must be called first.")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorError(
                    f"moto server exited with status {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                self.configure()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"moto server did not answer on {self.endpoint_url} in {timeout:.0f} s")

    def configure(self) -> None:
        """Settings the emulator needs (they survive `reset`)."""
        configure_endpoint(self.endpoint_url)

    def reset(self) -> None:
        """Forget all state (between tests)."""
        _post_json(f"{self.endpoint_url}/moto-api/reset", {})

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
