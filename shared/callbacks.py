"""Step Functions callback tasks (`.waitForTaskToken`): answering, heartbeating, stale tokens.

A task that waits for a token is answered once with `SendTaskSuccess` / `SendTaskFailure`,
and kept alive meanwhile with `SendTaskHeartbeat` when the state sets `HeartbeatSeconds`.
A token stops being valid when the task timed out, its heartbeat lapsed, or someone else
answered it: answering or beating then fails with `TaskTimedOut`, `InvalidToken` or
`TaskDoesNotExist`. That is not an error of the worker (its action is idempotent and the
workflow has moved on), so `TaskAnswers` reports it as `False` instead of raising.

    answers = TaskAnswers(aws)
    async with heartbeating(answers, token, every=20.0):
        result = await long_action()
    await answers.succeed(token, result)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import anyio
import structlog

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError, InvalidMessageError

__all__ = ["STALE_TOKEN_CODES", "TaskAnswers", "heartbeating", "task_token"]

STALE_TOKEN_CODES: Final = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
_CAUSE_MAX: Final = 32_000  # SendTaskFailure's cause limit is 32,768 characters

_log = structlog.get_logger("shared.callbacks")


def task_token(body: Mapping[str, Any], *, reason: str) -> str:
    """The token in a task message's `body` (its `task_token` field), to answer with a
    failure a task whose other fields could not be read.

    Raises InvalidMessageError with `reason` when there is none: no task can be answered,
    and the message goes to the DLQ."""
    token = body.get("task_token")
    if not isinstance(token, str) or not token:
        raise InvalidMessageError(reason)
    return token


class TaskAnswers:
    """Answers and heartbeats for task tokens. Each method returns False when the token is
    stale (see the module docstring) and raises `shared.errors` types otherwise."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    async def succeed(self, token: str, output: Mapping[str, Any]) -> bool:
        sfn = await self._aws.client("stepfunctions")
        return await self._stale_is_false(
            sfn.send_task_success(taskToken=token, output=json.dumps(dict(output))))

    async def fail(self, token: str, error: str, cause: str | Mapping[str, Any] = "") -> bool:
        text = cause if isinstance(cause, str) else json.dumps(dict(cause))
        sfn = await self._aws.client("stepfunctions")
        return await self._stale_is_false(
            sfn.send_task_failure(taskToken=token, error=error[:256], cause=text[:_CAUSE_MAX]))

    async def beat(self, token: str) -> bool:
        sfn = await self._aws.client("stepfunctions")
        return await self._stale_is_false(sfn.send_task_heartbeat(taskToken=token))

    @staticmethod
    async def _stale_is_false(call: Any) -> bool:
        try:
            with aws_errors():
                await call
        except AwsRequestError as exc:
            if exc.code in STALE_TOKEN_CODES:
                return False
            raise
        return True


@contextlib.asynccontextmanager
async def heartbeating(answers: TaskAnswers, token: str, *, every: float) -> AsyncIterator[None]:
    """Send a heartbeat for `token` every `every` seconds while the block runs. A failed
    beat is logged and the next one tried (a missed beat is survivable); a stale token ends
    the beating (the workflow no longer waits)."""

    async def beat() -> None:
        while True:
            await anyio.sleep(every)
            try:
                if not await answers.beat(token):
                    _log.info("task no longer awaited; heartbeats stop")
                    return
            except Exception as exc:  # the next beat may pass
                _log.warning("heartbeat failed", error=str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(beat)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
