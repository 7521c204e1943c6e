"""`up --detach` and `down`: a background supervisor, found again through the state file.

`up --detach` starts the same foreground `up` as a new session (output to
`.fleetline/up.log`), waits until the state file written by *that* process says ready or
failed, and returns. So a detached run is supervised exactly like a foreground one: crashed
children are restarted, and `down` stops it the same way Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ConfigurationError
from shared.local._state import Phase, UpError, UpState, pid_alive, read_state, write_state

__all__ = ["ensure_no_running", "start_detached", "stop_running"]


def start_detached(
    argv: Sequence[str],
    *,
    state_dir: Path,
    timeout: float = 90.0,
) -> UpState:
    """Run `fleetline up <argv>` in the background; return its state once it is ready.

    Raises UpError with the background process's own error when it fails or times out.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "up.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "FLEETLINE_STATE_DIR": str(state_dir)},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        state = _own_state(state_dir, process.pid)
        if state is not None and state.phase is Phase.READY:
            return state
        if state is not None and state.phase is Phase.FAILED:
            process.wait(10)
            raise UpError(state.error or f"fleetline up failed; see {log_path}")
        if code is not None:
            raise UpError(_last_line(log_path) or f"fleetline up exited with status {code}")
        time.sleep(0.1)
    _terminate(process.pid)
    raise UpError(f"fleetline up was not ready in {timeout:.0f} s; see {log_path}")


def _own_state(state_dir: Path, pid: int) -> UpState | None:
    try:
        state = read_state(state_dir)
    except ConfigurationError:
        return None  # being replaced right now
    return state if state is not None and state.supervisor_pid == pid else None


def _last_line(path: Path) -> str | None:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    if not lines:
        return None
    last = lines[-1]
    return last.removeprefix("error: ")  # the background `up` printed it for a terminal


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def stop_running(state_dir: Path, *, timeout: float = 60.0) -> tuple[UpState | None, list[int]]:
    """Stop the `up` recorded in `state_dir` and everything it started.

    SIGTERM to the supervisor, which stops its children gracefully (their drain time) and
    the emulator last; whatever still lives after `timeout` is killed. Returns the state
    that was found (None when nothing was up) and the pids that had to be killed.
    """
    state = read_state(state_dir)
    if state is None:
        return None, []
    if pid_alive(state.supervisor_pid):
        _terminate(state.supervisor_pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(state.supervisor_pid):
            _reap(state.supervisor_pid)
            time.sleep(0.1)
    # Read again: the supervisor may have restarted children (new pids) before it stopped.
    latest = _own_state(state_dir, state.supervisor_pid) or state
    left = [p for p in {*latest.pids(), *state.pids()} if pid_alive(p) and not _is_zombie(p)]
    if left:
        # The supervisor died without stopping them: give them their SIGTERM and drain time
        # first (workers and the emulator, each its own process group), then kill.
        for pid in left:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + min(timeout, 30.0)
        while time.monotonic() < deadline and any(pid_alive(p) and not _is_zombie(p) for p in left):
            time.sleep(0.1)
    killed: list[int] = []
    for pid in left:
        if pid_alive(pid) and not _is_zombie(pid):
            _signal_group(pid, signal.SIGKILL)
            killed.append(pid)
    write_state(
        state_dir,
        UpState(
            stack_name=latest.stack_name,
            endpoint=latest.endpoint,
            supervisor_pid=latest.supervisor_pid,
            phase=Phase.STOPPED,
        ),
    )
    return state, killed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads (children run in their own sessions), or the
    process alone when it leads none."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the supervisor's exit status when it is our own child (tests, `demo`)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def ensure_no_running(state_dir: Path) -> None:
    """Refuse a second `up` over a live one in the same state directory.

    Raises ConfigurationError naming the running supervisor."""
    existing = read_state(state_dir)
    if (
        existing is not None
        and existing.phase in {Phase.STARTING, Phase.READY}
        and pid_alive(existing.supervisor_pid)
    ):
        raise ConfigurationError(
            f"fleetline is already up (pid {existing.supervisor_pid}, {existing.endpoint}): "
            "run `fleetline down` first"
        )
    if existing is not None:
        orphans = [c.pid for c in existing.children if pid_alive(c.pid) and not _is_zombie(c.pid)]
        if orphans:
            raise ConfigurationError(
                f"processes of an earlier `up` still run (pids {orphans[:5]}): "
                "run `fleetline down` first"
            )
