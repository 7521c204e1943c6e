"""Starts the order saga for each OrderPlaced (a Lambda on SagaStartQueue; a rule on the
orders bus routes OrderPlaced there).

The execution is named after the order id, so a duplicate OrderPlaced (a relay restart,
an SQS redelivery, an archive replay) cannot start a second saga: Step Functions answers
ExecutionAlreadyExists (or, for a running execution with the same input, the existing
execution), and the message counts as a duplicate.

Execution input: `{"order": <OrderPlaced data>, "event_id", "correlation_id", "trace"}`;
the trace carrier travels in the input and from there in every task payload.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from services.orders._envelopes import OrderEnvelope, decode_order_event
from services.orders.events import OrderPlaced
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import BatchHandler, DuplicateEvent, HandlerContext, Message, batch_handler
from shared.errors import AwsRequestError, InvalidMessageError
from shared.hosts.lambda_ import sqs_handler
from shared.tracing import client_span, handler_span, with_trace, xray_trace_header

__all__ = ["SagaStarter", "decode_order_placed", "execution_input", "handler"]

_log = structlog.get_logger("services.orders.saga_starter")


def decode_order_placed(message: Message) -> OrderEnvelope:
    """The OrderPlaced in `message`.

    Raises:
        InvalidMessageError: not JSON, not an OrderPlaced, or its data is invalid.
    """
    envelope = decode_order_event(message)
    if not isinstance(envelope.data, OrderPlaced):
        raise InvalidMessageError(f"expected OrderPlaced, got {envelope.type}", field="type")
    return envelope


def execution_input(envelope: OrderEnvelope) -> dict[str, Any]:
    """The saga's input; `trace` is the current context (the starter's consumer span, a
    child of the request that placed the order), passed on to every task payload."""
    return with_trace({
        "order": envelope.data.model_dump(mode="json"),
        "event_id": envelope.id,
        "correlation_id": envelope.correlation_id or envelope.data.order_id,
    })


class SagaStarter:
    def __init__(self, aws: AwsClients, *, state_machine_arn: str) -> None:
        self._aws = aws
        self.state_machine_arn = state_machine_arn

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None) -> SagaStarter:
        res = resources or Resources.from_environ()
        return cls(aws, state_machine_arn=res.get("OrderSagaStateMachine"))

    async def start(self, envelope: OrderEnvelope) -> bool:
        """Start the saga for the order; False when it was started before."""
        sfn = await self._aws.client("stepfunctions")
        try:
            with aws_errors(), client_span("StepFunctions.StartExecution", attributes={
                    "rpc.system": "aws-api", "rpc.service": "StepFunctions",
                    "rpc.method": "StartExecution", "order.id": envelope.data.order_id}):
                options: dict[str, Any] = {}
                header = xray_trace_header()
                if header:
                    options["traceHeader"] = header
                await sfn.start_execution(
                    stateMachineArn=self.state_machine_arn,
                    name=envelope.data.order_id,
                    input=json.dumps(execution_input(envelope)),
                    **options,
                )
        except AwsRequestError as exc:
            if exc.code == "ExecutionAlreadyExists":
                return False
            raise
        return True

    async def handle(self, envelope: OrderEnvelope, ctx: HandlerContext) -> None:
        """Raises DuplicateEvent when the saga runs already (counted as a skip)."""
        with handler_span("orders.saga-starter OrderPlaced", source=envelope.trace,
                          attributes={"order.id": envelope.data.order_id}):
            started = await self.start(envelope)
        if not started:
            raise DuplicateEvent(envelope.id)
        ctx.log.info("saga started", order_id=envelope.data.order_id,
                     correlation_id=envelope.correlation_id)

    def batch_handler(self) -> BatchHandler:
        return batch_handler(self.handle, decode=decode_order_placed)


handler = sqs_handler(
    setup=lambda aws, resources: SagaStarter.from_environ(aws, resources).batch_handler())
"""The Lambda on SagaStartQueue (`services.orders.saga_starter.handler`)."""
