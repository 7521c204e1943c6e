"""ECS task scale-in protection while a batch is in flight, through the ECS agent endpoint.

On ECS the agent gives every container `ECS_AGENT_URI`; a PUT of
`{"ProtectionEnabled": true, "ExpiresInMinutes": N}` to `$ECS_AGENT_URI/task-protection/v1/state`
keeps Service Auto Scaling (and deployments) from choosing this task when it scales in; a PUT
of `{"ProtectionEnabled": false}` makes it eligible again. The agent makes the call with the
task role's credentials (UpdateTaskProtection), so every task role allows
`ecs:UpdateTaskProtection` on the cluster's tasks (deploy/template.yaml, TaskProtection).

`ScaleInProtection` is debounced, not a request per batch:

- the first batch after an idle spell takes protection before it is handled (one request,
  however many batches start at once);
- while batches keep coming, protection is renewed only when half its expiry has passed;
- it is released once no batch has been in flight for `release_after` seconds, so a worker that
  is busy, idle, busy again pays at most two requests per `release_after`;
- a failed request (agent unreachable, an error status) is logged and not retried for
  `retry_after` seconds; the batch is handled either way. Protection is a hint to the
  scaler: losing it must never stop the work, and the expiry bounds what a crash leaves held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

import aiohttp
import anyio
import orjson
import structlog

from shared.consumers import BatchHandler, BatchResult, Message

__all__ = ["AGENT_URI_ENV", "ScaleInProtection"]

AGENT_URI_ENV: Final = "ECS_AGENT_URI"
STATE_PATH: Final = "/task-protection/v1/state"

_log = structlog.get_logger("shared.hosts.protection")


class ScaleInProtection:
    """Holds this task's scale-in protection while batches are in flight (see the module).

    `agent_uri`: the ECS agent endpoint (`$ECS_AGENT_URI`). `expires_minutes`: how long one
    grant lasts (1-2880; a crashed worker's protection lapses after it). `renew_after`:
    seconds after a grant that a busy worker renews it (default: half the expiry).
    `release_after`: idle seconds before protection is released. `retry_after`: seconds a
    failed request waits before the next. `timeout`: seconds one request may take.

    Use `guard(handler)` for the handler the consumer calls and run `run()` in a task group
    for the renewals and the release.

    Raises ValueError naming the parameter that is out of range.
    """

    def __init__(
        self, agent_uri: str, *, expires_minutes: int = 10, renew_after: float | None = None,
        release_after: float = 30.0,
        retry_after: float = 30.0, timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not agent_uri:
            raise ValueError("agent_uri must not be empty")
        if not 1 <= expires_minutes <= 2880:
            raise ValueError(f"expires_minutes must be 1-2880, got {expires_minutes}")
        renew_after = expires_minutes * 60 / 2 if renew_after is None else renew_after
        if not 0 < renew_after < expires_minutes * 60:
            raise ValueError(f"renew_after must be above 0 and below the expiry, got {renew_after}")
        for name, value in (("release_after", release_after), ("retry_after", retry_after),
                            ("timeout", timeout)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        self._url = agent_uri.rstrip("/") + STATE_PATH
        self._expires_minutes = expires_minutes
        self._renew_after = renew_after
        self._release_after = release_after
        self._retry_after = retry_after
        self._timeout = timeout
        self._clock = clock
        self._in_flight = 0
        self._held = False
        self._granted_at = 0.0  # when the current grant was taken or renewed
        self._idle_since = clock()
        self._next_attempt = 0.0  # after a failure, no request before this
        self._lock = anyio.Lock()  # one request at a time; batches starting together share it
        self._changed = anyio.Event()
        self._requests = 0

    @property
    def requests(self) -> int:
        """Requests sent to the agent so far, successful or not."""
        return self._requests

    @property
    def held(self) -> bool:
        """Whether the agent last confirmed protection as enabled."""
        return self._held

    def guard(self, handler: BatchHandler) -> BatchHandler:
        """`handler`, with protection taken before a batch when it is not held."""

        async def guarded(messages: Sequence[Message]) -> BatchResult:
            self._in_flight += 1
            self._wake()
            try:
                if not self._held:
                    await self._set(True, only_if=lambda: not self._held)
                return await handler(messages)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle_since = self._clock()
                    self._wake()

        return guarded

    async def run(self) -> None:
        """Renew protection while busy and release it once idle, until cancelled."""
        while True:
            with anyio.move_on_after(self._seconds_to_next_decision()):
                await self._changed.wait()
            self._changed = anyio.Event()
            if self._clock() < self._next_attempt:
                continue
            if self._wants_grant():
                # Renewal, or a batch that began while a release was under way.
                await self._set(True, only_if=self._wants_grant)
            elif self._wants_release():
                await self._set(False, only_if=self._wants_release)

    def _wants_grant(self) -> bool:
        return self._in_flight > 0 and (
            not self._held or self._clock() - self._granted_at >= self._renew_after)

    def _wants_release(self) -> bool:
        return (self._held and self._in_flight == 0
                and self._clock() - self._idle_since >= self._release_after)

    def _seconds_to_next_decision(self) -> float:
        if self._in_flight:
            due = self._granted_at + self._renew_after if self._held else 0.0
        elif self._held:
            due = self._idle_since + self._release_after
        else:
            return float("inf")  # nothing held, nothing in flight: a batch wakes the loop
        return max(0.0, max(due, self._next_attempt) - self._clock())

    def _wake(self) -> None:
        self._changed.set()

    async def _set(self, enabled: bool, *, only_if: Callable[[], bool]) -> None:
        async with self._lock:
            if not only_if() or self._clock() < self._next_attempt:
                return  # another batch's request did it, or a failure is being waited out
            body: dict[str, object] = {"ProtectionEnabled": enabled}
            if enabled:
                body["ExpiresInMinutes"] = self._expires_minutes
            self._requests += 1
            try:
                await self._put(body)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._next_attempt = self._clock() + self._retry_after
                _log.warning("scale-in protection request failed", enabled=enabled,
                             error=str(exc) or type(exc).__name__,
                             retry_in_seconds=self._retry_after)
                return
            self._held = enabled
            self._granted_at = self._clock()
            _log.debug("scale-in protection set", enabled=enabled)
        self._wake()

    async def _put(self, body: dict[str, object]) -> None:
        """One PUT to the agent. Raises aiohttp.ClientError / OSError / TimeoutError, or
        ValueError for an error status or an error the agent reports in its body."""
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.put(
            self._url, data=orjson.dumps(body), headers={"content-type": "application/json"},
        ) as response:
            text = await response.text()
        if response.status >= 300:
            raise ValueError(f"HTTP {response.status}: {text[:200]}")
        try:
            answer = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            answer = {}
        # The agent answers 200 with a "failure" when ECS refused (TASK_NOT_VALID for a task
        # outside a service), and an "error" for its own errors.
        for key in ("error", "failure"):
            if isinstance(answer, dict) and answer.get(key):
                raise ValueError(f"agent {key}: {answer[key]}")
