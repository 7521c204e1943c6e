"""The payments service: one payment record per order in its own table, money moved by the
payment provider (a simulator here, `services.orders.provider`).

Items (PaymentsTable, pk/sk):
    PAY#<order> / PAYMENT   status (AUTHORIZED | DECLINED | CAPTURED | VOIDED | REFUNDED),
                            charge_id, amount, currency
    PSP#<charge> / CHARGE   the simulated provider's ledger (see provider.py)

Effects happen once because (1) every provider call carries an idempotency key derived from
the order id (`authorize:<order>`), so a retried or redelivered task gets the first answer
and no second charge; (2) capture/void/refund are guarded transitions of the charge; (3) our
record is written with a condition on its status. A refund that finds no record writes a
VOIDED tombstone; an authorization that completes after that tombstone voids its own charge
and reports PaymentClosed, so no hold survives a compensated order.

Saga actions (task queue `PaymentTasksQueue`): authorize, capture, refund (void when not yet
captured). Declines fail the step with PaymentDeclined; provider outages with
PaymentProviderUnavailable, which the state machine retries with backoff.
"""

from __future__ import annotations

from typing import Any

from services.orders import _store
from services.orders.domain import (
    AuthorizeDecision,
    CaptureDecision,
    PaymentStatus,
    RefundDecision,
    decide_authorize,
    decide_capture,
    decide_refund,
)
from services.orders.errors import PaymentClosed, PaymentDeclined, PaymentNotAuthorized
from services.orders.provider import PaymentProvider, ProviderSettings
from services.orders.tasks import CallbackTasks, TaskOrder, TaskRequest
from shared.aws import AwsClients
from shared.errors import ConditionFailedError, RetryableError
from shared.hosts import SqsQueue, Worker

__all__ = ["Payments", "tasks", "worker"]

_MAX_RACES = 4


class _Race(RetryableError):
    """The payment record changed between read and write more often than expected."""


class Payments:
    def __init__(self, aws: AwsClients, *, table: str, provider: PaymentProvider) -> None:
        self._aws = aws
        self.table = table
        self.provider = provider

    async def _record(self, order_id: str) -> dict[str, Any] | None:
        ddb = await self._aws.client("dynamodb")
        return await _store.get(ddb, self.table, f"PAY#{order_id}", "PAYMENT")

    async def _set(self, order_id: str, *, to: PaymentStatus, expect: PaymentStatus | None,
                   extra: dict[str, Any] | None = None) -> bool:
        """Write the record's status if it is still `expect` (None: absent). False if not."""
        ddb = await self._aws.client("dynamodb")
        if expect is None:
            try:
                await _store.put_if_absent(ddb, self.table, {
                    "pk": f"PAY#{order_id}", "sk": "PAYMENT", "status": to.value,
                    **(extra or {}),
                })
            except ConditionFailedError:
                return False
            return True
        return await _store.set_status_if(
            ddb, self.table, f"PAY#{order_id}", "PAYMENT", expect=expect.value, to=to.value)

    async def authorize(self, order: TaskOrder) -> dict[str, Any]:
        """Hold the order's total.

        Raises:
            PaymentDeclined: the provider declined (the record says DECLINED).
            PaymentClosed: the saga compensated before the authorization ran.
            PaymentProviderUnavailable: retry later.
        """
        for _ in range(_MAX_RACES):
            record = await self._record(order.order_id)
            status = PaymentStatus(record["status"]) if record else None
            decision = decide_authorize(status)
            if decision is AuthorizeDecision.ALREADY_AUTHORIZED:
                assert record is not None
                return {"payment_id": record["charge_id"], "status": status, "repeat": True}
            if decision is AuthorizeDecision.ALREADY_DECLINED:
                raise PaymentDeclined(f"payment for {order.order_id} was declined")
            if decision is AuthorizeDecision.CLOSED:
                raise PaymentClosed(f"payment for {order.order_id} was closed ({status})")
            extra = {"amount": order.total, "currency": order.currency,
                     "customer_id": order.customer_id}
            try:
                charge = await self.provider.authorize(
                    key=f"authorize:{order.order_id}", customer_id=order.customer_id,
                    amount=order.total, currency=order.currency)
            except PaymentDeclined:
                if await self._set(order.order_id, to=PaymentStatus.DECLINED, expect=None,
                                   extra=extra):
                    raise
                continue
            extra["charge_id"] = charge.charge_id
            if await self._set(order.order_id, to=PaymentStatus.AUTHORIZED, expect=None,
                               extra=extra):
                return {"payment_id": charge.charge_id, "status": PaymentStatus.AUTHORIZED}
            # Lost the race: a compensation tombstone (or a twin) got there first; decide again
            # (a tombstone -> void our own hold below).
            record = await self._record(order.order_id)
            if record and record["status"] == PaymentStatus.VOIDED and \
                    record.get("charge_id") is None:
                await self.provider.void(charge.charge_id)
                raise PaymentClosed(f"payment for {order.order_id} was closed; hold voided")
        raise _Race(f"authorization of {order.order_id} kept racing")

    async def capture(self, order: TaskOrder) -> dict[str, Any]:
        """Take the held money.

        Raises:
            PaymentNotAuthorized: nothing is authorized for the order.
            PaymentProviderUnavailable: retry later.
        """
        for _ in range(_MAX_RACES):
            record = await self._record(order.order_id)
            status = PaymentStatus(record["status"]) if record else None
            decision = decide_capture(status)
            if decision is CaptureDecision.ALREADY_CAPTURED:
                assert record is not None
                return {"payment_id": record["charge_id"], "status": status, "repeat": True}
            if decision is CaptureDecision.NOT_AUTHORIZED or record is None:
                raise PaymentNotAuthorized(f"payment for {order.order_id} is {status}")
            await self.provider.capture(record["charge_id"])
            if await self._set(order.order_id, to=PaymentStatus.CAPTURED,
                               expect=PaymentStatus.AUTHORIZED):
                return {"payment_id": record["charge_id"], "status": PaymentStatus.CAPTURED}
        raise _Race(f"capture of {order.order_id} kept racing")

    async def refund(self, order: TaskOrder) -> dict[str, Any]:
        """Give the money back, whatever state the payment is in (idempotent)."""
        for _ in range(_MAX_RACES):
            record = await self._record(order.order_id)
            status = PaymentStatus(record["status"]) if record else None
            decision = decide_refund(status)
            if decision is RefundDecision.NOOP:
                return {"status": status, "repeat": True}
            if decision is RefundDecision.TOMBSTONE:
                if await self._set(order.order_id, to=PaymentStatus.VOIDED, expect=None,
                                   extra={"tombstone": True}):
                    return {"status": PaymentStatus.VOIDED, "tombstone": True}
                continue
            assert record is not None
            assert status is not None
            if decision is RefundDecision.VOID:
                await self.provider.void(record["charge_id"])
                to = PaymentStatus.VOIDED
            else:
                await self.provider.refund(record["charge_id"])
                to = PaymentStatus.REFUNDED
            if await self._set(order.order_id, to=to, expect=status):
                return {"status": to}
        raise _Race(f"refund of {order.order_id} kept racing")


def tasks(aws: AwsClients, *, table: str, settings: ProviderSettings | None = None
          ) -> CallbackTasks:
    """The payments worker's task handler."""
    provider = PaymentProvider(aws, table=table,
                               settings=settings or ProviderSettings.from_environ())
    payments = Payments(aws, table=table, provider=provider)

    async def authorize(task: TaskRequest) -> dict[str, Any]:
        return await payments.authorize(task.order)

    async def capture(task: TaskRequest) -> dict[str, Any]:
        return await payments.capture(task.order)

    async def refund(task: TaskRequest) -> dict[str, Any]:
        return await payments.refund(task.order)

    return CallbackTasks(aws, {"authorize": authorize, "capture": capture, "refund": refund},
                         service="payments")


worker = Worker(
    name="orders-payments",
    source=SqsQueue("PaymentTasksQueue"),
    handler=lambda aws, resources: tasks(aws, table=resources.get("PaymentsTable"))
    .batch_handler(),
)
"""`python -m shared.hosts.worker services.orders.payments:worker` (the ECS service); the
provider simulator reads its settings from FLEETLINE_PSP_* (see provider.py)."""
