"""Named tasks a test harness can kill and start again: a service's processes, played in one
event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

__all__ = ["KillableTasks", "RunNamed"]

RunNamed = Callable[..., Awaitable[None]]
"""`async def run(name, *, task_status)`: runs the process `name`, reporting it ready with
`task_status.started()`."""


@dataclass
class _Running:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stopped: anyio.Event = field(default_factory=anyio.Event)


class KillableTasks:
    """Named tasks in a caller's task group, each of which can be killed, like a process by
    SIGKILL, and started again.

        tasks = KillableTasks(task_group, run)   # run(name, *, task_status)
        await tasks.start("relay", "payments")   # returns once each reports ready
        await tasks.kill("relay")                # cancelled at once: no drain, no release
        await tasks.start("relay")               # a fresh run of the same process
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, run: RunNamed) -> None:
        self._tg = task_group
        self._run = run
        self._running: dict[str, _Running] = {}

    @property
    def running(self) -> tuple[str, ...]:
        """The names started and not killed since, in start order."""
        return tuple(self._running)

    async def start(self, *names: str) -> None:
        """Start each of `names` in turn, each once the one before reported ready.

        Raises RuntimeError when one of them is running already."""
        for name in names:
            if name in self._running:
                raise RuntimeError(f"{name} is running already")
            running = self._running[name] = _Running()
            await self._tg.start(self._guarded, name, running)

    async def _guarded(
        self, name: str, running: _Running, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            with running.scope:
                await self._run(name, task_status=task_status)
        finally:
            running.stopped.set()

    async def kill(self, name: str, *, grace: float = 0.0) -> None:
        """Give the task `grace` seconds to return by itself (after its own `stop()`, say),
        then cancel it; returns once it has returned.

        Raises KeyError when `name` is not running."""
        running = self._running.pop(name)
        if grace > 0:
            with anyio.move_on_after(grace):
                await running.stopped.wait()
        running.scope.cancel()
        await running.stopped.wait()
