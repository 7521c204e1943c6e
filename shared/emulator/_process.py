"""The embedded emulator's process: moto server in a child process on 127.0.0.1, started
through `python -m shared.emulator` (moto with fleetline's fixes, see `_server`).

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
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from shared.emulator._fixes import FixReport
from shared.errors import ConfigurationError, FleetlineError

__all__ = [
    "Emulator",
    "EmulatorError",
    "configure_endpoint",
    "free_port",
    "port_in_use",
    "read_fixes",
]

_STATUS_PATH = "/_fleetline/emulator"  # shared.emulator._server.STATUS_PATH (no moto import)


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


def read_fixes(endpoint_url: str, timeout: float = 5.0) -> FixReport:
    """The fixes the emulator at `endpoint_url` applied. Raises OSError (URLError) when it
    does not answer, or is a plain moto server without fleetline's fixes (HTTP 404)."""
    url = f"{endpoint_url.rstrip('/')}{_STATUS_PATH}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return FixReport.from_dict(json.loads(response.read()))


def _refusal(output: IO[bytes] | None, log_path: Path | None) -> str | None:
    """The server's last `error:` line (a fix that does not apply), if it wrote one."""
    try:
        if output is not None:
            output.seek(0)
            text = output.read().decode(errors="replace")
        elif log_path is not None:
            text = log_path.read_text(errors="replace")[-65536:]
        else:
            return None
    except OSError:
        return None
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    return errors[-1].removeprefix("error: ") if errors else None


@dataclass
class Emulator:
    """A moto server process. `start()` returns once it answers; `stop()` ends it.
    `fixes` is what the server says it applied (set by `wait_ready`)."""

    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    fixes: FixReport | None = None
    _output: IO[bytes] | None = field(default=None, repr=False)

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
                "moto server is not installed: run `make install` "
                "(or pip install -e '.[local]')"
            )
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port, self.host):
            raise EmulatorError(
                f"port {self.port} is in use: stop what listens there or pass another --port"
            )
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if self.log_path is not None:
            output: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115
        else:  # kept (unnamed) so a refusal can be read back
            output = self._output = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shared.emulator", "-H", self.host, "-p", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                output.close()
        return self

    def wait_ready(self, timeout: float = 20.0) -> Self:
        """Wait until the spawned server answers, then configure it and read which fixes it
        applied (`fixes`). Raises EmulatorError when it exits (with the line it refused to
        start with, when a fix did not apply to the installed moto) or stays silent for
        `timeout` seconds (it is stopped then)."""
        if self.process is None:
            raise RuntimeError("Emulator.spawn() must be called first.")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                refusal = _refusal(self._output, self.log_path)
                if refusal is not None:
                    raise EmulatorError(refusal)
                raise EmulatorError(
                    f"moto server exited with status {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                self.configure()
                self.fixes = read_fixes(self.endpoint_url)
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
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        output, self._output = self._output, None
        if output is not None:
            output.close()

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
