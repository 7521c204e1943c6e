"""The callback side of the saga: a worker for `sqs:sendMessage.waitForTaskToken` tasks.

A task message carries the action (`reserve`, `authorize`, ...), the order, the task token
and the step's heartbeat interval. `CallbackTasks.handle` runs the action while a sibling
task sends `SendTaskHeartbeat` every third of that interval, then answers the state machine
(both through `shared.callbacks`, which drops an answer to a stale token):

    action returns a dict          SendTaskSuccess(output=dict)
    raises StepFailed              SendTaskFailure(error=<its error_name>)   -> compensation
    raises a retryable error       SendTaskFailure(error=Orders.Transient or its own name)
                                   -> the state's explicit Retry decides (one retry policy)
    raises anything else           SendTaskFailure(error=Orders.Internal)    -> compensation

The message is deleted once the state machine has the answer. If the answer cannot be sent
(the Step Functions API is down) the message is retried with its token; if the token is no
longer valid (the step timed out, or a retry already finished it) the answer is dropped: the
action was idempotent, and compensation undoes what a stale task did.

A worker killed mid-action sends no more heartbeats: the step fails with
States.HeartbeatTimeout, its Retry sends a new task, and the action, keyed by order id
rather than token, finds its earlier effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.orders.errors import TRANSIENT_ERROR_NAME, InvalidTask, StepFailed
from services.orders.events import Address, OrderLine
from shared.aws import AwsClients
from shared.callbacks import TaskAnswers, heartbeating, task_token
from shared.consumers import BatchHandler, HandlerContext, batch_handler, json_object
from shared.errors import is_retryable
from shared.tracing import handler_span

__all__ = ["Action", "CallbackTasks", "TaskOrder", "TaskRequest"]


class TaskOrder(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    order_id: str
    customer_id: str
    items: tuple[OrderLine, ...]
    currency: str
    total: int
    shipping_address: Address | None = None
    placed_at: str | None = None


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    action: str
    step: str = ""
    order: TaskOrder
    task_token: str = Field(min_length=1)
    attempt: int = 0
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    correlation_id: str | None = None
    trace: dict[str, str] = Field(default_factory=dict)


Action = Callable[[TaskRequest], Awaitable[Mapping[str, Any]]]


class CallbackTasks:
    """Runs one service's saga actions for task messages.

    `actions` maps the message's `action` to an async function of the request returning the
    step's result (a JSON object). Use `batch_handler()` as the worker's or Lambda's handler.
    """

    def __init__(self, aws: AwsClients, actions: Mapping[str, Action], *, service: str) -> None:
        if not actions:
            raise ValueError("actions must name at least one action")
        self._answers = TaskAnswers(aws)
        self._actions = dict(actions)
        self.service = service

    def batch_handler(self, *, concurrency: int | None = None) -> BatchHandler:
        return batch_handler(self.handle, decode=json_object, concurrency=concurrency)

    async def handle(self, body: dict[str, Any], ctx: HandlerContext) -> None:
        """Handle one task message (see the module docstring).

        Raises:
            InvalidMessageError: no task token to answer: the message goes to the DLQ.
            AwsUnavailableError: the answer could not be sent: the message is retried.
        """
        try:
            task = TaskRequest.model_validate(body)
        except ValidationError as exc:
            reason = f"unreadable task: {exc}"
            token = task_token(body, reason=reason)
            await self._answer_failure(token, InvalidTask(reason), ctx.log,
                                       step=str(body.get("step", "")))
            return
        log = ctx.log.bind(service=self.service, action=task.action, step=task.step,
                           order_id=task.order.order_id, attempt=task.attempt,
                           correlation_id=task.correlation_id)
        action = self._actions.get(task.action)
        if action is None:
            await self._answer_failure(task.task_token, InvalidTask(
                f"{self.service} has no action {task.action!r}"), log, step=task.step)
            return
        result: Mapping[str, Any] | None = None
        failure: BaseException | None = None
        with handler_span(f"orders.{self.service}.{task.action}", source=task.trace,
                          attributes={"order.id": task.order.order_id,
                                      "saga.step": task.step, "saga.attempt": task.attempt}):
            async with heartbeating(self._answers, task.task_token,
                                    every=max(0.2, task.heartbeat_seconds / 3)):
                try:
                    result = await action(task)
                except Exception as exc:  # every failure is answered to the state machine
                    failure = exc
        if failure is None:
            await self._answer_success(task.task_token, dict(result or {}), log)
        else:
            await self._answer_failure(task.task_token, failure, log, step=task.step)

    async def _answer_success(self, token: str, output: dict[str, Any], log: Any) -> None:
        if not await self._answers.succeed(token, output):
            log.info("stale task token; result dropped")
            return
        log.info("task succeeded")

    async def _answer_failure(
        self, token: str, failure: BaseException, log: Any, *, step: str
    ) -> None:
        if isinstance(failure, StepFailed):
            name = failure.error_name
        elif is_retryable(failure):
            name = str(getattr(failure, "error_name", "") or TRANSIENT_ERROR_NAME)
        else:
            name = StepFailed.error_name
        cause = {"message": str(failure)[:1000], "step": step,
                 "exception": type(failure).__name__}
        if not await self._answers.fail(token, name, cause):
            log.info("stale task token; failure dropped")
            return
        log.info("task failed", error=name, reason=str(failure)[:300],
                 exc_info=name == StepFailed.error_name)
