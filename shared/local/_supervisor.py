"""Local child processes: started, restarted with backoff when they crash, stopped gracefully.

A child is what runs in a container or a Lambda on AWS (an ECS service's command, a Lambda
function behind its event source mappings or HTTP API, a pipe's relay). Each runs in its own
process group with its own environment, so a crash or a hung handler stays contained and its
output goes to its own log file.

Stopping mirrors ECS: SIGTERM to every child at once, wait up to each child's stop timeout
(the task definition's `stopTimeout`, the worker's drain time), then SIGKILL. Work a worker
acknowledged before SIGTERM is never lost; work it had not acknowledged is redelivered by
the source (visibility timeout, checkpoint), which is the contract the workers are built for.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import structlog

from shared.errors import EX_CONFIG
from shared.local._state import ChildRecord

__all__ = ["ProcessSpec", "RestartBackoff", "Supervisor"]

log = structlog.get_logger("fleetline.local")


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """One supervised child."""

    name: str
    kind: str  # "service" | "lambda" | "pipe" | "api" | "map-runs"
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # the complete environment
    stop_timeout: float = 10.0
    url: str | None = None  # what it serves, for the READY line and `status`


@dataclass(frozen=True, kw_only=True)
class RestartBackoff:
    """Restart delays: `initial * 2**n` capped at `maximum`; a child that ran for
    `stable_after` seconds starts again from `initial`."""

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number `failures` (0-based). Pure."""
        if failures < 0:
            raise ValueError("failures must be non-negative")
        return float(min(self.maximum, self.initial * (2 ** min(failures, 30))))


class Supervisor:
    """Runs `ProcessSpec`s inside a caller-owned task group.

        async with anyio.create_task_group() as tg:
            sup = Supervisor(log_dir=..., on_change=...)
            await tg.start(sup.supervise, spec)
            ...
            await sup.stop()

    `on_change(record)` is called with the child's current record on every start and restart
    (the state file follows it); `on_exit(name, status)` when a child has stopped for good.
    """

    def __init__(
        self,
        *,
        log_dir: Path,
        on_change: Callable[[ChildRecord], None],
        on_exit: Callable[[str, int], None] | None = None,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self._log_dir = log_dir
        self._on_change = on_change
        self._on_exit = on_exit or (lambda name, code: None)
        self._backoff = backoff or RestartBackoff()
        self._running: dict[str, tuple[ProcessSpec, anyio.abc.Process]] = {}
        self._stopping = anyio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    async def _spawn(self, spec: ProcessSpec) -> anyio.abc.Process:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(spec.name), "ab") as out:  # noqa: ASYNC230 - instant; the child keeps its copy
            return await anyio.open_process(
                list(spec.argv),
                env=dict(spec.env),
                stdin=None,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
            )

    async def supervise(
        self,
        spec: ProcessSpec,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `spec` until `stop()`, restarting it with backoff when it exits.

        Reports the first pid through `task_status`. Raises OSError when the first start
        fails (a missing executable is a bug in the plan, not a crash to retry).
        """
        if self.stopping:
            raise RuntimeError("Supervisor is stopping; cannot start new children.")
        failures = 0
        restarts = 0
        process = await self._spawn(spec)
        task_status.started(process.pid)
        while True:
            self._running[spec.name] = (spec, process)
            self._on_change(
                ChildRecord(
                    name=spec.name,
                    kind=spec.kind,
                    pid=process.pid,
                    restarts=restarts,
                    log=str(self.log_path(spec.name)),
                )
            )
            started = time.monotonic()
            code = await process.wait()
            if self.stopping:
                return
            if code == EX_CONFIG:
                log.error(
                    "child is misconfigured; not restarting",
                    child=spec.name,
                    log_file=str(self.log_path(spec.name)),
                )
                self._on_exit(spec.name, code)
                return
            if time.monotonic() - started >= self._backoff.stable_after:
                failures = 0
            delay = self._backoff.delay(failures)
            failures += 1
            restarts += 1
            log.warning(
                "child exited; restarting",
                child=spec.name,
                status=code,
                restart_in_s=delay,
                restarts=restarts,
                log_file=str(self.log_path(spec.name)),
            )
            with anyio.move_on_after(delay):
                await self._stopping.wait()
            if self.stopping:
                return
            try:
                process = await self._spawn(spec)
            except OSError as exc:
                log.error("child cannot be restarted", child=spec.name, error=str(exc))
                return

    async def stop(self) -> None:
        """SIGTERM every child, wait up to its stop timeout, then SIGKILL what is left."""
        self._stopping.set()
        running = list(self._running.values())
        for spec, process in running:
            if process.returncode is None:
                log.info("stopping child", child=spec.name, pid=process.pid)
                _signal_group(process.pid, signal.SIGTERM)

        async def wait_one(spec: ProcessSpec, process: anyio.abc.Process) -> None:
            with anyio.move_on_after(spec.stop_timeout):
                await process.wait()
            if process.returncode is None:
                log.warning(
                    "child did not stop in time; killing",
                    child=spec.name,
                    stop_timeout_s=spec.stop_timeout,
                )
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()

        async with anyio.create_task_group() as tg:
            for spec, process in running:
                tg.start_soon(wait_one, spec, process)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, (_, p) in self._running.items() if p.returncode is None}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the child's process group (it may have children of its own)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - not our group
        os.kill(pid, sig)
