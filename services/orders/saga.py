"""The order saga as a Step Functions state machine (orchestration), built in code.

`build_definition()` is the single source of the ASL; `deploy/statemachines/order-saga.asl.json`
is its output with the production timings (a unit test keeps the two equal), and tests build
the same machine with short timings. Regenerate the file with
`python -m services.orders.saga > deploy/statemachines/order-saga.asl.json`.

Flow::

    ReserveInventory -> AuthorizePayment -> CreateShipment -> CapturePayment
      -> CommitInventory -> MarkConfirmed -> PublishOrderConfirmed -> Confirmed

Every business step is `sqs:sendMessage.waitForTaskToken` to its service's task queue; the
worker heartbeats and answers with SendTaskSuccess / SendTaskFailure(error=<typed error>).
Each step has an explicit Retry scoped to transient errors (`Orders.Transient`, the payment
provider being down, a missed heartbeat) with IntervalSeconds, MaxAttempts, BackoffRate and
JitterStrategy FULL; HeartbeatSeconds and TimeoutSeconds; and a Catch into compensation.

Compensation runs in reverse from the failed step *including that step*: a step that timed
out may have applied its effect, so its undo runs too; each undo is idempotent and writes a
tombstone when there was nothing to undo, so a late worker cannot apply the effect after
the saga compensated::

    CancelShipment -> RefundPayment -> ReleaseInventory -> MarkCancelled
      -> PublishOrderCancelled -> Cancelled

Confirmation and cancellation are written to the order item (`dynamodb:updateItem`) and
published to the orders bus (`events:putEvents`) with a deterministic event id
(`<order id>.confirmed` / `<order id>.cancelled`), so a retried publish is deduplicated by
every consumer's inbox. A PutEvents answer with failed entries is retried after a wait.

Execution input (built by `saga_starter`): `{"order": <OrderPlaced data>, "event_id",
"correlation_id", "trace": {traceparent...}}`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "COMPENSATION_STEPS",
    "PERMANENT_ERRORS",
    "STEPS",
    "SUBSTITUTIONS",
    "TRANSIENT_ERRORS",
    "SagaTimings",
    "build_definition",
    "render_definition",
]

# Names the template passes as DefinitionSubstitutions.
SUBSTITUTIONS: Final = (
    "InventoryTasksQueueUrl",
    "PaymentTasksQueueUrl",
    "ShippingTasksQueueUrl",
    "OrdersTableName",
    "OrdersBusName",
)

# Errors a retry can cure. `Orders.Transient` is what workers send for any retryable
# failure of theirs (throttling, a 5xx); a missed heartbeat means the worker died, and a
# step timeout that the worker was too slow or gone. (AWS names a missed heartbeat
# States.HeartbeatTimeout, which States.Timeout also matches; the emulator reports it as
# States.Timeout; both are listed.)
TRANSIENT_ERRORS: Final = (
    "Orders.Transient",
    "PaymentProviderUnavailable",
    "States.HeartbeatTimeout",
    "States.Timeout",
)
# Errors that end the saga in compensation at once (documented for the reader; the Catch is
# States.ALL so an unexpected error compensates too).
PERMANENT_ERRORS: Final = (
    "OutOfStock",
    "PaymentDeclined",
    "ShippingUnavailable",
    "ReservationClosed",
    "PaymentClosed",
    "ReservationMissing",
    "PaymentNotAuthorized",
    "Orders.Internal",
)

# (state name, queue substitution, action, result path, compensation entry point)
STEPS: Final = (
    ("ReserveInventory", "InventoryTasksQueueUrl", "reserve", "$.reservation", "ReleaseInventory"),
    ("AuthorizePayment", "PaymentTasksQueueUrl", "authorize", "$.payment", "RefundPayment"),
    ("CreateShipment", "ShippingTasksQueueUrl", "create", "$.shipment", "CancelShipment"),
    ("CapturePayment", "PaymentTasksQueueUrl", "capture", "$.capture", "CancelShipment"),
    ("CommitInventory", "InventoryTasksQueueUrl", "commit", "$.commit", "CancelShipment"),
)
COMPENSATION_STEPS: Final = (
    ("CancelShipment", "ShippingTasksQueueUrl", "cancel"),
    ("RefundPayment", "PaymentTasksQueueUrl", "refund"),
    ("ReleaseInventory", "InventoryTasksQueueUrl", "release"),
)


@dataclass(frozen=True, kw_only=True)
class SagaTimings:
    """Timeouts and retry pacing. Production defaults; tests pass short ones."""

    heartbeat_seconds: int = 30
    timeout_seconds: int = 300
    retry_interval_seconds: int = 2
    retry_max_attempts: int = 4
    retry_backoff_rate: float = 2.0
    compensation_max_attempts: int = 8
    publish_retry_wait_seconds: int = 2

    def __post_init__(self) -> None:
        if self.heartbeat_seconds < 1 or self.timeout_seconds < self.heartbeat_seconds:
            raise ValueError("heartbeat_seconds must be >= 1 and <= timeout_seconds")
        if self.retry_interval_seconds < 1 or self.retry_max_attempts < 0:
            raise ValueError("retry_interval_seconds must be >= 1, retry_max_attempts >= 0")


def _sub(name: str) -> str:
    return "${" + name + "}"


def _retry(errors: tuple[str, ...], timings: SagaTimings, attempts: int) -> dict[str, Any]:
    return {
        "ErrorEquals": list(errors),
        "IntervalSeconds": timings.retry_interval_seconds,
        "MaxAttempts": attempts,
        "BackoffRate": timings.retry_backoff_rate,
        "JitterStrategy": "FULL",
    }


def _callback_task(
    *, queue: str, action: str, step: str, timings: SagaTimings, result_path: str | None
) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {
            "QueueUrl": _sub(queue),
            "MessageBody": {
                "action": action,
                "step": step,
                "order.$": "$.order",
                "task_token.$": "$$.Task.Token",
                "attempt.$": "$$.State.RetryCount",
                "heartbeat_seconds": timings.heartbeat_seconds,
                "correlation_id.$": "$.correlation_id",
                "trace.$": "$.trace",
            },
        },
        "HeartbeatSeconds": timings.heartbeat_seconds,
        "TimeoutSeconds": timings.timeout_seconds,
        "ResultPath": result_path,
    }


def _order_key() -> dict[str, Any]:
    return {
        "pk": {"S.$": "States.Format('ORDER#{}', $.order.order_id)"},
        "sk": {"S": "ORDER"},
    }


def _event_entry(event_type: str, suffix: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "EventBusName": _sub("OrdersBusName"),
        "Source": "fleetline.orders",
        "DetailType": event_type,
        "Detail": {
            "id.$": f"States.Format('{{}}.{suffix}', $.order.order_id)",
            "type": event_type,
            "source": "fleetline.orders",
            "version": 1,
            "time.$": "$$.State.EnteredTime",
            "correlation_id.$": "$.correlation_id",
            "causation_id.$": "$.event_id",
            "aggregate_id.$": "$.order.order_id",
            "sequence": 2,
            "trace.$": "$.trace",
            "data": data,
        },
    }


def _order_data() -> dict[str, Any]:
    return {
        "order_id.$": "$.order.order_id",
        "customer_id.$": "$.order.customer_id",
        "items.$": "$.order.items",
        "currency.$": "$.order.currency",
        "total.$": "$.order.total",
        "placed_at.$": "$.order.placed_at",
    }


def _publish_final(
    event_type: str, suffix: str, data: dict[str, Any], *, retry: list[dict[str, Any]],
    timings: SagaTimings,
) -> dict[str, dict[str, Any]]:
    """The saga's last states for one outcome: PutEvents, then, while EventBridge reports a
    failed entry, wait and publish again (a Task's Retry only covers errors, and a partial
    failure is not an error); then succeed. `suffix` is also the final state's name."""
    publish, final = f"Publish{event_type}", suffix.capitalize()
    check, wait = f"{final}Published?", f"WaitRepublish{final}"
    return {
        publish: {
            "Type": "Task",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {"Entries": [_event_entry(event_type, suffix, data)]},
            "ResultSelector": {"failed.$": "$.FailedEntryCount"},
            "ResultPath": "$.published",
            "Retry": retry,
            "Next": check,
        },
        check: {
            "Type": "Choice",
            "Choices": [{"Variable": "$.published.failed", "NumericGreaterThan": 0,
                         "Next": wait}],
            "Default": final,
        },
        wait: {"Type": "Wait", "Seconds": timings.publish_retry_wait_seconds, "Next": publish},
        final: {"Type": "Succeed"},
    }


def build_definition(timings: SagaTimings | None = None) -> dict[str, Any]:
    """The ASL document (JSONPath) with `${...}` placeholders for SUBSTITUTIONS."""
    t = timings or SagaTimings()
    states: dict[str, Any] = {}
    for index, (name, queue, action, result_path, undo) in enumerate(STEPS):
        state = _callback_task(
            queue=queue, action=action, step=name, timings=t, result_path=result_path
        )
        state["Retry"] = [_retry(TRANSIENT_ERRORS, t, t.retry_max_attempts)]
        state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": undo}]
        state["Next"] = STEPS[index + 1][0] if index + 1 < len(STEPS) else "MarkConfirmed"
        states[name] = state

    own_retry = [
        _retry(("States.ALL",), t, t.compensation_max_attempts),
    ]
    states["MarkConfirmed"] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::dynamodb:updateItem",
        "Parameters": {
            "TableName": _sub("OrdersTableName"),
            "Key": _order_key(),
            "UpdateExpression": "SET #status = :confirmed, confirmed_at = :now",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":confirmed": {"S": "CONFIRMED"},
                ":now": {"S.$": "$$.State.EnteredTime"},
            },
        },
        "ResultPath": None,
        "Retry": own_retry,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure",
                   "Next": "CancelShipment"}],
        "Next": "PublishOrderConfirmed",
    }
    confirmed_data = {
        **_order_data(),
        "confirmed_at.$": "$$.State.EnteredTime",
        "payment_id.$": "$.payment.payment_id",
        "shipment_id.$": "$.shipment.shipment_id",
    }
    states.update(_publish_final(
        "OrderConfirmed", "confirmed", confirmed_data, retry=own_retry, timings=t))

    for index, (name, queue, action) in enumerate(COMPENSATION_STEPS):
        state = _callback_task(queue=queue, action=action, step=name, timings=t, result_path=None)
        state["Retry"] = [_retry(TRANSIENT_ERRORS, t, t.compensation_max_attempts)]
        state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.compensation_failure",
                           "Next": "CompensationFailed"}]
        nxt = COMPENSATION_STEPS[index + 1][0] if index + 1 < len(COMPENSATION_STEPS) else None
        state["Next"] = nxt or "MarkCancelled"
        states[name] = state

    states["MarkCancelled"] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::dynamodb:updateItem",
        "Parameters": {
            "TableName": _sub("OrdersTableName"),
            "Key": _order_key(),
            "UpdateExpression": "SET #status = :cancelled, cancelled_at = :now, "
                                "reason = :reason, detail = :detail",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":cancelled": {"S": "CANCELLED"},
                ":now": {"S.$": "$$.State.EnteredTime"},
                ":reason": {"S.$": "$.failure.Error"},
                ":detail": {"S.$": "States.JsonToString($.failure)"},
            },
        },
        "ResultPath": None,
        "Retry": own_retry,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.compensation_failure",
                   "Next": "CompensationFailed"}],
        "Next": "PublishOrderCancelled",
    }
    cancelled_data = {
        **_order_data(),
        "cancelled_at.$": "$$.State.EnteredTime",
        "reason.$": "$.failure.Error",
        "detail.$": "States.JsonToString($.failure)",
    }
    states.update(_publish_final(
        "OrderCancelled", "cancelled", cancelled_data, retry=own_retry, timings=t))
    states["CompensationFailed"] = {
        "Type": "Fail",
        "Error": "CompensationFailed",
        "Cause": "a compensation step kept failing: the order needs an operator",
    }
    return {
        "Comment": "Order saga: reserve, authorize, ship, capture, commit; compensate in reverse",
        "StartAt": STEPS[0][0],
        "TimeoutSeconds": 3600,
        "States": states,
    }


def render_definition(
    substitutions: dict[str, str], timings: SagaTimings | None = None
) -> str:
    """The ASL as JSON with every `${Name}` replaced (what CloudFormation's
    DefinitionSubstitutions does), for creating the state machine through the API.

    Raises:
        KeyError: a substitution in SUBSTITUTIONS is missing.
    """
    text = json.dumps(build_definition(timings), indent=2)
    for name in SUBSTITUTIONS:
        text = text.replace(_sub(name), substitutions[name])
    return text


if __name__ == "__main__":  # pragma: no cover - regenerates the deploy file
    sys.stdout.write(json.dumps(build_definition(), indent=2) + "\n")
